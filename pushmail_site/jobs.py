"""Durable background work: the database row is the job.

A task claims its row inside a transaction (``select_for_update`` on
PostgreSQL, an IMMEDIATE transaction on SQLite), pushes its due time forward
by a claim period so nobody else takes it meanwhile, and then does the slow
network work outside any transaction. A worker killed mid-task leaves the row
due again once the claim period passes, and the periodic sweep re-queues it.

The sweep re-queues only rows the broker has really lost. Each broker message
leaves a mark in the shared cache when it is queued, and its task removes the
mark as it starts: a row whose mark is still there is waiting behind others in
the queue (workers busy), and queueing it again would only make the backlog
longer. A mark lapses (``PUSHMAIL_QUEUED_MARK_SECONDS`` past the message's due
time), so a message lost with the broker (a restart without persistence) is
still queued again, one lapse later. A worker removes the mark as it takes the
message off the queue, so a worker killed with messages reserved or mid-task
leaves rows that are queued again as soon as their claim or grace lapses.
"""

from __future__ import annotations

import logging
import random
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from celery import signals
from django.conf import settings
from django.core.cache import caches
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


def overdue_ids(queryset: QuerySet[M], *, task: Task, limit: int, due_field: str = "next_attempt_at") -> list[Any]:
    """Primary keys of the rows of ``queryset`` that the broker should have delivered by now and
    does not hold for ``task`` any more (no queued mark), oldest first.

    Every sweep re-queues these: a lost broker message or a dead worker delays a job by one sweep at
    most past its mark. Rows still waiting in the queue are left to it: under load they would
    otherwise be queued once per sweep, and each extra copy costs a worker a claim for nothing.
    """
    overdue = queryset.filter(**{f"{due_field}__lte": overdue_before()}).order_by(due_field)
    found: list[Any] = []
    # The oldest rows of a backlog are all still queued: look past them for lost ones, a page at a time.
    for page in range(_SWEEP_PAGES):
        ids = list(overdue.values_list("pk", flat=True)[page * limit : (page + 1) * limit])
        queued = queued_marks(task, ids)
        found.extend(pk for pk in ids if pk not in queued)
        if len(found) >= limit or len(ids) < limit:
            break
    return found[:limit]


#: How many pages of ``limit`` overdue rows one sweep reads at most, looking for lost ones.
_SWEEP_PAGES = 10


def _mark_key(task_name: str, args: tuple[Any, ...] | list[Any]) -> str:
    return "pm-queued:" + task_name + ":" + ",".join(str(arg) for arg in args)


def _mark_seconds(countdown: float | None) -> int:
    """How long a queued mark lasts: the message's countdown, then the patience given to the broker."""
    return int((countdown or 0) + settings.PUSHMAIL_QUEUED_MARK_SECONDS) + 1


def queued_marks(task: Task, ids: list[Any]) -> set[Any]:
    """Of ``ids`` (a task's single argument), those a broker message for ``task`` still waits for."""
    if not ids:
        return set()
    keys = {_mark_key(task.name, (pk,)): pk for pk in ids}
    return {keys[key] for key in caches["default"].get_many(list(keys))}


def drop_queued_mark(task_name: str, args: tuple[Any, ...] | list[Any]) -> None:
    """The broker no longer holds this message: its task started (or the message was lost)."""
    try:
        caches["default"].delete(_mark_key(task_name, args))
    except Exception:  # a cache that is down must not stop the work; the claim still guards the row
        log.warning("could not clear the queued mark of %s%r", task_name, args, exc_info=True)


@signals.task_received.connect
def _task_reserved(request: Any = None, **kwargs: Any) -> None:
    """A worker that takes a message off the queue takes its mark away: should that worker be
    killed before the task runs, the broker keeps the message unacknowledged for its visibility
    timeout, and the row must be left to the sweep (after the grace), not to the mark's lapse."""
    if request is not None:
        drop_queued_mark(request.name, tuple(request.args or ()))


@signals.task_prerun.connect
def _task_started(sender: Task | None = None, args: Any = None, **kwargs: Any) -> None:
    """A task that starts takes its queued mark away: from here its row's claim is what counts."""
    if sender is not None:
        drop_queued_mark(sender.name, tuple(args or ()))


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
    """Wake a worker once the current transaction commits, and mark the row queued.

    A broker that is down must not fail the request that stored the row: the
    periodic sweep finds every due row anyway (no mark is left for it).
    """

    def send() -> None:
        # The mark goes first: a worker may take the message off the queue (and drop its mark) before
        # ``apply_async`` returns, and a mark set after that would outlive the message.
        try:
            caches["default"].set(_mark_key(task.name, args), 1, timeout=_mark_seconds(countdown))
        except Exception:  # without its mark the row is merely queued again by a sweep
            log.warning("could not mark %s%r queued", task.name, args, exc_info=True)
        try:
            task.apply_async(args, countdown=countdown)
        except Exception:  # the row is the truth; the sweep will queue it
            log.warning("could not queue %s%r; the sweep will pick it up", task.name, args, exc_info=True)
            drop_queued_mark(task.name, args)

    transaction.on_commit(send)
