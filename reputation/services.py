"""Read counts and per-origin limits."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from django.core.cache import caches
from django.db import connection
from django.db.models import Model
from django.utils import timezone

from federation.inbound import OriginRefused, PoorReputation

from . import scores
from .models import OriginPolicy, Read
from .spam import (
    EntryNotFound,
    ReportOutcome,
    ReportRefused,
    overturn_verdict,
    report_entries,
    report_not_spam,
    report_spam,
)

__all__ = [
    "EntryNotFound",
    "ReportOutcome",
    "ReportRefused",
    "check_origin",
    "forget_policy",
    "overturn_verdict",
    "readers_of",
    "record_read",
    "record_reads",
    "report_entries",
    "report_not_spam",
    "report_spam",
]


def record_read(*, message, reader_id: int) -> None:  # type: ignore[no-untyped-def]
    """Count a local reader of a remote message once; a repeat is ignored (record_reads of one)."""
    record_reads(messages=[message], reader_id=reader_id)


def record_reads(*, messages: Sequence[Any], reader_id: int) -> None:
    """Count a local reader of each of these remote messages once; repeats are ignored.

    Three statements whatever the number of messages, on the page's critical path: one
    ``INSERT … ON CONFLICT DO NOTHING`` of every read (bulk_create(ignore_conflicts=True)
    would wrap it in BEGIN/COMMIT, two more round trips, and not say which rows were new),
    then the first reads add to their senders' and origins' counters, summed per sender
    and per origin (reputation/scores.py).
    """
    by_pk = {message.pk: message for message in messages}
    if not by_pk:
        return
    if connection.vendor != "postgresql":
        # SQLite (the demo's database) has no arrays: find the new reads first, then insert them.
        seen = set(Read.objects.filter(reader_id=reader_id, message_id__in=by_pk).values_list("message_id", flat=True))
        first = [message for pk, message in by_pk.items() if pk not in seen]
        now = timezone.now()
        Read.objects.bulk_create(
            [Read(message_id=m.pk, reader_id=reader_id, read_at=now) for m in first], ignore_conflicts=True
        )
        if first:
            scores.note_reads([(message.origin_domain, message.sender) for message in first])
        return
    table = connection.ops.quote_name(Read._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (message_id, reader_id, read_at) "  # noqa: S608 - our table name, values bound
            "SELECT message_id, %s, %s FROM unnest(%s::bigint[]) AS message_id "
            "ON CONFLICT DO NOTHING RETURNING message_id",
            [reader_id, timezone.now(), list(by_pk)],
        )
        first = [by_pk[row[0]] for row in cursor.fetchall()]
    if first:
        scores.note_reads([(message.origin_domain, message.sender) for message in first])


def readers_of(message: Model) -> int:
    return Read.objects.filter(message_id=message.pk).count()


_POLICY_TTL = 10  # an admin's block takes effect within this many seconds


def _policy(domain: str) -> tuple[bool, int | None]:
    """(blocked, rate per minute) for a peer domain, cached briefly per process."""
    cache = caches["local"]
    key = f"pm-origin-policy:{domain}"
    cached: tuple[bool, int | None] | None = cache.get(key)
    if cached is None:
        policy = OriginPolicy.objects.filter(domain=domain).only("blocked", "rate_per_minute").first()
        cached = (policy.blocked, policy.rate_per_minute) if policy else (False, None)
        cache.set(key, cached, _POLICY_TTL)
    return cached


def forget_policy(domain: str) -> None:
    caches["local"].delete(f"pm-origin-policy:{domain}")


def check_origin(*, domain: str, count: int = 1) -> int:
    """Refuse a blocked domain, one refused for its poor reputation, or one over its per-minute budget.

    The budget is the admin's rate for the domain if there is one, else the rate its reputation
    earned (reputation/scores.py: a new origin's is PUSHMAIL_NEW_ORIGIN_RATE_PER_MINUTE). Policy and
    standing are cached per process; the counter lives in the shared cache so every web process
    counts together: one INCR per request. A batch of ``count`` notifications counts each of them;
    the answer is how many of its first ones are within the budget (raises when none is).
    """
    blocked, rate = _policy(domain)
    if blocked:
        raise OriginRefused(f"notifications from {domain} are blocked by this instance")
    standing = scores.origin_standing(domain)
    if standing.refused:
        raise PoorReputation(scores.REFUSAL_DETAIL.format(domain=domain))
    limit = rate or standing.rate
    now = time.time()
    window = int(now // 60)
    cache = caches["default"]
    key = f"pm-rate:{domain}:{window}"
    try:
        total = cache.incr(key, count)  # one round trip once the window's counter exists
    except ValueError:
        total = count if cache.add(key, count, timeout=120) else cache.incr(key, count)
    admitted = min(count, max(limit - (total - count), 0))
    if admitted == 0:
        retry_after = max(1, int(60 - now % 60) + 1)
        raise OriginRefused(f"{domain} is over its limit of {limit} notifications per minute", retry_after=retry_after)
    return admitted
