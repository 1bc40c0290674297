"""Operations: the Celery wiring, admin "retry now" actions and the health check."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone

from accounts.models import User
from mailbox import tasks as mailbox_tasks
from mailbox.models import FetchState, RemoteMessage
from mailbox.services import accept_notification
from outbox import tasks as outbox_tasks
from outbox.models import BodyFetch, Delivery, DeliveryState, Message
from pushmail_site.celery import app
from tests.conftest import NOTIFICATIONS, FakePeer, Queued
from tests.factories import MailboxFactory, PeerMessageFactory, SentMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]


def test_durable_task_settings() -> None:
    assert app.conf.task_acks_late is True
    assert app.conf.task_reject_on_worker_lost is True
    assert app.conf.worker_prefetch_multiplier == 1


def test_every_scheduled_task_exists() -> None:
    app.loader.import_default_modules()
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {"outbox.requeue_due", "mailbox.requeue_due", "outbox.mark_fetched_by_all"} <= scheduled
    assert scheduled <= set(app.tasks), scheduled - set(app.tasks)


def test_tasks_take_ids_and_tolerate_rows_that_are_gone(alice: User, peer: FakePeer) -> None:
    message = SentMessageFactory(sender=alice, to=["carol@peer.test"])
    delivery_id = Delivery.objects.get(message=message).pk
    Message.objects.filter(pk=message.pk).delete()

    outbox_tasks.deliver_notification(delivery_id)
    outbox_tasks.send_withdrawal(delivery_id)
    mailbox_tasks.fetch_body(123456)

    assert peer.calls == []


def test_task_wrappers_do_the_work(alice: User, peer: FakePeer) -> None:
    message = SentMessageFactory(sender=alice, to=["carol@peer.test"])
    outbox_tasks.deliver_notification(Delivery.objects.get(message=message).pk)
    assert len(peer.calls_to("POST", NOTIFICATIONS)) == 1

    assert outbox_tasks.mark_fetched_by_all() == 0  # peer.test has not fetched it
    BodyFetch.objects.create(message=message, domain="peer.test", bytes=message.size)
    assert outbox_tasks.mark_fetched_by_all() == 1

    old = PeerMessageFactory(expires=timezone.now().replace(microsecond=0) - timedelta(seconds=1))
    accept_notification(origin="peer.test", notification=old.notification())
    assert mailbox_tasks.housekeeping() == {"expired": 1, "prefetched": 0}
    assert RemoteMessage.objects.get().state == FetchState.EXPIRED


@pytest.fixture
def admin_client(alice: User) -> Client:
    admin = MailboxFactory(domain=alice.domain, local_part="postmaster")
    User.objects.filter(pk=admin.pk).update(is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(User.objects.get(pk=admin.pk))
    return client


def test_admin_retries_a_delivery_now(
    alice: User,
    peer: FakePeer,
    admin_client: Client,
    queued: list[Queued],
    django_capture_on_commit_callbacks: Any,
) -> None:
    peer.go_down()
    message = SentMessageFactory(sender=alice, to=["carol@peer.test"])
    delivery = Delivery.objects.get(message=message)
    outbox_tasks.deliver_notification(delivery.pk)
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now() + timedelta(minutes=10))
    peer.come_back()

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/outbox/delivery/", {"action": "retry_now", "_selected_action": [delivery.pk]}
        )

    assert response.status_code == 302
    assert [(q.name, q.args) for q in queued] == [("outbox.deliver_notification", (delivery.pk,))]
    outbox_tasks.deliver_notification(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.state == DeliveryState.NOTIFIED


def test_admin_fetches_a_message_now(
    alice: User,
    peer: FakePeer,
    admin_client: Client,
    queued: list[Queued],
    django_capture_on_commit_callbacks: Any,
) -> None:
    message = PeerMessageFactory()
    peer.bodies[str(message.global_id)] = message.content()
    accept_notification(origin="peer.test", notification=message.notification())
    remote = RemoteMessage.objects.get()

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/mailbox/remotemessage/", {"action": "fetch_now", "_selected_action": [remote.pk]}
        )

    assert response.status_code == 302
    assert [(q.name, q.args) for q in queued] == [("mailbox.fetch_body", (remote.pk,))]
    mailbox_tasks.fetch_body(remote.pk)
    remote.refresh_from_db()
    assert remote.state == FetchState.FETCHED


def test_admin_pages_do_not_show_stored_bodies(alice: User, admin_client: Client, peer: FakePeer) -> None:
    message = PeerMessageFactory(text="Private body token 9c1d")
    accept_notification(origin="peer.test", notification=message.notification())
    RemoteMessage.objects.update(content=message.content(), state=FetchState.FETCHED)
    remote = RemoteMessage.objects.get()

    page = admin_client.get(f"/admin/mailbox/remotemessage/{remote.pk}/change/")

    assert page.status_code == 200
    assert b"Private body token 9c1d" not in page.content


def test_healthz_reports_database_and_broker(db: None) -> None:
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "broker": "ok"}


def test_healthz_reports_a_broker_that_is_down(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    def down(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionRefusedError("broker down")

    monkeypatch.setattr(app, "connection_for_write", down)
    response = Client().get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "degraded" and response.json()["broker"].startswith("error")
