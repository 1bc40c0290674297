"""Discovery documents are HTTP-cacheable, and cached once for every process (docs/protocol.md §2.6).

Serving side: a strong ETag of the exact bytes, ``Cache-Control: public,
max-age=N``, ``304 Not Modified`` to a matching ``If-None-Match``. Fetching
side: a document one process fetched serves the others (the shared cache),
for as long as its ``max-age`` says; then the request is conditional and a
``304`` keeps the held document without parsing it again.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.cache import caches
from django.test import Client

from accounts.models import User
from federation import discovery, http
from federation.keys import rotate_key
from tests.conftest import NOTIFICATIONS, Call, FakePeer, FederationClient
from tests.factories import PeerMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]

WELL_KNOWN = discovery.WELL_KNOWN_PATH


def _etag_of(body: bytes) -> str:
    return '"sha256-' + base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode() + '"'


# --- serving ----------------------------------------------------------------------------------


def test_the_document_has_a_strong_etag_of_its_exact_bytes_and_a_max_age(alice: User) -> None:
    plain = Client().get(WELL_KNOWN)
    coded = Client().get(WELL_KNOWN, headers={"Accept-Encoding": "gzip"})

    assert plain.status_code == coded.status_code == 200
    assert "Content-Encoding" not in plain and coded["Content-Encoding"] == "gzip"
    assert plain["ETag"] == _etag_of(plain.content)  # strong: no W/
    assert coded["ETag"] == _etag_of(coded.content)
    assert plain["ETag"] != coded["ETag"]  # each coding is its own representation
    assert json.loads(gzip.decompress(coded.content)) == plain.json()
    for response in (plain, coded):
        assert response["Cache-Control"] == "public, max-age=3600"
        assert "Accept-Encoding" in response["Vary"]


def test_the_same_document_is_the_same_bytes_and_etag_every_time(alice: User) -> None:
    first = Client().get(WELL_KNOWN, headers={"Accept-Encoding": "gzip"})
    second = Client().get(WELL_KNOWN, headers={"Accept-Encoding": "gzip"})
    assert first.content == second.content and first["ETag"] == second["ETag"]


def test_max_age_is_a_setting(alice: User, settings: Any) -> None:
    settings.PUSHMAIL_DISCOVERY_MAX_AGE = 600
    assert Client().get(WELL_KNOWN)["Cache-Control"] == "public, max-age=600"


@pytest.mark.parametrize("coding", ["", "gzip"])
def test_a_matching_if_none_match_gets_304_without_a_body(alice: User, coding: str) -> None:
    headers = {"Accept-Encoding": coding} if coding else {}
    etag = Client().get(WELL_KNOWN, headers=headers)["ETag"]

    for asked in (etag, "W/" + etag, f'"other", {etag}', "*"):
        response = Client().get(WELL_KNOWN, headers={**headers, "If-None-Match": asked})
        assert response.status_code == 304, asked
        assert response.content == b""
        assert response["ETag"] == etag
        assert response["Cache-Control"] == "public, max-age=3600"

    assert Client().get(WELL_KNOWN, headers={**headers, "If-None-Match": '"other"'}).status_code == 200


def test_a_rotation_changes_the_etag_so_a_conditional_request_gets_the_new_key(alice: User) -> None:
    before = Client().get(WELL_KNOWN)
    new_key = rotate_key(domain=alice.domain)

    after = Client().get(WELL_KNOWN, headers={"If-None-Match": before["ETag"]})

    assert after.status_code == 200 and after["ETag"] != before["ETag"]
    assert new_key.key_id in {key["id"] for key in after.json()["keys"]}


def test_max_age_never_reaches_past_a_listed_keys_expiry(alice: User, settings: Any) -> None:
    settings.PUSHMAIL_KEY_GRACE = timedelta(minutes=2)
    rotate_key(domain=alice.domain)  # the old key is listed 2 more minutes

    max_age = int(Client().get(WELL_KNOWN)["Cache-Control"].rpartition("=")[2])

    assert 110 <= max_age <= 120


def test_the_304_and_its_headers_are_what_an_identical_document_gives_a_peer(alice: User) -> None:
    # The fetching side of this very instance accepts its own answers (ETag sent back as received).
    response = Client().get(WELL_KNOWN, headers={"Accept-Encoding": "gzip"})
    assert discovery._entity_tag(response["ETag"]) == response["ETag"]
    assert discovery.fresh_for({"cache-control": response["Cache-Control"]}) == 3600


# --- fetching ---------------------------------------------------------------------------------


class Cacheable:
    """The fake peer's discovery answered as a real instance does: ETag, max-age, 304."""

    def __init__(self, peer: FakePeer, max_age: int | None = 3600) -> None:
        self.peer = peer
        self.max_age = max_age
        self.not_modified = 0
        peer.on("GET", WELL_KNOWN, self.answer)

    def body(self) -> bytes:
        return json.dumps(self.peer.document()).encode()

    def answer(self, call: Call) -> http.Response:
        body = self.body()
        headers = {"content-type": "application/json", "etag": _etag_of(body)}
        if self.max_age is not None:
            headers["cache-control"] = f"public, max-age={self.max_age}"
        if call.headers.get("If-None-Match") == headers["etag"]:
            self.not_modified += 1
            return http.Response(status=304, headers=headers, content=b"", url=call.url)
        return http.Response(status=200, headers=headers, content=body, url=call.url)


