"""Correspondents' keys, pinned on first use: looked up here, at their Pushmail instance (signed), or in their WKD.

Keys are made by GnuPG; the correspondent's instance is a fake peer at the HTTP client boundary that
signs its key document with its own federation key, as docs/protocol.md §14 says.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from rest_framework.test import APIClient

from accounts.models import User
from encryption import openpgp
from encryption.models import PinnedKey
from encryption.services import store_key
from federation import http
from federation.payloads import canonical_json
from tests.conftest import LOCAL, FakeNetwork, FakePeer, api_as, json_response
from tests.factories import MailboxFactory
from tests.gnupg import GnuPG
from tests.unit.test_encryption_keys import PASSPHRASE

pytestmark = pytest.mark.skipif(shutil.which("gpg") is None, reason="needs GnuPG (Debian's gnupg)")

CAROL = "carol@peer.test"
DAVE = "dave@legacy.test"


def _public(home: GnuPG, address: str) -> bytes:
    return home.run("--export", address)


@pytest.fixture(scope="module")
def gpg_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, bytes]]:
    base = tmp_path_factory.mktemp("pinning")
    homes = {name: GnuPG(base / name) for name in ("carol1", "carol2", "dave", "bob")}
    homes["carol1"].make_key(f"Carol <{CAROL}>", passphrase=PASSPHRASE)
    homes["carol2"].make_key(f"Carol (new) <{CAROL}>", passphrase=PASSPHRASE)
    homes["dave"].make_key(f"Dave <{DAVE}>", passphrase=PASSPHRASE)
    homes["bob"].make_key(f"Bob <bob@{LOCAL}>", passphrase=PASSPHRASE)
    made = {
        "carol1": _public(homes["carol1"], CAROL),
        "carol2": _public(homes["carol2"], CAROL),
        "dave": _public(homes["dave"], DAVE),
        "bob_secret": homes["bob"].export_secret(f"bob@{LOCAL}", passphrase=PASSPHRASE).encode(),
    }
    yield made
    for home in homes.values():
        home.close()


def _fingerprint(key: bytes) -> str:
    return openpgp.split_key(openpgp.read_packets(key)).material.fingerprint


def _publish(peer: FakePeer, address: str, *keys: bytes, tamper: bool = False) -> None:
    """The peer answers its key endpoint with a document signed by its federation key (§14.2)."""

    def answer(call: Any) -> Any:
        document: dict[str, Any] = {
            "type": "openpgp-keys",
            "version": 1,
            "address": address,
            "issued": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "key_id": peer.key_id,
            "keys": [
                {
                    "fingerprint": _fingerprint(key),
                    "key": base64.b64encode(key).decode(),
                    "revoked": False,
                    "created": "2026-11-26T10:00:00Z",
                }
                for key in keys
            ],
        }
        document["signature"] = base64.b64encode(peer.private_key.sign(canonical_json(document))).decode()
        if tamper:
            document["keys"][0]["fingerprint"] = "0" * 40
        return json_response(200, document)

    peer.on("GET", f"/federation/v1/keys/{address}", answer)


@pytest.fixture
def ann(local_domain: Any) -> User:
    return MailboxFactory(domain=local_domain, local_part="ann")


@pytest.fixture
def api(ann: User) -> APIClient:
    return api_as(ann)


def test_first_use_pins_and_a_new_key_is_held_back_with_a_warning(
    api: APIClient, net: FakeNetwork, peer: FakePeer, gpg_keys: dict[str, bytes]
) -> None:
    url = f"/api/v1/encryption/correspondents/{CAROL}"
    _publish(peer, CAROL, gpg_keys["carol1"])
    first = api.get(url)
    assert first.status_code == 200, first.content
    assert first.json()["fingerprint"] == _fingerprint(gpg_keys["carol1"])
    assert first.json()["source"] == "federation"
    assert first.json()["changed"] is False

    _publish(peer, CAROL, gpg_keys["carol2"])
    later = api.get(url).json()
    assert later["changed"] is True
    assert later["fingerprint"] == _fingerprint(gpg_keys["carol1"])  # still the pinned key
    assert later["offered_fingerprint"] == _fingerprint(gpg_keys["carol2"])

    refused = api.post(f"{url}/accept", {"fingerprint": _fingerprint(gpg_keys["carol1"])}, format="json")
    assert refused.status_code == 409
    accepted = api.post(f"{url}/accept", {"fingerprint": _fingerprint(gpg_keys["carol2"])}, format="json")
    assert accepted.status_code == 200
    assert accepted.json()["fingerprint"] == _fingerprint(gpg_keys["carol2"])
    assert accepted.json()["changed"] is False


def test_the_settings_page_warns_of_a_changed_key(
    net: FakeNetwork, peer: FakePeer, gpg_keys: dict[str, bytes], ann: User, client: Any
) -> None:
    client.force_login(ann)
    _publish(peer, CAROL, gpg_keys["carol1"])
    assert client.post("/settings/encryption/correspondents/", {"address": CAROL}).status_code == 302
    _publish(peer, CAROL, gpg_keys["carol2"])
    client.post("/settings/encryption/correspondents/", {"address": CAROL})
    page = " ".join(client.get("/settings/encryption/").content.decode().split())
    assert f"The key of {CAROL} has changed." in page
    assert _fingerprint(gpg_keys["carol2"]) in page


def test_a_document_that_does_not_verify_pins_nothing(
    api: APIClient, net: FakeNetwork, peer: FakePeer, gpg_keys: dict[str, bytes]
) -> None:
    _publish(peer, CAROL, gpg_keys["carol1"], tamper=True)
    answer = api.get(f"/api/v1/encryption/correspondents/{CAROL}")
    assert answer.status_code == 503
    assert "signature does not verify" in answer.json()["detail"]
    assert not PinnedKey.objects.exists()


def test_a_key_for_another_address_is_not_pinned(
    api: APIClient, net: FakeNetwork, peer: FakePeer, gpg_keys: dict[str, bytes]
) -> None:
    _publish(peer, CAROL, gpg_keys["dave"])
    answer = api.get(f"/api/v1/encryption/correspondents/{CAROL}")
    assert answer.status_code == 404
    assert answer.json()["error"] == "no_key"
    assert not PinnedKey.objects.exists()


def test_a_correspondent_here_is_pinned_from_this_instance(
    api: APIClient, net: FakeNetwork, gpg_keys: dict[str, bytes], local_domain: Any
) -> None:
    bob = MailboxFactory(domain=local_domain, local_part="bob")
    store_key(user=bob, uploaded=gpg_keys["bob_secret"].decode())
    answer = api.get(f"/api/v1/encryption/correspondents/bob@{LOCAL}")
    assert answer.status_code == 200
    assert answer.json()["source"] == "local"
    assert net.calls == []


def test_a_legacy_domain_is_looked_up_in_its_web_key_directory(
    api: APIClient, net: FakeNetwork, gpg_keys: dict[str, bytes]
) -> None:
    legacy = net.add(FakePeer("legacy.test", "https://legacy.test"))
    legacy.reply("GET", "/.well-known/pushmail", 404, {"error": "not_found", "detail": "no"})
    advanced = net.add(FakePeer("openpgpkey.legacy.test", "https://openpgpkey.legacy.test"))
    advanced.reply("GET", "/.well-known/openpgpkey/legacy.test/hu/" + openpgp.wkd_hash("dave"), 404, {})
    net.resolvable.add("legacy.test")
    legacy.on(
        "GET",
        "/.well-known/openpgpkey/hu/" + openpgp.wkd_hash("dave"),
        lambda call: http.Response(status=200, headers={}, content=gpg_keys["dave"], url=call.url),
    )
    answer = api.get(f"/api/v1/encryption/correspondents/{DAVE}")
    assert answer.status_code == 200, answer.content
    assert answer.json()["source"] == "wkd"
    assert answer.json()["fingerprint"] == _fingerprint(gpg_keys["dave"])
    assert [c.url.split("?")[0] for c in legacy.calls if "openpgpkey" in c.url] == [
        "https://legacy.test/.well-known/openpgpkey/hu/" + openpgp.wkd_hash("dave")
    ]


def test_a_bad_address_is_a_400(api: APIClient) -> None:
    answer = api.get("/api/v1/encryption/correspondents/not-an-address")
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_address"
