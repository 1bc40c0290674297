"""Bad input at the server-to-server endpoints: always a 4xx JSON error naming the problem, never
a 500, and nothing stored half. Per-origin rate limits and blocks."""

from __future__ import annotations

import json
import types
from typing import Any

import pytest
from django.test import Client

from accounts.models import User
from mailbox.models import InboxEntry, RemoteMessage
from reputation.models import OriginPolicy
from tests.conftest import NOTIFICATIONS, WITHDRAWALS, FakePeer, FederationClient, body_path
from tests.factories import PeerMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]


def _error(response: Any, status: int, code: str | None = None) -> str:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    data = response.json()
    assert isinstance(data["detail"], str) and data["detail"]
    if code:
        assert data["error"] == code, data
    return data["detail"]


def _nothing_stored() -> None:
    assert not RemoteMessage.objects.exists()
    assert not InboxEntry.objects.exists()


def test_malformed_json_is_400(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    response = federation.send("POST", NOTIFICATIONS, b'{"type": "notification", ', signer=peer)
    assert "not valid JSON" in _error(response, 400, "invalid_payload")
    _nothing_stored()


def test_body_that_is_not_utf8_is_400(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    response = federation.send("POST", NOTIFICATIONS, b'{"a": "\xff\xfe"}', signer=peer)
    _error(response, 400, "invalid_payload")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_wrong_content_type_is_refused(
    federation: FederationClient, peer: FakePeer, alice: User, content_type: str
) -> None:
    body = json.dumps(PeerMessageFactory().payload()).encode()
    response = federation.send(
        "POST", NOTIFICATIONS, body, signer=peer, content_type=content_type, headers={"Content-Type": content_type}
    )
    assert response.status_code in (400, 415)
    assert "Content-Type" in _error(response, response.status_code)
    _nothing_stored()


@pytest.mark.parametrize(
    "field", ["type", "version", "id", "message_id", "sender", "recipients", "subject", "date", "size", "digest"]
)
def test_missing_field_is_named(federation: FederationClient, peer: FakePeer, alice: User, field: str) -> None:
    response = federation.notify(peer, PeerMessageFactory().payload(**{field: ...}))
    assert _error(response, 400, "invalid_payload").startswith(field)
    _nothing_stored()


def test_one_bad_recipient_stores_nothing_for_any(
    federation: FederationClient, peer: FakePeer, alice: User, bob: User
) -> None:
    payload = PeerMessageFactory().payload(recipients=["alice@alpha.test", "bob@alpha.test", "bad\r\n@alpha.test"])
    response = federation.notify(peer, payload)
    assert _error(response, 400, "invalid_payload").startswith("recipients")
    _nothing_stored()


def test_too_many_recipients_is_refused(
    federation: FederationClient, peer: FakePeer, alice: User, settings: Any
) -> None:
    settings.PUSHMAIL_MAX_RECIPIENTS = 3
    payload = PeerMessageFactory().payload(recipients=[f"u{i}@alpha.test" for i in range(4)])
    assert "exceeds the limit of 3" in _error(federation.notify(peer, payload), 400, "invalid_payload")


def test_wrong_domain_stores_nothing(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    response = federation.notify(peer, PeerMessageFactory(sender="mallory@other.test").payload())
    _error(response, 403, "wrong_domain")
    _nothing_stored()


@pytest.mark.parametrize("signed", [True, False])
def test_oversize_body_is_413(
    federation: FederationClient, peer: FakePeer, alice: User, settings: Any, signed: bool
) -> None:
    settings.PUSHMAIL_MAX_NOTIFICATION_BYTES = 2000
    payload = PeerMessageFactory().payload(references=["<" + "x" * 390 + "@peer.test>"] * 6)
    body = json.dumps(payload).encode()
    assert len(body) > 2000

    response = federation.send("POST", NOTIFICATIONS, body, signer=peer if signed else None)

    assert "2000" in _error(response, 413, "too_large")
    _nothing_stored()


def test_body_on_a_fetch_is_refused(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    response = federation.send("GET", body_path("0b7c3a5e-2f1d-4e6a-9c8b-7d6e5f4a3b2c"), b"{}", signer=peer)
    _error(response, 413, "too_large")


@pytest.mark.parametrize("global_id", ["0b7c3a5e-2f1d-4e6a-9c8b-7d6e5f4a3b2c", "not-a-uuid", "..%2F..%2Fetc"])
def test_unknown_message_ids_are_404(federation: FederationClient, peer: FakePeer, alice: User, global_id: str) -> None:
    _error(federation.fetch(peer, global_id), 404, "not_found")


def test_withdrawal_of_unknown_id_is_404(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    _error(federation.withdraw(peer, "0b7c3a5e-2f1d-4e6a-9c8b-7d6e5f4a3b2c", "carol@peer.test"), 404, "unknown_message")


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"type": "withdrawal", "version": 1, "id": "nope", "sender": "carol@peer.test"}, "id"),
        ({"type": "withdrawal", "version": 1, "id": "0b7c3a5e-2f1d-4e6a-9c8b-7d6e5f4a3b2c"}, "sender"),
        ({"type": "notification", "version": 1}, "type"),
        ([], "body"),
    ],
)
def test_bad_withdrawal_is_400(
    federation: FederationClient, peer: FakePeer, alice: User, payload: Any, field: str
) -> None:
    response = federation.post_json(WITHDRAWALS, payload, signer=peer)
    assert _error(response, 400, "invalid_payload").startswith(field)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", NOTIFICATIONS, "POST"),
        ("PUT", NOTIFICATIONS, "POST"),
        ("DELETE", WITHDRAWALS, "POST"),
        ("GET", WITHDRAWALS, "POST"),
        ("POST", body_path("0b7c3a5e-2f1d-4e6a-9c8b-7d6e5f4a3b2c"), "GET"),
        ("POST", "/.well-known/pushmail", "GET"),
        ("DELETE", "/.well-known/pushmail", "GET"),
    ],
)
def test_wrong_methods_are_405_json(alice: User, method: str, path: str, allowed: str) -> None:
    response = Client().generic(method, path)
    assert allowed in _error(response, 405, "method_not_allowed")
    assert allowed in response["Allow"]


