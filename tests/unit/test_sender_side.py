"""The sender's instance: serving bodies to recipient domains, withdrawal, retention."""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from accounts.models import User
from mailbox.models import EntryState, InboxEntry
from mailbox.services import open_entry
from outbox.models import BodyFetch, Delivery, DeliveryState, Message, Withdrawal, WithdrawalState
from outbox.services import deliver_notification, mark_fetched_by_all, send_withdrawal, withdraw_message
from tests.conftest import WITHDRAWALS, FakePeer, FederationClient, api_as
from tests.factories import SentMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]


def _sent(alice: User, *to: str, **kwargs: Any) -> Message:
    message = SentMessageFactory(sender=alice, to=list(to), **kwargs)
    for delivery in Delivery.objects.filter(message=message, local=False):
        deliver_notification(delivery.pk)
    return message


def _status(user: User, message: Message) -> dict[str, dict[str, Any]]:
    response = api_as(user).get(f"/api/v1/messages/{message.pk}/")
    assert response.status_code == 200
    return {row["domain"]: row for row in response.json()["deliveries"]}


# --- serving the body -------------------------------------------------------------------------


def test_recipient_domain_fetches_the_canonical_body(alice: User, peer: FakePeer, federation: FederationClient) -> None:
    message = _sent(alice, "carol@peer.test", subject="Plans", text="Unique token 7f3a")

    response = federation.fetch(peer, message.pk)

    assert response.status_code == 200
    assert "Content-Encoding" not in response  # nothing asked for gzip
    content = response.content
    assert b"Unique token 7f3a" in content
    assert "sha-256:" + hashlib.sha256(content).hexdigest() == message.digest
    assert len(content) == message.size
    assert response["Cache-Control"] == "no-store"
    fetch = BodyFetch.objects.get(message=message)
    assert (fetch.domain, fetch.bytes) == ("peer.test", len(content))

    row = _status(alice, message)["peer.test"]
    assert row["fetch_status"] == "fetched" and row["fetch_count"] == 1 and row["first_fetched_at"]


def test_a_domain_that_is_not_a_recipient_gets_404(
    alice: User, peer: FakePeer, other_peer: FakePeer, federation: FederationClient
) -> None:
    message = _sent(alice, "carol@peer.test")

    response = federation.fetch(other_peer, message.pk)

    assert response.status_code == 404 and response.json()["error"] == "not_found"
    assert not BodyFetch.objects.exists()


def test_bcc_domain_may_fetch(alice: User, other_peer: FakePeer, federation: FederationClient) -> None:
    message = _sent(alice, "carol@peer.test", bcc=["hidden@other.test"])
    assert federation.fetch(other_peer, message.pk).status_code == 200


@pytest.mark.parametrize("global_id", ["0b7c3a5e-2f1d-4e6a-9c8b-7d6e5f4a3b2c", "not-a-uuid"])
def test_unknown_message_is_404(alice: User, peer: FakePeer, federation: FederationClient, global_id: str) -> None:
    response = federation.fetch(peer, global_id)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found" and response.json()["detail"]


def test_fetch_must_be_signed(alice: User, federation: FederationClient) -> None:
    message = _sent(alice, "carol@peer.test")
    response = federation.fetch(None, message.pk)
    assert response.status_code == 401 and response.json()["error"] == "signature_missing"
    assert not BodyFetch.objects.exists()


# --- withdrawal -----------------------------------------------------------------------------------


def test_withdrawn_message_answers_410_and_every_domain_is_told(
    alice: User, bob: User, peer: FakePeer, federation: FederationClient
) -> None:
    message = _sent(alice, "carol@peer.test", "bob@alpha.test")

    withdraw_message(message=message)

    response = federation.fetch(peer, message.pk)
    assert response.status_code == 410
    assert response.json()["reason"] == "withdrawn"
    assert InboxEntry.objects.get(owner=bob).state == EntryState.WITHDRAWN

    withdrawal = Withdrawal.objects.get(message=message, domain="peer.test")
    assert withdrawal.state == WithdrawalState.PENDING
    send_withdrawal(withdrawal.pk)
    send_withdrawal(withdrawal.pk)  # repeated: still one request
    (call,) = peer.calls_to("POST", WITHDRAWALS)
    assert call.json() == {"type": "withdrawal", "version": 1, "id": str(message.pk), "sender": "alice@alpha.test"}
    assert 'keyid="alpha.test#' in call.headers["Signature-Input"]
    withdrawal.refresh_from_db()
    assert withdrawal.state == WithdrawalState.SENT and withdrawal.acknowledged_at is not None

    status = _status(alice, message)
    assert status["peer.test"]["withdrawal"] == "sent"
    assert status["peer.test"]["withdrawn_before_fetch"] is True


def test_sender_sees_that_the_withdrawal_came_after_a_fetch(
    alice: User, peer: FakePeer, other_peer: FakePeer, federation: FederationClient
) -> None:
    message = _sent(alice, "carol@peer.test", "erin@other.test")
    assert federation.fetch(peer, message.pk).status_code == 200

    withdraw_message(message=message)

    status = _status(alice, message)
    assert status["peer.test"]["withdrawn_before_fetch"] is False
    assert status["other.test"]["withdrawn_before_fetch"] is True


