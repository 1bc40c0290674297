"""Shared fixtures. Factories live in tests/factories.py.

Unit tests never touch the network. ``net`` replaces the one outbound client
(``federation.http.request``) with an in-process router to fake peer instances
named in ``PUSHMAIL_PEERS``, and makes every other host name unresolvable, so a
domain that is neither hosted here nor a configured peer is a legacy domain.
"""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from celery.app.task import Task
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.cache import caches
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import Domain, User
from accounts.services import issue_api_token
from federation import discovery, http, keys, signatures
from gateway import services as gateway_services
from pushmail_site.jobs import drop_queued_mark
from tests.factories import DomainFactory, MailboxFactory

LOCAL = "alpha.test"
PEER = "peer.test"
PEER_BASE = "http://peer.test:9000"
OTHER = "other.test"
OTHER_BASE = "http://other.test:9001"
TEST_HOST = "testserver"  # what django.test.Client sends as Host


def pytest_report_header(config: pytest.Config) -> str:
    from django.conf import settings

    engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    return f"unit tests: database {engine}"


def pytest_configure(config: pytest.Config) -> None:
    """With CI=true the suite runs on PostgreSQL or not at all: it never falls back quietly."""
    import os

    if os.environ.get("CI") == "true" and not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise pytest.UsageError("CI=true: set DATABASE_URL to a PostgreSQL server (tools/test.sh does)")


NOTIFICATIONS = "/federation/v1/notifications"
WITHDRAWALS = "/federation/v1/withdrawals"


def body_path(global_id: object) -> str:
    return f"/federation/v1/messages/{global_id}/body"


# --- a fake peer instance behind the outbound client ---------------------------------


