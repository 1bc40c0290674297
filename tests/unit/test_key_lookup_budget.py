"""A peer whose discovery stalls cannot hold the web workers that verify its signatures.

Real loopback servers behind the real outbound client: one accepts connections
and never answers, one answers its discovery document (after a delay, when
asked to). The instance under test must answer a request it cannot check yet
with ``503 keys_unavailable`` and a ``Retry-After`` within the lookup budget,
answer repeats at once from the shared cache, keep serving known peers without
delay, and verify normally once a slow lookup has finished.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.core.cache import caches
from django.db import connections
from django.test import Client

from accounts.models import User
from federation import discovery
from tests.conftest import NOTIFICATIONS, FakePeer
from tests.factories import PeerMessageFactory

# Threads of the instance under test and of the tests write to the shared cache
# (a database table here) from their own connections, so nothing runs inside a
# test transaction.
pytestmark = pytest.mark.django_db(transaction=True)

BUDGET = 1.5
# What "answered at once" allows on a loaded machine: well under the budget, so a wait shows.
AT_ONCE = 1.0
HTTP_TIMEOUT = 3.0


class StallingServer:
    """Accepts connections on 127.0.0.1 and never sends a byte."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.listener.close()
        for conn in self.accepted:
            conn.close()


class DocumentServer:
    """Serves a fake peer's discovery document on 127.0.0.1, after ``delay`` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.peer: FakePeer | None = None
        self.delay = delay
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the standard library's name
                server.requests += 1
                time.sleep(server.delay)
                assert server.peer is not None
                body = json.dumps(server.peer.document()).encode()
                self.send_response(200 if self.path == discovery.WELL_KNOWN_PATH else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stall() -> Iterator[StallingServer]:
    server = StallingServer()
    yield server
    server.close()


@pytest.fixture
def known() -> Iterator[DocumentServer]:
    server = DocumentServer()
    yield server
    server.close()


@pytest.fixture
def slow() -> Iterator[DocumentServer]:
    server = DocumentServer(delay=2.5)
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _shared_cache_cleared() -> Iterator[None]:
    caches["default"].clear()
    yield
    _wait_for_lookups()
    caches["default"].clear()


def _wait_for_lookups(timeout: float = HTTP_TIMEOUT + 5) -> None:
    """Until the instance's background discovery threads have finished."""
    deadline = time.monotonic() + timeout
    while any(t.name.startswith("pm-lookup:") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "a discovery lookup outlived the outbound deadline"
        time.sleep(0.05)


@pytest.fixture
def peers(settings: Any, stall: StallingServer, known: DocumentServer, slow: DocumentServer) -> dict[str, FakePeer]:
    """peer.test answers at once, slow.test after 2.5 s, evil*.test never."""
    evil = {f"evil{n}.test": f"http://127.0.0.1:{stall.port}" for n in range(1, 7)}
    settings.PUSHMAIL_PEERS = {"peer.test": known.base, "slow.test": slow.base, **evil}
    settings.PUSHMAIL_HTTP_TIMEOUT = HTTP_TIMEOUT
    settings.PUSHMAIL_KEY_LOOKUP_BUDGET_SECONDS = BUDGET
    known.peer = FakePeer("peer.test", known.base)
    slow.peer = FakePeer("slow.test", slow.base)
    signers = {"peer.test": known.peer, "slow.test": slow.peer}
    signers.update({domain: FakePeer(domain, base) for domain, base in evil.items()})
    return signers


def _notify(signer: FakePeer) -> tuple[Any, float]:
    """POST a freshly signed notification from ``signer``; the answer and how long it took."""
    payload = PeerMessageFactory(sender=f"carol@{signer.domain}").payload()
    body = json.dumps(payload).encode()
    headers = signer.sign("POST", NOTIFICATIONS, body)
    headers.pop("Content-Type")
    started = time.monotonic()
    response = Client().post(NOTIFICATIONS, data=body, content_type="application/json", headers=headers)
    return response, time.monotonic() - started


def _assert_retry_later(response: Any) -> None:
    assert response.status_code == 503, response.content
    assert response.json()["error"] == "keys_unavailable"
    assert response.json()["detail"]
    assert 1 <= int(response["Retry-After"]) <= discovery.FAILED_LOOKUP_TTL


def test_a_forged_key_id_of_a_stalling_domain_is_answered_within_the_budget(
    peers: dict[str, FakePeer], stall: StallingServer, alice: User
) -> None:
    first, took = _notify(peers["evil1.test"])

    _assert_retry_later(first)
    assert took < BUDGET + 1.0, f"the first request waited {took:.1f}s"

    # While the lookup is still stalled, repeats are answered at once, and nobody asks the peer again.
    for _ in range(5):
        again, took = _notify(peers["evil1.test"])
        _assert_retry_later(again)
        assert took < AT_ONCE, f"a repeat waited {took:.1f}s"
    assert len(stall.accepted) == 1

    # After the stalled lookup has given up, the failure is remembered: still at once, still no new connection.
    _wait_for_lookups()
    later, took = _notify(peers["evil1.test"])
    _assert_retry_later(later)
    assert took < AT_ONCE
    assert len(stall.accepted) == 1


def test_the_failure_is_in_the_shared_cache_for_every_process(
    peers: dict[str, FakePeer], stall: StallingServer, alice: User
) -> None:
    _assert_retry_later(_notify(peers["evil1.test"])[0])
    _wait_for_lookups()

    caches["local"].clear()  # another web process: only the shared cache is in common
    again, took = _notify(peers["evil1.test"])

    _assert_retry_later(again)
    assert took < AT_ONCE
    assert len(stall.accepted) == 1


def test_stalling_peers_do_not_delay_a_known_peer(
    peers: dict[str, FakePeer], stall: StallingServer, known: DocumentServer, alice: User
) -> None:
    assert _notify(peers["peer.test"])[0].status_code == 200  # peer.test's keys are known from here on

    answers: list[tuple[int, float]] = []

    def forge(domain: str) -> None:
        try:
            response, took = _notify(peers[domain])
            answers.append((response.status_code, took))
        finally:
            connections.close_all()

    forgers = [threading.Thread(target=forge, args=(f"evil{n}.test",)) for n in range(1, 7)]
    for thread in forgers:
        thread.start()
    time.sleep(0.1)  # the six are now waiting on the stalling peer
    legitimate, took = _notify(peers["peer.test"])
    for thread in forgers:
        thread.join(timeout=HTTP_TIMEOUT + 5)

    assert legitimate.status_code == 200, legitimate.content
    assert took < AT_ONCE, f"the known peer's request waited {took:.1f}s"
    assert sorted(status for status, _ in answers) == [503] * 6
    assert max(took for _, took in answers) < BUDGET + 1.0
    assert known.requests == 1


def test_a_lookup_that_outlives_the_budget_serves_the_next_request(
    peers: dict[str, FakePeer], slow: DocumentServer, alice: User
) -> None:
    first, took = _notify(peers["slow.test"])
    _assert_retry_later(first)
    assert took < BUDGET + 1.0

    _wait_for_lookups()  # the peer answered after 2.5 s, in the background
    caches["local"].clear()  # and the retry may reach another process
    retry, took = _notify(peers["slow.test"])

    assert retry.status_code == 200, retry.content
    assert took < AT_ONCE
    assert slow.requests == 1