def test_unknown_federation_path_is_404_json(alice: User) -> None:
    _error(Client().post("/federation/v1/inbox", b"{}", content_type="application/json"), 404, "not_found")
    _error(Client().get("/federation/v2/notifications"), 404, "not_found")


def test_no_traceback_reaches_the_client(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    for body in (b"null", b"[]", b"1e999999", b'{"type":"notification","version":1,"recipients":[[]]}'):
        response = federation.send("POST", NOTIFICATIONS, body, signer=peer)
        assert 400 <= response.status_code < 500, (body, response.content)
        assert b"Traceback" not in response.content


# --- per-origin limits ------------------------------------------------------------------------------------


@pytest.fixture
def frozen_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the rate window from rolling over mid-test: 20 s into a minute."""
    import reputation.services

    monkeypatch.setattr(reputation.services, "time", types.SimpleNamespace(time=lambda: 1_800_000_000.0 + 20))


@pytest.mark.usefixtures("frozen_minute")
def test_origin_over_its_rate_gets_429_with_retry_after(
    federation: FederationClient, peer: FakePeer, other_peer: FakePeer, alice: User, settings: Any
) -> None:
    settings.PUSHMAIL_ORIGIN_RATE_PER_MINUTE = 2
    for _ in range(2):
        assert federation.notify(peer, PeerMessageFactory().payload()).status_code == 200

    over = PeerMessageFactory()
    response = federation.notify(peer, over.payload())

    assert "limit of 2" in _error(response, 429, "rate_limited")
    assert response["Retry-After"] == "41"  # what is left of the minute, plus one second
    assert not RemoteMessage.objects.filter(global_id=over.global_id).exists()
    # Another origin has its own budget.
    other = PeerMessageFactory(sender="erin@other.test")
    assert federation.notify(other_peer, other.payload()).status_code == 200


@pytest.mark.usefixtures("frozen_minute")
def test_origin_policy_rate_overrides_the_default(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    OriginPolicy.objects.create(domain="peer.test", rate_per_minute=1)
    assert federation.notify(peer, PeerMessageFactory().payload()).status_code == 200
    _error(federation.notify(peer, PeerMessageFactory().payload()), 429, "rate_limited")


def test_blocked_origin_is_403(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    OriginPolicy.objects.create(domain="peer.test", blocked=True, note="spam")
    response = federation.notify(peer, PeerMessageFactory().payload())
    assert "blocked" in _error(response, 403, "blocked")
    _nothing_stored()


def test_replay_is_refused_before_the_rate_is_counted(
    federation: FederationClient, peer: FakePeer, alice: User, settings: Any, frozen_minute: None
) -> None:
    settings.PUSHMAIL_ORIGIN_RATE_PER_MINUTE = 1
    body = json.dumps(PeerMessageFactory().payload()).encode()
    headers = peer.sign("POST", NOTIFICATIONS, body)
    assert federation.send("POST", NOTIFICATIONS, body, signer=None, headers=headers).status_code == 200
    _error(federation.send("POST", NOTIFICATIONS, body, signer=None, headers=headers), 401, "replayed")
