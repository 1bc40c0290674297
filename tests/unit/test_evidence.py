"""Notifications kept exactly as received, as evidence: only accepted ones, the exact bytes, purged on time."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import User
from federation import evidence
from federation.models import SignedRequest
from federation.tasks import purge_expired_evidence
from mailbox.models import RemoteMessage
from tests.conftest import NOTIFICATIONS, TEST_HOST, FakePeer, FederationClient
from tests.factories import PeerMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]


def _odd_bytes(payload: dict[str, Any]) -> bytes:
    """A valid notification serialized unlike our own sender would: only the exact bytes can be kept."""
    return json.dumps(payload, indent=3, ensure_ascii=False, sort_keys=True).encode()


def test_accepted_notification_is_kept_byte_for_byte_with_its_signature(
    federation: FederationClient, peer: FakePeer, alice: User
) -> None:
    payload = PeerMessageFactory(subject="Grüße aus Köln").payload()
    body = _odd_bytes(payload)
    signed = peer.sign("POST", NOTIFICATIONS, body)

    response = federation.send("POST", NOTIFICATIONS, body, signer=None, headers=signed)

    assert response.status_code == 200, response.content
    row = SignedRequest.objects.get()
    assert bytes(row.body) == body
    assert row.kind == "notification"
    assert row.signature == signed["Signature"]
    assert row.signature_input == signed["Signature-Input"]
    assert row.content_digest == signed["Content-Digest"]
    assert (row.method, row.authority, row.path, row.query) == ("POST", TEST_HOST, NOTIFICATIONS, "?")
    assert row.headers["Content-Type"] == "application/json"
    assert (row.origin_domain, row.sender, row.local_domain) == ("peer.test", "carol@peer.test", "alpha.test")
    assert (row.key_id, row.public_key) == (peer.key_id, peer.public_b64)
    assert str(row.global_id) == payload["id"]
    assert evidence.verifies(row)
    # The request as exported starts with the request line and ends in the very bytes received.
    exported = evidence.http_request_bytes(row)
    assert exported.startswith(f"POST {NOTIFICATIONS} HTTP/1.1\r\nHost: {TEST_HOST}\r\n".encode())
    assert exported.endswith(b"\r\n\r\n" + body)


def test_kept_evidence_still_verifies_after_the_origin_rotates_its_key(
    federation: FederationClient, peer: FakePeer, alice: User
) -> None:
    assert federation.notify(peer, PeerMessageFactory().payload()).status_code == 200
    old_public = peer.public_b64
    peer.private_key = Ed25519PrivateKey.generate()  # the origin now publishes only a new key

    row = SignedRequest.objects.get()
    assert row.public_key == old_public != peer.public_b64
    assert evidence.verifies(row)
    row.public_key = peer.public_b64  # the key published now would not prove it
    assert not evidence.verifies(row)


def test_a_changed_byte_does_not_verify(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    assert federation.notify(peer, PeerMessageFactory().payload()).status_code == 200
    row = SignedRequest.objects.get()
    row.body = bytes(row.body).replace(b"carol", b"carl!")
    assert not evidence.verifies(row)


def test_notification_no_local_recipient_accepted_is_not_kept(
    federation: FederationClient, peer: FakePeer, alice: User
) -> None:
    payload = PeerMessageFactory(to=["nobody@alpha.test", "someone@elsewhere.test"]).payload()

    response = federation.notify(peer, payload)

    assert response.status_code == 200, response.content
    assert {r["status"] for r in response.json()["results"]} == {"rejected"}
    assert not SignedRequest.objects.exists()


@pytest.mark.parametrize("problem", ["wrong_domain", "unsigned", "bad_signature", "invalid_payload"])
def test_refused_requests_are_not_kept(
    federation: FederationClient, peer: FakePeer, other_peer: FakePeer, alice: User, problem: str
) -> None:
    payload = PeerMessageFactory().payload()
    if problem == "wrong_domain":
        response = federation.notify(other_peer, payload)
    elif problem == "unsigned":
        response = federation.post_json(NOTIFICATIONS, payload, signer=None)
    elif problem == "bad_signature":
        response = federation.notify(peer, payload, private_key=Ed25519PrivateKey.generate())
    else:
        response = federation.notify(peer, {**payload, "size": -1})

    assert response.status_code >= 400
    assert not SignedRequest.objects.exists()


def test_a_conflicting_repeat_keeps_nothing_new(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    payload = PeerMessageFactory().payload()
    assert federation.notify(peer, payload).status_code == 200

    response = federation.notify(peer, {**payload, "subject": "Something else"})

    assert response.status_code == 409
    assert SignedRequest.objects.count() == 1


def test_retries_are_kept_once_and_split_notifications_each(
    federation: FederationClient, peer: FakePeer, alice: User, bob: User
) -> None:
    message = PeerMessageFactory(to=["alice@alpha.test", "bob@alpha.test"])
    first = message.payload(recipients=["alice@alpha.test"])
    assert federation.notify(peer, first).status_code == 200
    assert federation.notify(peer, first).status_code == 200  # a retry: same bytes, signed again

    assert federation.notify(peer, message.payload(recipients=["bob@alpha.test"])).status_code == 200

    assert SignedRequest.objects.filter(kind="notification").count() == 2
    assert RemoteMessage.objects.count() == 1


def test_withdrawal_of_a_known_message_is_kept_and_of_an_unknown_one_not(
    federation: FederationClient, peer: FakePeer, alice: User
) -> None:
    payload = PeerMessageFactory().payload()
    assert federation.notify(peer, payload).status_code == 200

    assert federation.withdraw(peer, payload["id"], "carol@peer.test").status_code == 200
    assert federation.withdraw(peer, "0b7c3a5e-2f1d-4e6a-9c8b-7d6e5f4a3b2c", "carol@peer.test").status_code == 404

    withdrawal = SignedRequest.objects.get(kind="withdrawal")
    assert str(withdrawal.global_id) == payload["id"]
    assert evidence.verifies(withdrawal)


def test_keeping_costs_one_insert(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    federation.notify(peer, PeerMessageFactory().payload())  # warm the key cache
    with CaptureQueriesContext(connection) as queries:
        assert federation.notify(peer, PeerMessageFactory().payload()).status_code == 200
    touching = [q["sql"] for q in queries.captured_queries if "federation_signedrequest" in q["sql"]]
    assert len(touching) == 1 and touching[0].startswith("INSERT")


def test_evidence_is_purged_after_the_evidence_days(
    federation: FederationClient, peer: FakePeer, alice: User, settings: Any
) -> None:
    settings.PUSHMAIL_EVIDENCE = timedelta(days=90)
    for _ in range(3):
        assert federation.notify(peer, PeerMessageFactory().payload()).status_code == 200
    old, recent, new = SignedRequest.objects.order_by("pk")
    now = timezone.now()
    SignedRequest.objects.filter(pk=old.pk).update(received_at=now - timedelta(days=91))
    SignedRequest.objects.filter(pk=recent.pk).update(received_at=now - timedelta(days=89))

    with CaptureQueriesContext(connection) as queries:
        assert purge_expired_evidence() == 1

    assert set(SignedRequest.objects.values_list("pk", flat=True)) == {recent.pk, new.pk}
    assert [q["sql"].split()[0] for q in queries.captured_queries] == ["DELETE"]  # one bulk statement

    settings.PUSHMAIL_EVIDENCE = timedelta(days=30)
    assert purge_expired_evidence() == 1
    assert list(SignedRequest.objects.values_list("pk", flat=True)) == [new.pk]


def test_the_purge_runs_periodically_and_defaults_to_90_days() -> None:
    entries = [e for e in django_settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == purge_expired_evidence.name]
    assert len(entries) == 1
    assert django_settings.PUSHMAIL_EVIDENCE == timedelta(days=90)