def test_local_reader_who_opened_keeps_the_message(alice: User, bob: User) -> None:
    message = SentMessageFactory(sender=alice, to=["bob@alpha.test"], text="Kept after withdrawal")
    entry = InboxEntry.objects.get(owner=bob)
    open_entry(entry=entry)

    withdraw_message(message=message)

    entry.refresh_from_db()
    assert entry.state == EntryState.FETCHED
    body = api_as(bob).get(f"/api/v1/inbox/{entry.pk}/").json()["body"]
    assert body["text"] == "Kept after withdrawal"


def test_withdrawal_before_notification_cancels_it(alice: User, peer: FakePeer) -> None:
    message = SentMessageFactory(sender=alice, to=["carol@peer.test"])  # not yet delivered

    withdraw_message(message=message)
    delivery = Delivery.objects.get(message=message)
    deliver_notification(delivery.pk)

    delivery.refresh_from_db()
    assert delivery.state == DeliveryState.FAILED and delivery.last_error == "withdrawn before notification"
    assert not Withdrawal.objects.filter(message=message).exists()
    assert _status(alice, message)["peer.test"]["withdrawal"] == "none"
    assert peer.calls == []


def test_withdrawal_to_an_unreachable_domain_is_retried(alice: User, peer: FakePeer) -> None:
    message = _sent(alice, "carol@peer.test")
    withdraw_message(message=message)
    peer.go_down()
    withdrawal = Withdrawal.objects.get(message=message)

    send_withdrawal(withdrawal.pk)

    withdrawal.refresh_from_db()
    assert withdrawal.state == WithdrawalState.PENDING
    assert withdrawal.next_attempt_at is not None and withdrawal.next_attempt_at > timezone.now()
    assert "refused" in withdrawal.last_error


def test_withdrawing_twice_changes_nothing(alice: User, peer: FakePeer) -> None:
    message = _sent(alice, "carol@peer.test")
    first = withdraw_message(message=message).withdrawn_at
    assert withdraw_message(message=message).withdrawn_at == first


# --- retention ------------------------------------------------------------------------------------------


def test_body_past_retention_is_no_longer_served_and_the_fetch_answers_expired(
    alice: User, peer: FakePeer, federation: FederationClient
) -> None:
    message = _sent(alice, "carol@peer.test", subject="Old news", text="Old body, still the sender's")
    live = _sent(alice, "carol@peer.test", text="Still here")
    Message.objects.filter(pk=message.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    response = federation.fetch(peer, message.pk)
    assert response.status_code == 410 and response.json()["reason"] == "expired"
    assert federation.fetch(peer, live.pk).status_code == 200
    data = api_as(alice).get(f"/api/v1/messages/{message.pk}/").json()
    assert data["offer_ended"]["reason"] == "retention_ended" and data["text"] == "Old body, still the sender's"


def test_body_fetched_by_every_recipient_domain_is_no_longer_served(
    alice: User, peer: FakePeer, other_peer: FakePeer, federation: FederationClient
) -> None:
    message = _sent(alice, "carol@peer.test", "erin@other.test")
    federation.fetch(peer, message.pk)
    assert mark_fetched_by_all() == 0  # other.test has not fetched yet

    federation.fetch(other_peer, message.pk)
    assert mark_fetched_by_all() == 1
    response = federation.fetch(peer, message.pk)
    assert response.status_code == 410 and response.json()["reason"] == "fetched"


def test_local_readers_keep_a_message_no_longer_offered(
    alice: User, bob: User, peer: FakePeer, federation: FederationClient
) -> None:
    message = _sent(alice, "carol@peer.test", "bob@alpha.test", text="Local copy")
    Message.objects.filter(pk=message.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    mark_fetched_by_all()

    assert federation.fetch(peer, message.pk).status_code == 410
    entry = InboxEntry.objects.get(owner=bob)
    assert api_as(bob).get(f"/api/v1/inbox/{entry.pk}/").json()["body"]["text"] == "Local copy"


def test_body_and_answers_are_gzip_coded_for_clients_that_accept_it(
    alice: User, peer: FakePeer, federation: FederationClient
) -> None:
    message = _sent(alice, "carol@peer.test", text="compressible words " * 500)

    response = federation.fetch(peer, message.pk, headers={"Accept-Encoding": "gzip"})

    assert response.status_code == 200 and response["Content-Encoding"] == "gzip"
    content = gzip.decompress(response.content)
    assert len(response.content) < len(content) / 5
    assert "sha-256:" + hashlib.sha256(content).hexdigest() == message.digest


def test_discovery_document_is_gzip_coded_for_clients_that_accept_it(alice: User) -> None:
    from django.test import Client

    response = Client().get("/.well-known/pushmail", headers={"Accept-Encoding": "gzip"})

    assert response.status_code == 200 and response["Content-Encoding"] == "gzip"
    document = json.loads(gzip.decompress(response.content))
    assert document["domains"] == ["alpha.test"] and document["keys"]
