"""Signing and verification through a real Django request (federation/signatures.py)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.cache import caches

from accounts.models import User
from federation import discovery, signatures
from federation.keys import current_key, private_key_of, rotate_key
from mailbox.models import InboxEntry, RemoteMessage
from tests.conftest import NOTIFICATIONS, TEST_HOST, FakePeer, FederationClient
from tests.factories import PeerMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]


def _notification(**kwargs) -> bytes:  # type: ignore[no-untyped-def]
    return json.dumps(PeerMessageFactory(**kwargs).payload()).encode()


def _post(federation: FederationClient, body: bytes, *, signer: FakePeer | None, **kwargs):  # type: ignore[no-untyped-def]
    return federation.send("POST", NOTIFICATIONS, body, signer=signer, **kwargs)


def _assert_refused(response, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.content
    data = response.json()
    assert data["error"] == code
    assert data["detail"]
    assert not InboxEntry.objects.exists()


def test_signed_notification_round_trip(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    message = PeerMessageFactory()
    response = _post(federation, json.dumps(message.payload()).encode(), signer=peer)

    assert response.status_code == 200, response.content
    assert response.json()["results"] == [{"address": "alice@alpha.test", "status": "accepted"}]
    entry = InboxEntry.objects.get(owner=alice)
    assert (entry.sender, entry.subject, entry.state) == ("carol@peer.test", message.subject, "notified")


def test_signature_headers_are_rfc9421_with_the_documented_parameters(peer: FakePeer) -> None:
    body = b'{"a":1}'
    headers = peer.sign("POST", NOTIFICATIONS, body, nonce="n-123")

    digest = base64.b64encode(__import__("hashlib").sha256(body).digest()).decode()
    assert headers["Content-Digest"] == f"sha-256=:{digest}:"
    assert headers["Signature-Input"].startswith('pm=("@method" "@authority" "@path" "@query" "content-digest");'), (
        headers["Signature-Input"]
    )
    for parameter in (f'keyid="{peer.key_id}"', 'alg="ed25519"', 'nonce="n-123"', 'tag="pushmail"', "created="):
        assert parameter in headers["Signature-Input"]
    assert headers["Signature"].startswith("pm=:")


def test_request_without_signature_is_refused(federation: FederationClient, alice: User) -> None:
    _assert_refused(_post(federation, _notification(), signer=None), 401, "signature_missing")


def test_flipped_signature_byte_is_refused(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    body = _notification()
    headers = peer.sign("POST", NOTIFICATIONS, body)
    raw = bytearray(base64.b64decode(headers["Signature"].split(":")[1]))
    raw[10] ^= 0x01
    flipped = "pm=:" + base64.b64encode(bytes(raw)).decode() + ":"

    response = federation.send("POST", NOTIFICATIONS, body, signer=None, headers={**headers, "Signature": flipped})

    _assert_refused(response, 401, "signature_invalid")


def test_unknown_key_id_is_refused(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    response = _post(federation, _notification(), signer=peer, key_id="peer.test#never-published")
    _assert_refused(response, 401, "unknown_key")


def test_key_id_without_a_domain_is_refused(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    response = _post(federation, _notification(), signer=peer, key_id="just-a-key")
    _assert_refused(response, 401, "unknown_key")


def test_key_of_another_domain_cannot_sign_for_this_one(
    federation: FederationClient, peer: FakePeer, other_peer: FakePeer, alice: User
) -> None:
    # other.test's real key, presented under peer.test's key id: it does not verify.
    response = _post(federation, _notification(), signer=peer, private_key=other_peer.private_key)
    _assert_refused(response, 401, "signature_invalid")


def test_key_listed_under_another_domain_is_not_trusted(
    federation: FederationClient, peer: FakePeer, alice: User
) -> None:
    # peer.test's document lists a key that belongs to other.test; it must not count for peer.test.
    stray = Ed25519PrivateKey.generate()
    entry = peer.key_entry("peer.test#stray", stray)
    entry["domain"] = "other.test"
    peer.extra_keys.append(entry)

    response = _post(federation, _notification(), signer=peer, key_id="peer.test#stray", private_key=stray)

    _assert_refused(response, 401, "unknown_key")


def test_body_changed_after_signing_is_a_digest_mismatch(
    federation: FederationClient, peer: FakePeer, alice: User
) -> None:
    message = PeerMessageFactory()
    signed_body = json.dumps(message.payload()).encode()
    headers = peer.sign("POST", NOTIFICATIONS, signed_body)
    changed = json.dumps(message.payload(subject="Changed in transit")).encode()

    response = federation.send("POST", NOTIFICATIONS, changed, signer=None, headers=headers)

    _assert_refused(response, 401, "digest_mismatch")


@pytest.mark.parametrize("offset", [timedelta(minutes=-6), timedelta(minutes=6)], ids=["past", "future"])
def test_created_more_than_five_minutes_off_is_refused(
    federation: FederationClient, peer: FakePeer, alice: User, offset: timedelta
) -> None:
    response = _post(federation, _notification(), signer=peer, created=datetime.now(UTC) + offset)
    _assert_refused(response, 401, "signature_expired")


@pytest.mark.parametrize("offset", [timedelta(minutes=-4), timedelta(minutes=4)], ids=["past", "future"])
def test_created_within_five_minutes_is_accepted(
    federation: FederationClient, peer: FakePeer, alice: User, offset: timedelta
) -> None:
    response = _post(federation, _notification(), signer=peer, created=datetime.now(UTC) + offset)
    assert response.status_code == 200, response.content


def test_replayed_request_is_refused(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    body = _notification()
    headers = peer.sign("POST", NOTIFICATIONS, body)

    first = federation.send("POST", NOTIFICATIONS, body, signer=None, headers=headers)
    second = federation.send("POST", NOTIFICATIONS, body, signer=None, headers=headers)

    assert first.status_code == 200
    assert second.status_code == 401
    assert second.json()["error"] == "replayed"
    assert InboxEntry.objects.count() == 1


def test_signature_for_another_path_is_refused(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    body = _notification()
    headers = peer.sign("POST", "/federation/v1/withdrawals", body)
    response = federation.send("POST", NOTIFICATIONS, body, signer=None, headers=headers)
    _assert_refused(response, 401, "signature_invalid")


def test_sender_of_another_domain_than_the_signer_is_forbidden(
    federation: FederationClient, peer: FakePeer, alice: User
) -> None:
    body = _notification(sender="mallory@other.test")
    response = _post(federation, body, signer=peer)
    _assert_refused(response, 403, "wrong_domain")
    assert "other.test" in response.json()["detail"]


# --- remote keys: discovery at the outbound client boundary ---------------------------------


def test_rotated_peer_key_is_picked_up_with_one_refetch(
    federation: FederationClient, peer: FakePeer, alice: User
) -> None:
    assert _post(federation, _notification(), signer=peer).status_code == 200
    assert peer.discovery_calls == 1

    # The peer rotates; our cached document does not know the new key yet.
    peer.private_key = Ed25519PrivateKey.generate()
    peer.key_id = "peer.test#k2"
    assert _post(federation, _notification(), signer=peer).status_code == 200
    assert peer.discovery_calls == 2

    # The refreshed document is cached again.
    assert _post(federation, _notification(), signer=peer).status_code == 200
    assert peer.discovery_calls == 2


def test_a_key_that_fails_is_refetched_at_most_once(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    assert _post(federation, _notification(), signer=peer).status_code == 200
    before = peer.discovery_calls

    unknown = _post(federation, _notification(), signer=peer, key_id="peer.test#nope")
    assert unknown.status_code == 401
    assert peer.discovery_calls == before + 1

    # Forged requests cannot make us fetch the peer's keys again and again:
    # one forced refetch per peer domain a minute. The answer is the same either way.
    wrong = _post(federation, _notification(), signer=peer, private_key=Ed25519PrivateKey.generate())
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "signature_invalid"
    assert peer.discovery_calls == before + 1

    caches["local"].delete("pm-key-refetch:peer.test")  # a minute later
    wrong = _post(federation, _notification(), signer=peer, private_key=Ed25519PrivateKey.generate())
    assert wrong.status_code == 401
    assert peer.discovery_calls == before + 2


def test_peer_whose_discovery_fails_is_refused_without_a_500(
    federation: FederationClient, peer: FakePeer, alice: User
) -> None:
    peer.go_down()
    response = _post(federation, _notification(), signer=peer)
    # Unknown for now, not a wrong key: the sender tries again after Retry-After.
    _assert_refused(response, 503, "keys_unavailable")
    assert "peer.test" in response.json()["detail"]
    assert int(response["Retry-After"]) >= 1


def test_unknown_domain_key_is_refused(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    # A signer domain that is not a Pushmail domain at all (legacy: the name does not resolve).
    response = _post(federation, _notification(sender="x@nowhere.example"), signer=peer, key_id="nowhere.example#k1")
    _assert_refused(response, 401, "unknown_key")


# --- keys of hosted domains -------------------------------------------------------------------


def test_request_signed_by_a_hosted_domain_verifies_with_its_key_and_an_old_key_during_grace(
    alice: User, other_peer: FakePeer
) -> None:
    from django.test import RequestFactory

    from federation.signatures import verify_request

    old = current_key("alpha.test")
    rotate_key(domain=alice.domain)
    factory = RequestFactory()

    def signed_get(key) -> object:  # type: ignore[no-untyped-def]
        headers = signatures.sign(
            method="GET",
            url=f"http://{TEST_HOST}/federation/v1/messages/x/body",
            headers={},
            body=None,
            key_id=key.key_id,
            private_key=private_key_of(key),
        )
        return factory.get("/federation/v1/messages/x/body", headers=headers)

    assert verify_request(signed_get(current_key("alpha.test")), b"").domain == "alpha.test"
    assert verify_request(signed_get(old), b"").key_id == old.key_id
    assert discovery.discover("alpha.test").local  # type: ignore[union-attr]


def test_sign_as_uses_the_current_key_of_the_domain(alice: User) -> None:
    headers = signatures.sign_as(
        "alpha.test", method="POST", url="http://peer.test:9000/federation/v1/notifications", headers={}, body=b"{}"
    )
    assert f'keyid="{current_key("alpha.test").key_id}"' in headers["Signature-Input"]
    assert not RemoteMessage.objects.exists()
