"""A hostile peer's answers and payloads, beyond the documented cases: odd headers in its HTTP
answers, Retry-After values that are not delta-seconds, and digits from other scripts in times.
Each is answered or recorded cleanly: never an exception out of the outbound client, a crashed
task, or a 500 to a reader."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import User
from federation import http
from mailbox import remote_content
from mailbox.models import FetchState, RemoteMessage
from mailbox.services import accept_notification, fetch_body, request_fetch
from outbox.models import Delivery, DeliveryState
from outbox.services import deliver_notification, send_message
from tests.conftest import NOTIFICATIONS, FakePeer, FederationClient, json_response
from tests.factories import PeerMessageFactory

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


class RawAnswer:
    """A TCP server on 127.0.0.1 that answers every request with the same raw bytes."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    conn.recv(65536)
                    conn.sendall(self.answer)
                except OSError:
                    pass

    def url(self, path: str = "/image.png") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def raw_answer() -> Iterator[Any]:
    servers: list[RawAnswer] = []

    def start(answer: bytes) -> RawAnswer:
        server = RawAnswer(answer)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


# (case id, the raw answer, whether the image still arrives)
HOSTILE_ANSWERS = [
    # "²" is a digit to str.isdigit() but not to int().
    ("content-length-superscript", b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: \xb2\r\n"
     b"Connection: close\r\n\r\n" + PNG, True),
    ("redirect-to-broken-ipv6", b"HTTP/1.1 302 Found\r\nLocation: http://[abc\r\nContent-Length: 0\r\n\r\n", False),
    ("redirect-not-utf8", b"HTTP/1.1 302 Found\r\nLocation: /\xe9\xe9.png\r\nContent-Length: 0\r\n\r\n", False),
]  # fmt: skip


@pytest.mark.parametrize(("answer", "arrives"), [c[1:] for c in HOSTILE_ANSWERS], ids=[c[0] for c in HOSTILE_ANSWERS])
def test_hostile_answer_headers_are_an_outbound_error_not_a_crash(
    raw_answer: Any, answer: bytes, arrives: bool
) -> None:
    server = raw_answer(answer)

    try:
        response = http.request("GET", server.url(), extra_private_hosts=frozenset({"127.0.0.1"}), allow_http=True)
    except http.OutboundError as exc:
        assert not arrives, exc
        assert not exc.retryable  # a broken redirect is a refused target (§6.1): permanent
    else:
        assert arrives
        assert response.status == 200 and response.content == PNG


@pytest.mark.django_db
@pytest.mark.parametrize(("answer", "arrives"), [c[1:] for c in HOSTILE_ANSWERS], ids=[c[0] for c in HOSTILE_ANSWERS])
def test_the_image_proxy_answers_a_hostile_image_server_without_a_server_error(
    raw_answer: Any, settings: Any, alice: User, answer: bytes, arrives: bool
) -> None:
    settings.PUSHMAIL_IMAGE_PROXY_ALLOW_HOSTS = ["127.0.0.1"]
    server = raw_answer(answer)
    browser = Client(raise_request_exception=False)

    response = browser.get(remote_content.proxy_path(server.url(), user=alice))

    if arrives:
        assert response.status_code == 200 and response.content == PNG
    else:
        assert response.status_code == 502, response.content


# --- Retry-After ---------------------------------------------------------------------------------

RETRY_AFTER = [
    ("nan", 60),
    ("inf", 60),
    ("1e300", 60),
    ("-5", 60),
    ("1.5", 60),
    ("\xb2", 60),
    ("9" * 40, 86400),
    ("999999999", 86400),
    ("0", 1),
    ("120", 120),
]


@pytest.mark.django_db
@pytest.mark.usefixtures("net")
@pytest.mark.parametrize(("value", "seconds"), RETRY_AFTER, ids=[v for v, _ in RETRY_AFTER])
def test_a_notification_answer_with_any_retry_after_keeps_the_delivery_scheduled(
    alice: User, peer: FakePeer, value: str, seconds: int
) -> None:
    peer.on("POST", NOTIFICATIONS, lambda call: json_response(429, {"error": "rate_limited"}, {"Retry-After": value}))
    message = send_message(sender=alice, to=["carol@peer.test"], subject="Hello", text="Hi")
    before = timezone.now()

    deliver_notification(Delivery.objects.get(message=message).pk)  # no exception out of the task

    delivery = Delivery.objects.get(message=message)
    assert delivery.state == DeliveryState.RETRYING
    assert delivery.last_error.startswith("HTTP 429")
    assert delivery.next_attempt_at is not None
    delay = (delivery.next_attempt_at - before).total_seconds()
    assert seconds - 1 <= delay <= seconds + 5, delay


@pytest.mark.django_db
@pytest.mark.usefixtures("net")
@pytest.mark.parametrize("value", ["nan", "inf", "9" * 40])
def test_a_body_fetch_answered_with_any_retry_after_is_rescheduled(alice: User, peer: FakePeer, value: str) -> None:
    message = PeerMessageFactory()
    accept_notification(origin=peer.domain, notification=message.notification())
    remote = RemoteMessage.objects.get(global_id=message.global_id)
    peer.on(
        "GET",
        f"/federation/v1/messages/{message.global_id}/body",
        lambda call: json_response(503, {"error": "busy"}, {"Retry-After": value}),
    )
    request_fetch(remote_id=remote.pk)

    fetch_body(remote.pk)  # no exception out of the task

    remote.refresh_from_db()
    assert remote.state == FetchState.UNAVAILABLE
    assert remote.next_attempt_at is not None
    assert remote.next_attempt_at <= timezone.now() + timedelta(days=1, seconds=5)


# --- times ---------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.usefixtures("net")
@pytest.mark.parametrize("field", ["date", "expires"])
@pytest.mark.parametrize(
    "value",
    ["٢٠٢٦-01-01T00:00:00Z", "２０２６-01-01T00:00:00Z", "2026-01-01T০০:00:00Z"],
    ids=["arabic-indic", "fullwidth", "bengali"],
)
def test_a_time_written_with_other_digits_is_refused_naming_the_field(
    federation: FederationClient, peer: FakePeer, alice: User, field: str, value: str
) -> None:
    payload = PeerMessageFactory().payload(**{field: value})

    response = federation.send("POST", NOTIFICATIONS, json.dumps(payload).encode(), signer=peer)

    assert response.status_code == 400, response.content
    assert response.json()["error"] == "invalid_payload"
    assert response.json()["field"] == field
    assert not RemoteMessage.objects.exists()