@pytest.fixture
def cacheable(peer: FakePeer) -> Cacheable:
    return Cacheable(peer)


@pytest.fixture
def shared_cache() -> Iterator[None]:
    caches["default"].clear()
    yield
    caches["default"].clear()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Move the wall clock forward by some seconds."""
    offset = [0.0]
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + offset[0])

    def advance(seconds: float) -> None:
        offset[0] += seconds

    return advance


def _another_process() -> None:
    """What another web process or worker of this instance sees: none of this one's memory."""
    caches["local"].clear()


def _discovery_calls(peer: FakePeer) -> list[Call]:
    return peer.calls_to("GET", WELL_KNOWN)


@pytest.mark.usefixtures("shared_cache")
def test_a_document_one_process_fetched_serves_the_others_without_a_request(
    peer: FakePeer, cacheable: Cacheable
) -> None:
    first = discovery.discover("peer.test")  # a worker delivering
    _another_process()
    assert discovery.discover("peer.test") == first  # another worker
    _another_process()
    assert discovery.lookup("peer.test", budget=5) == first  # a web process verifying a signature

    assert len(_discovery_calls(peer)) == 1


@pytest.mark.usefixtures("shared_cache")
def test_after_max_age_the_request_is_conditional_and_a_304_keeps_the_document(
    peer: FakePeer, cacheable: Cacheable, clock: Callable[[float], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    cacheable.max_age = 120
    first = discovery.discover("peer.test")
    etag = _etag_of(cacheable.body())
    clock(60)
    assert discovery.discover("peer.test") == first
    assert len(_discovery_calls(peer)) == 1  # still fresh

    parsed: list[str] = []
    parse = discovery._parse_document
    monkeypatch.setattr(discovery, "_parse_document", lambda d, doc: parsed.append(d) or parse(d, doc))
    clock(61)  # 121 s after the fetch: stale
    assert discovery.discover("peer.test") == first

    calls = _discovery_calls(peer)
    assert len(calls) == 2 and calls[1].headers["If-None-Match"] == etag
    assert cacheable.not_modified == 1
    assert parsed == []  # the held document was kept as it was, not parsed and checked again

    # The 304 gave the document another max-age, for every process.
    clock(100)
    assert discovery.discover("peer.test") == first
    _another_process()
    assert discovery.lookup("peer.test", budget=5) == first
    assert len(_discovery_calls(peer)) == 2


@pytest.mark.usefixtures("shared_cache")
def test_another_process_revalidates_a_stale_document_it_never_fetched(
    peer: FakePeer, cacheable: Cacheable, clock: Callable[[float], None]
) -> None:
    first = discovery.discover("peer.test")
    _another_process()
    clock(3601)

    assert discovery.lookup("peer.test", budget=5) == first

    calls = _discovery_calls(peer)
    assert len(calls) == 2 and calls[1].headers["If-None-Match"] == _etag_of(cacheable.body())
    assert cacheable.not_modified == 1


@pytest.mark.usefixtures("shared_cache")
def test_a_changed_document_replaces_the_held_one_after_expiry(
    peer: FakePeer, cacheable: Cacheable, clock: Callable[[float], None]
) -> None:
    discovery.discover("peer.test")
    new_key = Ed25519PrivateKey.generate()
    peer.extra_keys = [peer.key_entry("peer.test#k2", new_key)]
    clock(3601)

    instance = discovery.discover("peer.test")

    assert instance is not None and "peer.test#k2" in instance.keys
    assert cacheable.not_modified == 0
    _another_process()
    again = discovery.discover("peer.test")
    assert again is not None and "peer.test#k2" in again.keys
    assert len(_discovery_calls(peer)) == 2


@pytest.mark.parametrize(
    ("cache_control", "age", "kept_for"),
    [
        ("public, max-age=600", None, 600),
        ("public, max-age=600", "500", 100),  # an intermediary held it for 500 s already
        ("max-age=5", None, discovery.MIN_FRESH_SECONDS),  # never asked more than once a minute
        ("no-cache", None, discovery.MIN_FRESH_SECONDS),
        ("public, max-age=86400", None, 3600),  # PUSHMAIL_DISCOVERY_TTL is the longest
        (None, None, 3600),  # a peer that says nothing
    ],
)
@pytest.mark.usefixtures("shared_cache")
def test_the_peers_max_age_sets_how_long_the_document_is_used(
    peer: FakePeer,
    clock: Callable[[float], None],
    cache_control: str | None,
    age: str | None,
    kept_for: int,
) -> None:
    headers = {"cache-control": cache_control, "age": age}

    def answer(call: Call) -> http.Response:
        present = {k: v for k, v in headers.items() if v is not None}
        content = json.dumps(peer.document()).encode()
        return http.Response(200, {"content-type": "application/json", **present}, content, call.url)

    peer.on("GET", WELL_KNOWN, answer)
    discovery.discover("peer.test")
    clock(kept_for - 5)
    _another_process()
    discovery.discover("peer.test")
    assert len(_discovery_calls(peer)) == 1
    clock(10)
    _another_process()
    discovery.discover("peer.test")
    assert len(_discovery_calls(peer)) == 2


@pytest.mark.usefixtures("shared_cache")
def test_a_malformed_etag_is_not_sent_back(peer: FakePeer, clock: Callable[[float], None]) -> None:
    def answer(call: Call) -> http.Response:
        headers = {"content-type": "application/json", "etag": "no quotes " + "x" * 300}
        return http.Response(200, headers, json.dumps(peer.document()).encode(), call.url)

    peer.on("GET", WELL_KNOWN, answer)
    discovery.discover("peer.test")
    clock(3601)
    assert discovery.discover("peer.test") is not None

    assert "If-None-Match" not in _discovery_calls(peer)[1].headers


@pytest.mark.usefixtures("shared_cache")
def test_legacy_answers_are_still_cached_for_every_process_and_not_revalidated(net: Any) -> None:
    net.resolvable.add("mail.example")
    site = net.add(FakePeer("mail.example", "https://mail.example"))
    site.reply("GET", WELL_KNOWN, 404, {"error": "not_found"})

    assert discovery.discover("mail.example") is None
    _another_process()
    assert discovery.lookup("mail.example", budget=5) is None
    assert len(site.calls) == 1


# --- the forced refetch on an unknown key (§3.6) ----------------------------------------------


def _notify(federation: FederationClient, signer: FakePeer, **kwargs: Any) -> Any:
    body = json.dumps(PeerMessageFactory().payload()).encode()
    return federation.send("POST", NOTIFICATIONS, body, signer=signer, **kwargs)


@pytest.mark.usefixtures("shared_cache")
def test_a_rotated_key_is_found_by_a_conditional_refetch_past_any_cache(
    federation: FederationClient, peer: FakePeer, cacheable: Cacheable, alice: User
) -> None:
    assert _notify(federation, peer).status_code == 200
    old_etag = _etag_of(cacheable.body())

    peer.private_key = Ed25519PrivateKey.generate()
    peer.key_id = "peer.test#k2"
    assert _notify(federation, peer).status_code == 200

    refetch = _discovery_calls(peer)[1]
    assert refetch.headers["If-None-Match"] == old_etag  # answered 200: the document changed
    assert refetch.headers["Cache-Control"] == "no-cache"  # no cache on the way may answer for the peer
    # Every other process now has the new key from the shared cache.
    _another_process()
    assert _notify(federation, peer).status_code == 200
    assert len(_discovery_calls(peer)) == 2


@pytest.mark.usefixtures("shared_cache")
def test_an_unknown_key_with_an_unchanged_document_costs_a_304_and_is_refused(
    federation: FederationClient, peer: FakePeer, cacheable: Cacheable, alice: User
) -> None:
    assert _notify(federation, peer).status_code == 200

    response = _notify(federation, peer, key_id="peer.test#forged")

    assert response.status_code == 401 and response.json()["error"] == "unknown_key"
    assert cacheable.not_modified == 1


@pytest.mark.usefixtures("shared_cache")
def test_after_a_rotation_one_process_refetches_and_the_others_take_its_document(
    federation: FederationClient, peer: FakePeer, cacheable: Cacheable, alice: User
) -> None:
    assert _notify(federation, peer).status_code == 200
    old_document = caches["local"].get("pm-discovery:peer.test")  # what every process holds
    peer.private_key = Ed25519PrivateKey.generate()
    peer.key_id = "peer.test#k2"
    assert _notify(federation, peer).status_code == 200  # this process refetched
    assert len(_discovery_calls(peer)) == 2

    # Another web process still holds the old document, fresh, and has not refetched this minute.
    _another_process()
    caches["local"].set("pm-discovery:peer.test", old_document, 3600)
    assert _notify(federation, peer).status_code == 200

    assert len(_discovery_calls(peer)) == 2  # the new document came from the shared cache
    # A key id nobody publishes is still refetched from the peer.
    _another_process()
    caches["local"].set("pm-discovery:peer.test", old_document, 3600)
    assert _notify(federation, peer, key_id="peer.test#forged").status_code == 401
    assert len(_discovery_calls(peer)) == 3
