"""Durable background work: the database row is the job.

A task claims its row inside a transaction (``select_for_update`` on
PostgreSQL, an IMMEDIATE transaction on SQLite), pushes its due time forward
by a claim period so nobody else takes it meanwhile, and then does the slow
network work outside any transaction. A worker killed mid-task leaves the row
due again once the claim period passes, and the periodic sweep re-queues it.
"""

from __future__ import annotations

import logging
import random
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Manager, Model, QuerySet
from django.utils import timezone

if TYPE_CHECKING:
    from celery import Task

M = TypeVar("M", bound=Model)
log = logging.getLogger(__name__)


def backoff(attempts: int, *, base: float | None = None, cap: float | None = None) -> timedelta:
    """Exponential backoff with full jitter between half and all of the step."""
    base = settings.PUSHMAIL_RETRY_BASE_SECONDS if base is None else base
    cap = settings.PUSHMAIL_RETRY_CAP_SECONDS if cap is None else cap
    step = min(cap, base * (2 ** max(attempts - 1, 0)))
    return timedelta(seconds=random.uniform(step / 2, step))


def claim_until() -> datetime:
    return timezone.now() + timedelta(seconds=settings.PUSHMAIL_CLAIM_SECONDS)


def overdue_before() -> datetime:
    """Rows due before this moment were missed by the broker; the sweep queues them."""
    return timezone.now() - timedelta(seconds=settings.PUSHMAIL_SWEEP_GRACE_SECONDS)


def overdue_ids(queryset: QuerySet[M], *, limit: int, due_field: str = "next_attempt_at") -> list[Any]:
    """Primary keys of the rows of ``queryset`` that the broker should have delivered by now, oldest first.

    Every sweep re-queues these: a lost broker message or a dead worker delays a job by one sweep at most.
    """
    overdue = queryset.filter(**{f"{due_field}__lte": overdue_before()}).order_by(due_field)
    return list(overdue.values_list("pk", flat=True)[:limit])


def lock(queryset: QuerySet[M] | Manager[M], *, skip_locked: bool = True) -> QuerySet[M]:
    """Row lock for use inside a transaction; a no-op on SQLite (see settings).

    Claims skip rows another worker holds (``skip_locked``); updates that must
    see the row wait for the lock instead.

    Only the queryset's own rows are locked, never rows joined by
    ``select_related``: two deliveries of one message must not block (or, with
    ``skip_locked``, skip) each other over their shared message row.
    """
    if not connection.features.has_select_for_update:
        return queryset.all()
    of = ("self",) if connection.features.has_select_for_update_of else ()
    if skip_locked and connection.features.has_select_for_update_skip_locked:
        return queryset.select_for_update(skip_locked=True, of=of)
    return queryset.select_for_update(of=of)


def enqueue(task: Task, *args: object, countdown: float | None = None) -> None:
    """Wake a worker once the current transaction commits.

    A broker that is down must not fail the request that stored the row: the
    periodic sweep finds every due row anyway.
    """

    def send() -> None:
        try:
            task.apply_async(args, countdown=countdown)
        except Exception:  # the row is the truth; the sweep will queue it
            log.warning("could not queue %s%r; the sweep will pick it up", task.name, args, exc_info=True)

    transaction.on_commit(send)
