"""Each row of docs/protocol.md §3.7, whatever the state of the key cache.

Signatures here are built by hand as §3.2 describes (signature base, raw
Ed25519), so a request can be signed validly over a structure the verifier
must refuse. A structurally invalid signature gets the same code on first
contact and right after a forced key refetch, and it makes no discovery fetch.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from accounts.models import User
from mailbox.models import InboxEntry
from tests.conftest import NOTIFICATIONS, TEST_HOST, FakeNetwork, FakePeer, FederationClient, body_path
from tests.factories import PeerMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]

COVERED = ("@method", "@authority", "@path", "@query", "content-digest")


def _digest(body: bytes, algorithm: str = "sha-256") -> str:
    hasher = hashlib.sha256 if algorithm == "sha-256" else hashlib.sha512
    return f"{algorithm}=:" + base64.b64encode(hasher(body).digest()).decode() + ":"


def _sf(value: Any) -> str:
    return str(value) if isinstance(value, int) else json.dumps(value)


@dataclass
class Signed:
    """How to sign one request by hand; each field can be bent to make one row of §3.7."""

    method: str = "POST"
    path: str = NOTIFICATIONS
    components: tuple[str, ...] = COVERED
    params: dict[str, Any] = field(default_factory=dict)
    label: str = "pm"
    digest: str | None = None  # the Content-Digest header; default: the body's sha-256
    signature: bytes | None = None  # replaces the computed signature
    extra_headers: dict[str, str] = field(default_factory=dict)
    drop: tuple[str, ...] = ()  # headers left out after signing
    signature_input: str | None = None  # replaces the Signature-Input header after signing
    digest_after_signing: str | None = None  # replaces the Content-Digest header after signing

    def headers(self, peer: FakePeer, body: bytes | None) -> dict[str, str]:
        headers: dict[str, str] = dict(self.extra_headers)
        if body:
            headers["Content-Digest"] = self.digest or _digest(body)
        params = {
            "created": int(time.time()),
            "keyid": peer.key_id,
            "alg": "ed25519",
            "nonce": secrets.token_urlsafe(16),
            "tag": "pushmail",
        }
        params.update(self.params)
        values = {"@method": self.method, "@authority": TEST_HOST, "@path": self.path, "@query": "?"}
        values.update({name.lower(): value for name, value in headers.items()})
        inner = "(" + " ".join(f'"{c}"' for c in self.components) + ")"
        inner += "".join(f";{name}={_sf(value)}" for name, value in params.items() if value is not None)
        lines = [f'"{c}": {values.get(c, "")}' for c in self.components] + [f'"@signature-params": {inner}']
        signature = self.signature or peer.private_key.sign("\n".join(lines).encode())
        headers["Signature-Input"] = f"{self.label}={inner}"
        headers["Signature"] = f"{self.label}=:" + base64.b64encode(signature).decode() + ":"
        if self.digest_after_signing is not None:
            headers["Content-Digest"] = self.digest_after_signing
        if self.signature_input is not None:
            headers["Signature-Input"] = self.signature_input
        for name in self.drop:
            headers.pop(name, None)
        return headers


def _body() -> bytes:
    return json.dumps(PeerMessageFactory().payload()).encode()


def _send(federation: FederationClient, peer: FakePeer, how: Signed, body: bytes | None = None) -> Any:
    if body is None and how.method == "POST":
        body = _body()
    return federation.send(how.method, how.path, body, signer=None, headers=how.headers(peer, body))


def _changed_digest(how: Signed) -> Signed:
    how.digest = _digest(b"another body")
    return how


# (what the verifier must answer, how the request is signed) for every structural row of §3.7.
Case = tuple[str, Callable[[], Signed]]
STRUCTURAL: dict[str, Case] = {
    "no Signature header": ("signature_missing", lambda: Signed(drop=("Signature",))),
    "no Signature-Input header": ("signature_missing", lambda: Signed(drop=("Signature-Input",))),
    "Signature-Input does not parse": ("signature_invalid", lambda: Signed(signature_input="pm=(((")),
    "no pm label": ("signature_invalid", lambda: Signed(label="sig1")),
    "no tag": ("signature_invalid", lambda: Signed(params={"tag": None})),
    "wrong tag": ("signature_invalid", lambda: Signed(params={"tag": "other"})),
    "created not an integer": ("signature_invalid", lambda: Signed(params={"created": str(int(time.time()))})),
    "no created": ("signature_invalid", lambda: Signed(params={"created": None})),
    "created 6 minutes ahead": ("signature_expired", lambda: Signed(params={"created": int(time.time()) + 360})),
    "created 6 minutes ago": ("signature_expired", lambda: Signed(params={"created": int(time.time()) - 360})),
    "expires 10 s ago": ("signature_expired", lambda: Signed(params={"expires": int(time.time()) - 10})),
    "expires 400 s ago": ("signature_expired", lambda: Signed(params={"expires": int(time.time()) - 400})),
    "alg not ed25519": ("signature_invalid", lambda: Signed(params={"alg": "rsa-pss-sha512"})),
    "no keyid": ("signature_invalid", lambda: Signed(params={"keyid": None})),
    "unknown parameter": ("signature_invalid", lambda: Signed(params={"purpose": "x"})),
    "covered header not sent": ("signature_invalid", lambda: Signed(components=(*COVERED, "x-trace"))),
    "signature not 64 bytes": ("signature_invalid", lambda: Signed(signature=b"\x01" * 63)),
    "@path not covered": ("signature_invalid", lambda: Signed(components=("@method", "@authority", "@query"))),
    "@query not covered": ("signature_invalid", lambda: Signed(components=COVERED[:3] + COVERED[4:])),
    "content-digest not covered": ("digest_mismatch", lambda: Signed(components=COVERED[:4])),
    "Content-Digest altered": ("digest_mismatch", lambda: _changed_digest(Signed())),
    "Content-Digest altered after signing": (
        "digest_mismatch",
        lambda: Signed(digest_after_signing=_digest(b"another body")),
    ),
    "Content-Digest covered but not sent": ("digest_mismatch", lambda: Signed(drop=("Content-Digest",))),
    "Content-Digest with another algorithm": (
        "digest_mismatch",
        lambda: Signed(digest="md5=:" + base64.b64encode(b"0" * 16).decode() + ":"),
    ),
    "GET with an uncovered Content-Digest": (
        "digest_mismatch",
        lambda: Signed(
            method="GET",
            path=body_path("5d0c7e2a-1b3f-4c8d-9a6e-2f4b8c1d0e37"),
            components=COVERED[:4],
            extra_headers={"Content-Digest": _digest(b"")},
        ),
    ),
    "no nonce": ("nonce_missing", lambda: Signed(params={"nonce": None})),
    "keyid not domain#suffix": ("unknown_key", lambda: Signed(params={"keyid": "peer.test"})),
    "keyid of an overlong domain": ("unknown_key", lambda: Signed(params={"keyid": "a" * 300 + ".test#k1"})),
    "keyid of something not a domain": ("unknown_key", lambda: Signed(params={"keyid": "peer.test/x?y#k1"})),
}


def _force_a_refetch(federation: FederationClient, peer: FakePeer) -> None:
    """Verify once (the document is cached), then make the verifier refetch it for an unknown key id."""
    assert _send(federation, peer, Signed()).status_code == 200
    unknown = _send(federation, peer, Signed(params={"keyid": "peer.test#rotated-away"}))
    assert unknown.json()["error"] == "unknown_key"
    assert peer.discovery_calls == 2  # the first lookup and the forced refetch


@pytest.mark.parametrize("after_refetch", [False, True], ids=["first contact", "right after a forced refetch"])
@pytest.mark.parametrize("case", list(STRUCTURAL), ids=list(STRUCTURAL))
def test_a_structural_problem_gets_its_code_and_no_key_lookup(
    federation: FederationClient, peer: FakePeer, net: FakeNetwork, alice: User, case: str, after_refetch: bool
) -> None:
    code, how = STRUCTURAL[case]
    if after_refetch:
        _force_a_refetch(federation, peer)
    entries = InboxEntry.objects.count()
    outbound = len(net.calls)

    response = _send(federation, peer, how())

    assert (response.status_code, response.json()["error"]) == (401, code), response.content
    assert response.json()["detail"]
    assert len(net.calls) == outbound, "a request no key could make valid caused a discovery fetch"
    assert InboxEntry.objects.count() == entries


@pytest.mark.parametrize("after_refetch", [False, True], ids=["refetch allowed", "right after a forced refetch"])
def test_a_known_key_that_does_not_verify_is_signature_invalid(
    federation: FederationClient, peer: FakePeer, alice: User, after_refetch: bool
) -> None:
    if after_refetch:
        _force_a_refetch(federation, peer)
    else:
        assert _send(federation, peer, Signed()).status_code == 200

    forged = _send(federation, peer, Signed(signature=Ed25519PrivateKey.generate().sign(b"x")))

    assert (forged.status_code, forged.json()["error"]) == (401, "signature_invalid")
    # Only a well-formed base that fails with the cached key may refetch, once a minute.
    assert peer.discovery_calls == 2


@pytest.mark.parametrize("after_refetch", [False, True], ids=["refetch allowed", "right after a forced refetch"])
def test_a_key_id_the_peer_does_not_list_is_unknown_key(
    federation: FederationClient, peer: FakePeer, alice: User, after_refetch: bool
) -> None:
    if after_refetch:
        _force_a_refetch(federation, peer)
    response = _send(federation, peer, Signed(params={"keyid": "peer.test#never"}))
    assert (response.status_code, response.json()["error"]) == (401, "unknown_key")


def test_a_domain_without_an_instance_is_unknown_key(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    response = _send(federation, peer, Signed(params={"keyid": "nowhere.example#k1"}))
    assert (response.status_code, response.json()["error"]) == (401, "unknown_key")


def test_a_replay_is_refused_after_the_signature_verified(
    federation: FederationClient, peer: FakePeer, alice: User
) -> None:
    body = _body()
    headers = Signed().headers(peer, body)
    assert federation.send("POST", NOTIFICATIONS, body, signer=None, headers=headers).status_code == 200
    again = federation.send("POST", NOTIFICATIONS, body, signer=None, headers=headers)
    assert (again.status_code, again.json()["error"]) == (401, "replayed")


def test_the_hand_built_signature_is_accepted(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    # The cases above differ from this request in one respect each.
    assert _send(federation, peer, Signed()).status_code == 200
    assert InboxEntry.objects.filter(owner=alice).exists()


# --- `expires` (§3.5): clock skew only, not the `created` window -------------------------------


def _with_expires(federation: FederationClient, peer: FakePeer, offset: timedelta) -> Any:
    expires = int((datetime.now(UTC) + offset).timestamp())
    return _send(federation, peer, Signed(params={"expires": expires}))


@pytest.mark.parametrize("seconds_ago", [10, 60, 299, 400])
def test_an_expires_in_the_past_is_refused(
    federation: FederationClient, peer: FakePeer, alice: User, seconds_ago: int
) -> None:
    response = _with_expires(federation, peer, timedelta(seconds=-seconds_ago))
    assert (response.status_code, response.json()["error"]) == (401, "signature_expired"), response.content
    assert not InboxEntry.objects.exists()


@pytest.mark.parametrize("offset", [timedelta(seconds=-2), timedelta(seconds=60)], ids=["within the skew", "ahead"])
def test_an_expires_not_yet_past_or_within_the_skew_is_accepted(
    federation: FederationClient, peer: FakePeer, alice: User, offset: timedelta
) -> None:
    response = _with_expires(federation, peer, offset)
    assert response.status_code == 200, response.content
