"""Housekeeping: the replay store, and signed requests kept as evidence past their time."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.db import connection
from django.utils import timezone

from . import evidence
from .learning import check_learned_domain_task, requeue_due_learned_domains_task

__all__ = [
    "check_learned_domain_task",
    "prune_expired_cache",
    "purge_expired_evidence",
    "requeue_due_learned_domains_task",
]


@shared_task(name="federation.prune_expired_cache")
def prune_expired_cache() -> int:
    """Delete expired nonces and counters when the shared cache is a database table.

    Redis expires its keys itself; Django's database cache only removes expired
    rows when it culls, which a nonce store must not depend on.
    """
    cache = settings.CACHES["default"]
    if cache["BACKEND"] != "django.core.cache.backends.db.DatabaseCache":
        return 0
    table = connection.ops.quote_name(cache["LOCATION"])
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table} WHERE expires < %s", [timezone.now()])  # noqa: S608 - name from settings
        return int(cursor.rowcount)


@shared_task(name="federation.purge_expired_evidence")
def purge_expired_evidence() -> int:
    """Delete signed requests kept longer than PUSHMAIL_EVIDENCE_DAYS (one bulk DELETE)."""
    return evidence.purge_expired()
