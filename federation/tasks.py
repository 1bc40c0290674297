"""Housekeeping for the replay store."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.db import connection
from django.utils import timezone


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
