"""The periodic sweep queues a job again only when the broker has lost it.

A slow worker with a backlog must run each job once: a row still waiting in the
queue is not queued again every sweep. A job the broker lost (a restart without
persistence), and one whose worker was killed mid-task, are still queued again.
The clock is simulated, for the database and for the shared cache alike.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from celery import Task, current_app, signals
from django.core.cache.backends import base as cache_base
from django.core.cache.backends import db as cache_db
from django.utils import timezone

from accounts.models import User
from outbox.delivery import _claim_delivery, deliver_notification_task
from outbox.models import Delivery, DeliveryState, Message
from outbox.services import requeue_due
from tests.conftest import Queued
from tests.factories import SentMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]

SWEEP_EVERY = 5.0  # PUSHMAIL_SWEEP_SECONDS
TASK_SECONDS = 2.0  # a worker busy with other work: one delivery every 2 s


class Clock:
    def __init__(self) -> None:
        self.now = timezone.now()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    """Simulated time for the code under test and for the expiry of the shared cache's entries."""
    clock = Clock()
    monkeypatch.setattr(timezone, "now", clock)
    monkeypatch.setattr(cache_db, "tz_now", clock)
    monkeypatch.setattr(cache_base, "time", types.SimpleNamespace(time=lambda: clock.now.timestamp()))
    yield clock


def _send_many(alice: User, count: int, capture: Any) -> list[Message]:
    with capture(execute=True):
        return [SentMessageFactory(sender=alice, to=["carol@peer.test"]) for _ in range(count)]


def _run(item: Queued, capture: Any) -> None:
    """A worker takes a message off the broker and runs its task."""
    with capture(execute=True):
        current_app.tasks[item.name].apply(args=item.args)


def _sweep(capture: Any) -> None:
    with capture(execute=True):
        requeue_due()


def test_a_backlog_behind_a_slow_worker_runs_each_delivery_once(
    alice: User, queued: list[Queued], clock: Clock, django_capture_on_commit_callbacks: Any
) -> None:
    messages = _send_many(alice, 30, django_capture_on_commit_callbacks)
    assert len(queued) == 30
    runs, last_sweep = 0, clock.now
    while queued and runs < 500:
        _run(queued.pop(0), django_capture_on_commit_callbacks)
        runs += 1
        clock.advance(TASK_SECONDS)
        if (clock.now - last_sweep).total_seconds() >= SWEEP_EVERY:
            _sweep(django_capture_on_commit_callbacks)
            last_sweep = clock.now

    deliveries = Delivery.objects.filter(message__in=messages, local=False)
    assert set(deliveries.values_list("state", flat=True)) == {DeliveryState.NOTIFIED}
    # Each delivery ran once: the sweep left the ones still waiting in the queue alone.
    assert runs == 30


def test_a_job_the_broker_lost_is_queued_again_once_its_mark_lapses(
    alice: User, queued: list[Queued], clock: Clock, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.PUSHMAIL_QUEUED_MARK_SECONDS = 60
    messages = _send_many(alice, 3, django_capture_on_commit_callbacks)
    queued.clear()  # the broker restarted without persistence: its messages are gone

    clock.advance(settings.PUSHMAIL_SWEEP_GRACE_SECONDS + 1)
    _sweep(django_capture_on_commit_callbacks)
    assert queued == []  # still within the broker's patience

    clock.advance(60)
    _sweep(django_capture_on_commit_callbacks)
    ids = set(Delivery.objects.filter(message__in=messages, local=False).values_list("pk", flat=True))
    assert {q.args[0] for q in queued} == ids and len(queued) == 3

    for item in list(queued):
        queued.remove(item)
        _run(item, django_capture_on_commit_callbacks)
    assert set(Delivery.objects.filter(pk__in=ids).values_list("state", flat=True)) == {DeliveryState.NOTIFIED}


def test_a_job_whose_worker_was_killed_is_queued_again_when_its_claim_lapses(
    alice: User, queued: list[Queued], clock: Clock, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    (message,) = _send_many(alice, 1, django_capture_on_commit_callbacks)
    item = queued.pop()
    # A worker starts the task and claims the row, then is killed before it posts anything.
    signals.task_prerun.send(sender=deliver_notification_task, task_id="killed", args=list(item.args), kwargs={})
    assert _claim_delivery(item.args[0]) is not None

    clock.advance(settings.PUSHMAIL_CLAIM_SECONDS)
    _sweep(django_capture_on_commit_callbacks)
    assert queued == []  # the claim has not lapsed by the grace yet

    clock.advance(settings.PUSHMAIL_SWEEP_GRACE_SECONDS + 1)
    _sweep(django_capture_on_commit_callbacks)
    assert [q.args for q in queued] == [item.args]
    _run(queued.pop(), django_capture_on_commit_callbacks)
    delivery = Delivery.objects.get(message=message, local=False)
    assert (delivery.state, delivery.attempts) == (DeliveryState.NOTIFIED, 2)


def test_a_job_taken_off_the_queue_at_once_by_a_worker_then_killed_is_queued_again_after_the_grace(
    alice: User,
    queued: list[Queued],
    clock: Clock,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    """A fast worker reserves the message before the sender's call to the broker has even returned;
    the worker is then killed before the task starts. The row must not wait for the mark to lapse."""
    settings.PUSHMAIL_QUEUED_MARK_SECONDS = 3600
    queue_it = Task.apply_async

    def reserved_at_once(self: Task, args: Any = None, kwargs: Any = None, **options: Any) -> None:
        queue_it(self, args, kwargs, **options)
        signals.task_received.send(sender=None, request=types.SimpleNamespace(name=self.name, args=list(args or ())))

    monkeypatch.setattr(Task, "apply_async", reserved_at_once)
    (message,) = _send_many(alice, 1, django_capture_on_commit_callbacks)
    item = queued.pop()  # held, unacknowledged, by the killed worker

    clock.advance(settings.PUSHMAIL_SWEEP_GRACE_SECONDS + 1)
    _sweep(django_capture_on_commit_callbacks)
    assert [q.args for q in queued] == [item.args]
    _run(queued.pop(), django_capture_on_commit_callbacks)
    assert Delivery.objects.get(message=message, local=False).state == DeliveryState.NOTIFIED
