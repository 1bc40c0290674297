"""A final failure reaches the sender at once: a notice in their inbox, a plain mark in Sent, no Withdraw there."""

from __future__ import annotations

import pytest
from django.test import Client

from accounts.models import User
from mailbox.models import EntryState, InboxEntry
from outbox.models import Delivery, DeliveryState, Message
from outbox.services import deliver_notification
from tests.conftest import NOTIFICATIONS, FakePeer
from tests.factories import SentMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]


def _notices(user: User) -> list[InboxEntry]:
    return list(InboxEntry.objects.filter(owner=user, state=EntryState.NOTICE))


def _deliver(message: Message, domain: str) -> Delivery:
    delivery = Delivery.objects.get(message=message, domain=domain)
    deliver_notification(delivery.pk)
    delivery.refresh_from_db()
    return delivery


def _client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_an_unknown_mailbox_is_a_notice_at_once(alice: User, peer: FakePeer) -> None:
    peer.reply(
        "POST",
        NOTIFICATIONS,
        200,
        {
            "results": [
                {"address": "carol@peer.test", "status": "accepted"},
                {"address": "nobody@peer.test", "status": "rejected", "reason": "unknown mailbox"},
            ]
        },
    )
    message = SentMessageFactory(sender=alice, to=["carol@peer.test", "nobody@peer.test"], subject="Lunch")

    assert _deliver(message, "peer.test").state == DeliveryState.NOTIFIED

    (notice,) = _notices(alice)
    assert notice.subject == "Undelivered: Lunch"
    assert "nobody@peer.test" in notice.notice_text and "unknown mailbox" in notice.notice_text
    assert "carol@peer.test" not in notice.notice_text

    # Delivering the same answers again tells nobody twice.
    Delivery.objects.filter(message=message).update(state=DeliveryState.PENDING)
    _deliver(message, "peer.test")
    assert len(_notices(alice)) == 1


def test_a_domain_that_takes_no_pushmail_mail_is_a_notice_at_once(alice: User) -> None:
    message = SentMessageFactory(sender=alice, to=["someone@legacy.example"], subject="Hello")

    assert _deliver(message, "legacy.example").state == DeliveryState.FAILED

    (notice,) = _notices(alice)
    assert "someone@legacy.example" in notice.notice_text


def test_sent_marks_an_undelivered_message_and_offers_no_withdraw_for_a_failed_domain(
    alice: User, peer: FakePeer
) -> None:
    peer.reply("POST", NOTIFICATIONS, 400, {"error": "invalid_payload", "detail": "subject: contains CR or LF"})
    message = SentMessageFactory(sender=alice, to=["carol@peer.test"], subject="Refused")
    assert _deliver(message, "peer.test").state == DeliveryState.FAILED

    client = _client(alice)
    listing = client.get("/mail/sent/").content.decode()
    assert 'data-testid="undelivered-chip"' in listing
    assert "Not delivered to 1 recipient" in listing

    page = client.get(f"/mail/sent/{message.pk}/").content.decode()
    assert ">Withdraw</button>" not in page
    assert 'data-testid="nothing-to-withdraw"' in page


def test_a_delivered_message_keeps_its_withdraw_and_no_mark(alice: User, peer: FakePeer) -> None:
    message = SentMessageFactory(sender=alice, to=["carol@peer.test"], subject="Fine")
    assert _deliver(message, "peer.test").state == DeliveryState.NOTIFIED

    client = _client(alice)
    assert 'data-testid="undelivered-chip"' not in client.get("/mail/sent/").content.decode()
    assert ">Withdraw</button>" in client.get(f"/mail/sent/{message.pk}/").content.decode()
