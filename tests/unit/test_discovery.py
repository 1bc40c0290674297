"""Finding a domain's instance (federation/discovery.py) and the document this instance serves."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from accounts.models import User
from federation import discovery
from federation.discovery import DiscoveryError, discover
from tests.conftest import PEER_BASE, FakeNetwork, FakePeer, json_response

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]


def test_configured_peer_is_discovered_with_its_keys_and_limits(peer: FakePeer) -> None:
    instance = discover("peer.test")

    assert instance is not None
    assert instance.api_base == PEER_BASE + "/federation/v1/"
    assert instance.url("notifications") == PEER_BASE + "/federation/v1/notifications"
    assert instance.keys == {peer.key_id: peer.public_b64}
    assert (instance.max_notification_bytes, instance.max_recipients) == (262144, 1000)
    assert not instance.local
    assert [c.url for c in peer.calls] == [PEER_BASE + "/.well-known/pushmail"]


def test_domain_names_are_case_insensitive(peer: FakePeer) -> None:
    assert discover("PEER.test") is not None


def test_unresolvable_domain_is_legacy_without_any_http(net: FakeNetwork) -> None:
    assert discover("legacy.example") is None
    assert net.calls == []


def test_resolvable_domain_without_a_pushmail_document_is_legacy(net: FakeNetwork) -> None:
    # A real mail domain that runs no Pushmail: its https site answers 404.
    net.resolvable.add("mail.example")
    site = net.add(FakePeer("mail.example", "https://mail.example"))
    site.reply("GET", "/.well-known/pushmail", 404, {"error": "not_found"})

    assert discover("mail.example") is None
    assert [c.url for c in site.calls] == ["https://mail.example/.well-known/pushmail"]


def test_non_peer_domains_are_asked_over_https(net: FakeNetwork) -> None:
    net.resolvable.add("remote.example")
    remote = net.add(FakePeer("remote.example", "https://remote.example"))

    instance = discover("remote.example")

    assert instance is not None and instance.api_base == "https://remote.example/federation/v1/"
    assert remote.calls[0].url == "https://remote.example/.well-known/pushmail"


@pytest.mark.parametrize("how", ["refused", "503", "429"])
def test_configured_peer_that_does_not_answer_is_a_discovery_error(peer: FakePeer, how: str) -> None:
    if how == "refused":
        peer.go_down()
    else:
        peer.reply("GET", "/.well-known/pushmail", int(how), {"error": "busy"})

    with pytest.raises(DiscoveryError):
        discover("peer.test")


def test_discovery_error_is_not_cached_as_legacy(peer: FakePeer) -> None:
    peer.go_down()
    with pytest.raises(DiscoveryError):
        discover("peer.test")
    peer.come_back()
    assert discover("peer.test") is not None


def test_results_are_cached(peer: FakePeer, net: FakeNetwork) -> None:
    first = discover("peer.test")
    second = discover("peer.test")
    assert first == second
    assert peer.discovery_calls == 1

    assert discover("legacy.example") is None
    assert discover("legacy.example") is None
    assert len(net.calls) == 1


def test_refresh_asks_again(peer: FakePeer) -> None:
    discover("peer.test")
    discover("peer.test", refresh=True)
    assert peer.discovery_calls == 2


def _document(peer: FakePeer, **changes: Any) -> dict[str, Any]:
    doc = peer.document()
    for key, value in changes.items():
        if value is ...:
            doc.pop(key)
        else:
            doc[key] = value
    return doc


@pytest.mark.parametrize(
    "changes",
    [
        {"protocol": "activitypub"},
        {"protocol": ...},
        {"domains": ["someone-else.test"]},
        {"domains": ...},
        {"version": 2, "versions": [2]},
        {"api": "ftp://peer.test/federation/v1/"},
        {"api": ...},
    ],
    ids=["wrong-protocol", "no-protocol", "other-domain", "no-domains", "future-version", "ftp-api", "no-api"],
)
def test_invalid_document_means_legacy(peer: FakePeer, changes: dict[str, Any]) -> None:
    peer.document_override = _document(peer, **changes)
    assert discover("peer.test") is None


@pytest.mark.parametrize("content", [b"not json", b"[1, 2]", b"null"])
def test_unreadable_document_means_legacy(peer: FakePeer, content: bytes) -> None:
    from federation import http

    peer.on("GET", "/.well-known/pushmail", lambda call: http.Response(status=200, headers={}, content=content, url=""))
    assert discover("peer.test") is None


def test_keys_that_are_not_usable_ed25519_keys_are_ignored(peer: FakePeer) -> None:
    good = peer.key_entry()
    peer.document_override = _document(
        peer,
        keys=[
            good,
            {**good, "id": "peer.test#rsa", "algorithm": "rsa-v1_5-sha256"},
            {**good, "id": "peer.test#short", "public_key": "AAAA"},
            {**good, "id": "peer.test#garbage", "public_key": "%%%"},
            {"id": "peer.test#nokey", "domain": "peer.test", "algorithm": "ed25519"},
            "not an object",
        ],
    )
    instance = discover("peer.test")
    assert instance is not None
    assert list(instance.keys) == [peer.key_id]


def test_document_limits_are_read(peer: FakePeer) -> None:
    peer.document_override = _document(peer, limits={"max_notification_bytes": 1000, "max_recipients": 5})
    instance = discover("peer.test")
    assert instance is not None and (instance.max_notification_bytes, instance.max_recipients) == (1000, 5)


def test_hosted_domain_is_local_and_needs_no_http(alice: User, net: FakeNetwork) -> None:
    instance = discover("alpha.test")
    assert instance is not None and instance.local
    assert list(instance.keys) == list(alice.domain.signing_keys.values_list("key_id", flat=True))
    assert net.calls == []


def test_well_known_document_describes_this_instance(alice: User, settings: Any) -> None:
    settings.PUSHMAIL_BASE_URL = "https://mail.alpha.test"
    response = Client().get("/.well-known/pushmail")

    assert response.status_code == 200
    doc = response.json()
    assert doc["protocol"] == "pushmail" and doc["version"] == 1
    assert doc["domains"] == ["alpha.test"]
    assert doc["api"] == "https://mail.alpha.test/federation/v1/"
    key = alice.domain.signing_keys.get()
    assert doc["keys"] == [
        {
            "id": key.key_id,
            "domain": "alpha.test",
            "algorithm": "ed25519",
            "public_key": key.public_key,
            "created": key.created_at.isoformat().replace("+00:00", "Z"),
            "expires": None,
        }
    ]
    assert doc["limits"] == {
        "max_notification_bytes": settings.PUSHMAIL_MAX_NOTIFICATION_BYTES,
        "max_recipients": settings.PUSHMAIL_MAX_RECIPIENTS,
        "max_batch_notifications": settings.PUSHMAIL_MAX_BATCH_NOTIFICATIONS,
        "max_batch_bytes": settings.PUSHMAIL_MAX_BATCH_BYTES,
    }
    assert "private" not in response.content.decode().lower()
    assert key.private_key not in response.content.decode()


def test_own_document_is_accepted_by_our_own_parser(alice: User, net: FakeNetwork, settings: Any) -> None:
    # What we publish must be what another instance running this code can read.
    settings.PUSHMAIL_BASE_URL = "https://alpha.example"
    net.resolvable.add("alpha.example")
    mirror = net.add(FakePeer("alpha.example", "https://alpha.example"))
    own = discovery.own_document()
    mirror.on("GET", "/.well-known/pushmail", lambda call: json_response(200, {**own, "domains": ["alpha.example"]}))

    instance = discover("alpha.example")
    assert instance is not None
    assert instance.api_base == "https://alpha.example/federation/v1/"