@dataclass
class Call:
    """One outbound request as the fake network saw it."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None
    timeout: float | None = None  # how long the caller would have waited for the answer

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    def json(self) -> Any:
        return json.loads(self.body or b"null")


Handler = Callable[[Call], http.Response]


def json_response(status: int, data: Any, headers: dict[str, str] | None = None, url: str = "") -> http.Response:
    return http.Response(
        status=status,
        headers={"content-type": "application/json", **{k.lower(): v for k, v in (headers or {}).items()}},
        content=json.dumps(data).encode(),
        url=url,
    )


@dataclass
class FakePeer:
    """A remote Pushmail instance: it publishes keys, answers notifications and serves bodies."""

    domain: str
    base: str
    private_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    key_id: str = ""
    extra_keys: list[dict[str, Any]] = field(default_factory=list)
    document_override: Any = None
    bodies: dict[str, bytes] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.key_id = self.key_id or f"{self.domain}#k1"

    @property
    def public_b64(self) -> str:
        raw = self.private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return keys.b64(raw)

    def key_entry(self, key_id: str | None = None, private_key: Ed25519PrivateKey | None = None) -> dict[str, Any]:
        private_key = private_key or self.private_key
        raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {
            "id": key_id or self.key_id,
            "domain": self.domain,
            "algorithm": "ed25519",
            "public_key": keys.b64(raw),
            "created": "2026-01-01T00:00:00Z",
            "expires": None,
        }

    def document(self) -> Any:
        if self.document_override is not None:
            return self.document_override
        return {
            "protocol": "pushmail",
            "version": 1,
            "versions": [1],
            "domains": [self.domain],
            "api": self.base + "/federation/v1/",
            "keys": [self.key_entry(), *self.extra_keys],
            "limits": {"max_notification_bytes": 262144, "max_recipients": 1000},
        }

    # What the fake peer answers.

    def on(self, method: str, path: str, handler: Handler) -> None:
        """Answer ``method path`` (a path, or a regex when it contains ``(``) with ``handler``."""
        self.routes[(method.upper(), path)] = handler

    def reply(self, method: str, path: str, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self.on(method, path, lambda call: json_response(status, data, headers, call.url))

    def fail(self, method: str, path: str, message: str = "connection refused", *, retryable: bool = True) -> None:
        def handler(call: Call) -> http.Response:
            raise http.OutboundError(f"{message} ({self.domain})", retryable=retryable)

        self.on(method, path, handler)

    def go_down(self) -> None:
        """Nothing answers: every request fails as a refused connection would."""
        self.on("*", "*", lambda call: (_ for _ in ()).throw(http.OutboundError("connection refused")))

    def come_back(self) -> None:
        self.routes.pop(("*", "*"), None)

    def handle(self, call: Call) -> http.Response:
        self.calls.append(call)
        if ("*", "*") in self.routes:
            return self.routes[("*", "*")](call)
        for (method, pattern), handler in self.routes.items():
            if method == call.method and (
                pattern == call.path or ("(" in pattern and re.fullmatch(pattern, call.path))
            ):
                return handler(call)
        if call.method == "GET" and call.path == discovery.WELL_KNOWN_PATH:
            return json_response(200, self.document(), url=call.url)
        if call.method == "POST" and call.path == NOTIFICATIONS:
            payload = call.json()
            results = [{"address": a, "status": "accepted"} for a in payload["recipients"]]
            return json_response(200, {"id": payload["id"], "results": results}, url=call.url)
        if call.method == "POST" and call.path == WITHDRAWALS:
            return json_response(200, {"id": call.json()["id"], "status": "withdrawn", "fetched_before": False})
        match = re.fullmatch(r"/federation/v1/messages/([^/]+)/body", call.path)
        if call.method == "GET" and match:
            content = self.bodies.get(match.group(1))
            if content is None:
                return json_response(404, {"error": "not_found", "detail": "no such message for your domain"})
            return http.Response(status=200, headers={"content-type": "application/json"}, content=content, url="")
        return json_response(404, {"error": "not_found", "detail": f"nothing at {call.path}"})

    def calls_to(self, method: str, path: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.path == path]

    @property
    def discovery_calls(self) -> int:
        return len(self.calls_to("GET", discovery.WELL_KNOWN_PATH))

    # Requests from this peer to the instance under test.

    def sign(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        key_id: str | None = None,
        private_key: Ed25519PrivateKey | None = None,
        created: datetime | None = None,
        nonce: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, str]:
        base_headers = {"Accept": "application/json", **(headers or {})}
        if body is not None and "Content-Type" not in base_headers:
            base_headers["Content-Type"] = "application/json"
        return signatures.sign(
            method=method,
            url=f"http://{TEST_HOST}{path}",
            headers=base_headers,
            body=body,
            key_id=key_id or self.key_id,
            private_key=private_key or self.private_key,
            created=created,
            nonce=nonce,
        )


class FakeNetwork:
    """Routes outbound requests to fake peers by host; any other host is an error in the test."""

    def __init__(self) -> None:
        self.peers: dict[str, FakePeer] = {}
        self.resolvable: set[str] = set()
        self.calls: list[Call] = []

    def add(self, peer: FakePeer) -> FakePeer:
        self.peers[urlsplit(peer.base).hostname or ""] = peer
        return peer

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        max_bytes: int = 1_048_576,
        timeout: float | None = None,
        sink: Any = None,
    ) -> http.Response:
        call = Call(method=method.upper(), url=url, headers=dict(headers or {}), body=body, timeout=timeout)
        self.calls.append(call)
        host = urlsplit(url).hostname or ""
        peer = self.peers.get(host)
        if peer is None:
            raise AssertionError(f"unit test made an outbound request to {url}")
        response = peer.handle(call)
        if sink is not None and not 200 <= response.status < 300:
            max_bytes = 65536  # error answers of a download have their own cap
        if len(response.content) > max_bytes:
            raise http.ResponseTooLarge(f"response from {host} exceeded the {max_bytes}-byte limit")
        if sink is not None and 200 <= response.status < 300:
            sink.write(response.content)  # as the real client streams a download to a file
            return dataclasses.replace(response, content=b"")
        return response

    def getaddrinfo(self, host: str, *args: Any, **kwargs: Any) -> list[Any]:
        if host in self.resolvable:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", 443))]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.fixture(autouse=True)
def _fresh_local_cache() -> Iterator[None]:
    """The per-process discovery cache (and the gateway's quota usage) must not leak between tests."""
    caches["local"].clear()
    gateway_services.forget_usage()
    yield
    caches["local"].clear()


@pytest.fixture
def net(monkeypatch: pytest.MonkeyPatch, settings: Any) -> FakeNetwork:
    """No real network: fake peers at peer.test and other.test; other names do not resolve."""
    network = FakeNetwork()
    network.add(FakePeer(PEER, PEER_BASE))
    network.add(FakePeer(OTHER, OTHER_BASE))
    settings.PUSHMAIL_PEERS = {PEER: PEER_BASE, OTHER: OTHER_BASE}
    monkeypatch.setattr(http, "request", network.request)
    fake_socket = types.SimpleNamespace(
        getaddrinfo=network.getaddrinfo, gaierror=socket.gaierror, SOCK_STREAM=socket.SOCK_STREAM
    )
    monkeypatch.setattr(discovery, "socket", fake_socket)
    return network


@pytest.fixture
def peer(net: FakeNetwork) -> FakePeer:
    return net.peers["peer.test"]


@pytest.fixture
def other_peer(net: FakeNetwork) -> FakePeer:
    return net.peers["other.test"]


# --- the instance under test -------------------------------------------------------------


@pytest.fixture
def local_domain(db: None) -> Domain:
    return DomainFactory(name=LOCAL)


@pytest.fixture
def alice(local_domain: Domain) -> User:
    return MailboxFactory(domain=local_domain, local_part="alice")


@pytest.fixture
def bob(local_domain: Domain) -> User:
    return MailboxFactory(domain=local_domain, local_part="bob")


@pytest.fixture
def alice_token(alice: User) -> str:
    return issue_api_token(user=alice, name="tests")


@pytest.fixture
def api(alice_token: str) -> APIClient:
    """The user API as alice, with her Bearer token."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {alice_token}")
    return client


def api_as(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issue_api_token(user=user)}")
    return client


class FederationClient:
    """Sends server-to-server requests to the instance under test, signed as a fake peer."""

    def __init__(self) -> None:
        self.client = Client()

    def send(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        signer: FakePeer | None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        **sign_kwargs: Any,
    ):  # type: ignore[no-untyped-def]
        signed = signer.sign(method, path, body, **sign_kwargs) if signer else {}
        signed.update(headers or {})
        signed.pop("Content-Type", None)
        kwargs: dict[str, Any] = {"headers": signed}
        if body is not None:
            kwargs.update(data=body, content_type=content_type)
        return self.client.generic(method, path, **kwargs)

    def post_json(self, path: str, payload: Any, *, signer: FakePeer | None, **kwargs: Any):  # type: ignore[no-untyped-def]
        return self.send("POST", path, json.dumps(payload).encode(), signer=signer, **kwargs)

    def notify(self, peer: FakePeer, payload: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        return self.post_json(NOTIFICATIONS, payload, signer=peer, **kwargs)

    def withdraw(self, peer: FakePeer, global_id: object, sender: str):  # type: ignore[no-untyped-def]
        payload = {"type": "withdrawal", "version": 1, "id": str(global_id), "sender": sender}
        return self.post_json(WITHDRAWALS, payload, signer=peer)

    def fetch(self, peer: FakePeer | None, global_id: object, **kwargs: Any):  # type: ignore[no-untyped-def]
        return self.send("GET", body_path(global_id), signer=peer, **kwargs)


@pytest.fixture
def federation(net: FakeNetwork) -> FederationClient:
    return FederationClient()


# --- background work --------------------------------------------------------------------


@dataclass
class Queued:
    name: str
    args: tuple[Any, ...]
    countdown: float | None


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[Queued]:
    """Tasks handed to the broker (after commit); use with django_capture_on_commit_callbacks(execute=True)."""
    sent: list[Queued] = []

    def apply_async(self: Task, args: Any = None, kwargs: Any = None, countdown: float | None = None, **options: Any):
        sent.append(Queued(self.name, tuple(args or ()), countdown))

    monkeypatch.setattr(Task, "apply_async", apply_async)
    return sent


def broker_lost(queued: list[Queued]) -> None:
    """The broker lost every message it held (a restart without persistence), and their queued marks
    lapsed: the sweep may queue those rows again."""
    for item in queued:
        drop_queued_mark(item.name, item.args)
    queued.clear()


def ago(**kwargs: float) -> datetime:
    return timezone.now() - timedelta(**kwargs)


def ahead(**kwargs: float) -> datetime:
    return timezone.now() + timedelta(**kwargs)
