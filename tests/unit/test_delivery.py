"""Sender side state transitions: pending → notified / retrying → failed, with HTTP mocked at the client."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone
from http_message_signatures import HTTPMessageVerifier, HTTPSignatureKeyResolver, algorithms

from accounts.models import User
from federation import signatures
from federation.keys import current_key, public_key_from_b64
from mailbox.models import EntryState, InboxEntry
from outbox.models import Delivery, DeliveryState, Message, Recipient
from outbox.services import deliver_notification, requeue_due, send_message
from tests.conftest import NOTIFICATIONS, PEER_BASE, Call, FakeNetwork, FakePeer, Queued, api_as, json_response
from tests.factories import SentMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]


def _send(sender: User, *to: str, **kwargs: Any) -> Message:
    return SentMessageFactory(sender=sender, to=list(to), **kwargs)


def _delivery(message: Message, domain: str = "peer.test") -> Delivery:
    return Delivery.objects.get(message=message, domain=domain)


def _deliver(delivery: Delivery) -> Delivery:
    deliver_notification(delivery.pk)
    delivery.refresh_from_db()
    return delivery


def _make_due(delivery: Delivery) -> None:
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))


def _answers(message: Message) -> dict[str, tuple[str, str]]:
    return {r.address: (r.status, r.reason) for r in Recipient.objects.filter(message=message)}


def _delay(delivery: Delivery, before: datetime, after: datetime) -> tuple[float, float]:
    """Bounds of the delay the delivery was given, seen from either side of the call."""
    assert delivery.next_attempt_at is not None
    return (delivery.next_attempt_at - after).total_seconds(), (delivery.next_attempt_at - before).total_seconds()


class _Keys(HTTPSignatureKeyResolver):
    def __init__(self, public_b64: str) -> None:
        self.public = public_key_from_b64(public_b64)

    def resolve_public_key(self, key_id: str):  # type: ignore[no-untyped-def]
        return self.public


def _peer_verifies(call: Call, key_id: str, public_b64: str) -> None:
    """What a receiving instance does with our request: RFC 9421 verification with our published key."""
    message = signatures._Message(method=call.method, url=call.url, headers=call.headers)
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519, key_resolver=_Keys(public_b64))
    result = verifier.verify(message, expect_tag="pushmail", expect_label="pm", body=call.body)[0]
    assert result.parameters["keyid"] == key_id
    assert {"@method", "@authority", "@path", "content-digest"} <= {
        str(c).strip('"') for c in result.covered_components
    }


def test_pending_delivery_is_notified_with_per_recipient_answers(alice: User, peer: FakePeer) -> None:
    peer.reply(
        "POST",
        NOTIFICATIONS,
        200,
        {
            "results": [
                {"address": "carol@peer.test", "status": "accepted"},
                {"address": "dave@peer.test", "status": "rejected", "reason": "unknown mailbox"},
            ]
        },
    )
    message = _send(alice, "carol@peer.test", "dave@peer.test", "erin@other.test")
    delivery = _delivery(message)
    assert delivery.state == DeliveryState.PENDING

    delivery = _deliver(delivery)

    assert delivery.state == DeliveryState.NOTIFIED
    assert delivery.attempts == 1 and delivery.notified_at is not None and delivery.next_attempt_at is None
    assert _answers(message) == {
        "carol@peer.test": ("accepted", ""),
        "dave@peer.test": ("rejected", "unknown mailbox"),
        "erin@other.test": ("pending", ""),
    }
    (call,) = peer.calls_to("POST", NOTIFICATIONS)
    assert call.url == PEER_BASE + NOTIFICATIONS
    sent = call.json()
    assert sent["type"] == "notification" and sent["id"] == str(message.id)
    assert sent["sender"] == "alice@alpha.test"
    assert sent["recipients"] == ["carol@peer.test", "dave@peer.test"]
    assert (sent["subject"], sent["size"], sent["digest"]) == (message.subject, message.size, message.digest)
    assert message.text not in call.body.decode()  # the body itself never travels with the notification
    key = current_key("alpha.test")
    _peer_verifies(call, key.key_id, key.public_key)


def test_recipient_without_an_answer_is_rejected(alice: User, peer: FakePeer) -> None:
    peer.reply("POST", NOTIFICATIONS, 200, {"results": [{"address": "carol@peer.test", "status": "accepted"}]})
    message = _send(alice, "carol@peer.test", "dave@peer.test")

    assert _deliver(_delivery(message)).state == DeliveryState.NOTIFIED
    assert _answers(message)["dave@peer.test"] == ("rejected", "no answer for this recipient")


def test_unreachable_peer_is_retried_with_growing_backoff_up_to_the_cap(
    alice: User, peer: FakePeer, settings: Any
) -> None:
    settings.PUSHMAIL_RETRY_BASE_SECONDS = 2
    settings.PUSHMAIL_RETRY_CAP_SECONDS = 20
    peer.go_down()
    delivery = _delivery(_send(alice, "carol@peer.test"))
    lows: list[float] = []

    for attempt in range(1, 8):
        before = timezone.now()
        delivery = _deliver(delivery)
        after = timezone.now()
        step = min(20.0, 2.0 * 2 ** (attempt - 1))
        low, high = _delay(delivery, before, after)
        assert delivery.state == DeliveryState.RETRYING
        assert delivery.attempts == attempt
        assert "refused" in delivery.last_error
        assert low > 0, "next attempt must be in the future"
        assert step / 2 - 0.5 <= low and high <= step + 0.5, (attempt, low, high, step)
        lows.append(low)
        _make_due(delivery)

    assert lows[-1] <= 20.5  # capped by PUSHMAIL_RETRY_CAP_SECONDS
    assert lows[4] > lows[0] * 2  # it grows
    assert _answers(delivery.message)["carol@peer.test"] == ("pending", "")
    assert not InboxEntry.objects.filter(owner=alice).exists()  # no failure notice while retrying


def test_retry_is_scheduled_for_when_it_is_due(
    alice: User, peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    peer.go_down()
    delivery = _delivery(_send(alice, "carol@peer.test"))
    with django_capture_on_commit_callbacks(execute=True):
        delivery = _deliver(delivery)

    (task,) = queued
    assert (task.name, task.args) == ("outbox.deliver_notification", (delivery.pk,))
    assert task.countdown is not None and 0 < task.countdown <= settings_cap()


def settings_cap() -> float:
    from django.conf import settings

    return float(settings.PUSHMAIL_RETRY_CAP_SECONDS)


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured(alice: User, peer: FakePeer, status: int) -> None:
    peer.reply("POST", NOTIFICATIONS, status, {"error": "rate_limited", "detail": "slow down"}, {"Retry-After": "120"})
    delivery = _delivery(_send(alice, "carol@peer.test"))

    before = timezone.now()
    delivery = _deliver(delivery)
    after = timezone.now()

    assert delivery.state == DeliveryState.RETRYING
    low, high = _delay(delivery, before, after)
    assert 119 <= low and high <= 121
    assert "slow down" in delivery.last_error


def test_recovery_after_retrying(alice: User, peer: FakePeer) -> None:
    peer.go_down()
    delivery = _deliver(_delivery(_send(alice, "carol@peer.test")))
    assert delivery.state == DeliveryState.RETRYING

    peer.come_back()
    _make_due(delivery)
    delivery = _deliver(delivery)

    assert delivery.state == DeliveryState.NOTIFIED and delivery.attempts == 2 and delivery.last_error == ""
    assert _answers(delivery.message)["carol@peer.test"] == ("accepted", "")


def _notice_of(user: User) -> InboxEntry:
    return InboxEntry.objects.get(owner=user, state=EntryState.NOTICE)


def test_retry_window_exhausted_fails_and_tells_the_sender(alice: User, peer: FakePeer, settings: Any) -> None:
    peer.go_down()
    message = _send(alice, "carol@peer.test", "dave@peer.test", subject="Quarterly report")
    window = settings.PUSHMAIL_DELIVERY_WINDOW
    Message.objects.filter(pk=message.pk).update(date=timezone.now() - window - timedelta(seconds=1))

    delivery = _deliver(_delivery(message))

    assert delivery.state == DeliveryState.FAILED and delivery.failed_at is not None
    assert delivery.next_attempt_at is None
    for status, reason in _answers(message).values():
        assert status == "rejected" and "refused" in reason
    notice = _notice_of(alice)
    assert notice.subject == "Undelivered: Quarterly report"
    assert notice.sender == "postmaster@alpha.test"
    assert "carol@peer.test" in notice.notice_text and "dave@peer.test" in notice.notice_text
    assert "refused" in notice.notice_text

    # The sender reads it through the API like any other message.
    response = api_as(alice).get(f"/api/v1/inbox/{notice.pk}/")
    assert response.status_code == 200
    assert response.json()["state"] == "notice" and "carol@peer.test" in response.json()["body"]["text"]


def test_retry_never_goes_past_the_window(alice: User, peer: FakePeer, settings: Any) -> None:
    peer.reply("POST", NOTIFICATIONS, 429, {"error": "rate_limited"}, {"Retry-After": "86400"})
    message = _send(alice, "carol@peer.test")
    window_end = timezone.now() + timedelta(seconds=30)
    Message.objects.filter(pk=message.pk).update(date=window_end - settings.PUSHMAIL_DELIVERY_WINDOW)

    delivery = _deliver(_delivery(message))

    assert delivery.state == DeliveryState.RETRYING
    assert delivery.next_attempt_at is not None and delivery.next_attempt_at <= window_end + timedelta(seconds=1)


def test_permanent_refusal_fails_at_once_with_a_notice(alice: User, peer: FakePeer) -> None:
    peer.reply("POST", NOTIFICATIONS, 400, {"error": "invalid_payload", "detail": "subject: contains CR or LF"})
    message = _send(alice, "carol@peer.test")

    delivery = _deliver(_delivery(message))

    assert delivery.state == DeliveryState.FAILED and delivery.attempts == 1
    assert _answers(message)["carol@peer.test"] == ("rejected", "HTTP 400: subject: contains CR or LF")
    assert "subject: contains CR or LF" in _notice_of(alice).notice_text


def test_legacy_domain_recipients_are_rejected(alice: User, net: FakeNetwork) -> None:
    message = _send(alice, "someone@legacy.example", "other@legacy.example")

    delivery = _deliver(_delivery(message, "legacy.example"))

    assert delivery.state == DeliveryState.FAILED
    assert _answers(message) == {
        "someone@legacy.example": ("rejected", "legacy domain"),
        "other@legacy.example": ("rejected", "legacy domain"),
    }
    assert net.calls == []
    shown = api_as(alice).get(f"/api/v1/messages/{message.pk}/").json()
    (row,) = shown["deliveries"]
    assert {r["address"]: (r["status"], r["reason"]) for r in row["recipients"]} == _answers(message)


def test_peer_that_cannot_be_discovered_is_retried_not_legacy(alice: User, peer: FakePeer) -> None:
    peer.go_down()
    message = _send(alice, "carol@peer.test")
    delivery = _deliver(_delivery(message))
    assert delivery.state == DeliveryState.RETRYING
    assert _answers(message)["carol@peer.test"] == ("pending", "")


def test_repeated_task_has_no_repeated_effect(alice: User, peer: FakePeer) -> None:
    delivery = _delivery(_send(alice, "carol@peer.test"))

    deliver_notification(delivery.pk)
    deliver_notification(delivery.pk)

    assert len(peer.calls_to("POST", NOTIFICATIONS)) == 1
    delivery.refresh_from_db()
    assert delivery.state == DeliveryState.NOTIFIED and delivery.attempts == 1


def test_retrying_delivery_is_not_attempted_before_it_is_due(alice: User, peer: FakePeer) -> None:
    peer.go_down()
    delivery = _deliver(_delivery(_send(alice, "carol@peer.test")))
    calls = len(peer.calls)

    deliver_notification(delivery.pk)  # a duplicate broker message, too early

    assert len(peer.calls) == calls
    delivery.refresh_from_db()
    assert delivery.attempts == 1


def test_unknown_delivery_id_is_ignored(alice: User, net: FakeNetwork) -> None:
    deliver_notification(987654)
    assert net.calls == []


def test_tasks_are_queued_only_after_commit_and_only_for_remote_domains(
    alice: User, bob: User, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        message = _send(alice, "carol@peer.test", "erin@other.test", "bob@alpha.test")
    assert queued == []  # nothing reaches the broker before the commit

    for callback in callbacks:
        callback()
    remote_ids = set(Delivery.objects.filter(message=message, local=False).values_list("pk", flat=True))
    assert {q.name for q in queued} == {"outbox.deliver_notification"}
    assert {q.args[0] for q in queued} == remote_ids and len(queued) == 2


def test_sweep_requeues_deliveries_the_broker_missed(
    alice: User, peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    message = _send(alice, "carol@peer.test", "erin@other.test")
    overdue, not_due = _delivery(message), _delivery(message, "other.test")
    Delivery.objects.filter(pk=overdue.pk).update(next_attempt_at=timezone.now() - timedelta(minutes=5))
    Delivery.objects.filter(pk=not_due.pk).update(
        state=DeliveryState.RETRYING, next_attempt_at=timezone.now() + timedelta(minutes=5)
    )

    with django_capture_on_commit_callbacks(execute=True):
        requeue_due()

    assert [(q.name, q.args) for q in queued] == [("outbox.deliver_notification", (overdue.pk,))]


def test_local_delivery_is_immediate_with_no_http(
    alice: User, bob: User, net: FakeNetwork, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        message = send_message(
            sender=alice, to=["bob@alpha.test", "nobody@alpha.test"], subject="Lunch?", text="At noon, local token"
        )

    entry = InboxEntry.objects.get(owner=bob)
    assert (entry.state, entry.sender, entry.subject, entry.read) == ("fetched", "alice@alpha.test", "Lunch?", False)
    assert _answers(message) == {
        "bob@alpha.test": ("accepted", ""),
        "nobody@alpha.test": ("rejected", "unknown mailbox"),
    }
    delivery = _delivery(message, "alpha.test")
    assert delivery.local and delivery.state == DeliveryState.NOTIFIED
    assert net.calls == [] and queued == []

    response = api_as(bob).get(f"/api/v1/inbox/{entry.pk}/")
    assert response.status_code == 200
    assert response.json()["body"]["text"] == "At noon, local token" and response.json()["read"] is True


def test_message_to_self_and_duplicates_make_one_entry(alice: User) -> None:
    send_message(
        sender=alice, to=["alice@alpha.test", "ALICE@alpha.test"], cc=["alice@alpha.test"], subject="s", text="t"
    )
    assert InboxEntry.objects.filter(owner=alice).count() == 1


def test_fake_peer_default_answer_accepts(alice: User, peer: FakePeer) -> None:
    # Guard for the other tests: the fake peer answers like a real instance would.
    peer.on("POST", NOTIFICATIONS, lambda call: json_response(200, {"results": []}))
    message = _send(alice, "carol@peer.test")
    _deliver(_delivery(message))
    assert _answers(message)["carol@peer.test"] == ("rejected", "no answer for this recipient")
