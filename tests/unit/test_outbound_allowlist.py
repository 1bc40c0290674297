"""The outbound allow-list for configured peers is exact: scheme, host and port.

PUSHMAIL_PEERS lets a development peer use plain http and a loopback or private address. That
exception belongs to the configured base URL only: another port on the same host (here a second
real HTTP server on 127.0.0.1, standing for any other service of that machine) stays out of reach,
whether the URL comes from a peer's published ``api`` or from an image in a message. The webmail's
image proxy never reaches a configured peer's host at all, unless PUSHMAIL_IMAGE_PROXY_ALLOW_HOSTS
names it.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.test import Client

from accounts.models import Domain, User
from federation import client as peer_client
from federation import discovery, http
from mailbox import remote_content

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


class Server:
    """A real HTTP server on 127.0.0.1 that answers every GET/POST with one canned answer and records paths."""

    def __init__(self, answer: Callable[[str], tuple[int, str, bytes]]) -> None:
        self.paths: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                owner.paths.append(self.path)
                status, content_type, body = answer(self.path)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers() -> Iterator[Callable[[Callable[[str], tuple[int, str, bytes]]], Server]]:
    started: list[Server] = []

    def start(answer: Callable[[str], tuple[int, str, bytes]]) -> Server:
        server = Server(answer)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def _ok(path: str) -> tuple[int, str, bytes]:
    return 200, "image/png", PNG


@pytest.fixture
def peer_and_neighbour(servers: Any, settings: Any) -> tuple[Server, Server]:
    """beta.test's instance on 127.0.0.1 (a configured peer), and another service on another port."""
    neighbour = servers(_ok)
    peer = servers(_ok)
    settings.PUSHMAIL_PEERS = {"beta.test": peer.url("").rstrip("/")}
    settings.PUSHMAIL_IMAGE_PROXY_ALLOW_HOSTS = []
    settings.PUSHMAIL_HTTP_TIMEOUT = 5
    return peer, neighbour


# --- the outbound client ----------------------------------------------------------------------------------


def test_the_peer_base_url_itself_is_reachable(peer_and_neighbour: tuple[Server, Server]) -> None:
    peer, _ = peer_and_neighbour
    assert http.request("GET", peer.url("/.well-known/pushmail")).status == 200
    assert peer.paths == ["/.well-known/pushmail"]


@pytest.mark.parametrize("how", ["other port", "https on the peer's port"])
def test_other_ports_and_schemes_of_a_peer_host_are_refused(
    peer_and_neighbour: tuple[Server, Server], how: str
) -> None:
    peer, neighbour = peer_and_neighbour
    url = neighbour.url("/admin") if how == "other port" else f"https://127.0.0.1:{peer.port}/"
    with pytest.raises(http.BlockedAddress):
        http.request("GET", url)
    assert neighbour.paths == [] and peer.paths == []


def test_default_ports_count_as_the_port(settings: Any) -> None:
    settings.PUSHMAIL_PEERS = {"beta.test": "http://127.0.0.1"}
    assert http.allowed_peer_origins() == {("http", "127.0.0.1", 80)}
    with pytest.raises(http.BlockedAddress):
        http.request("GET", "http://127.0.0.1:8080/")


@pytest.mark.django_db
def test_a_peer_cannot_publish_an_api_on_another_port_of_its_host(
    servers: Any, settings: Any, local_domain: Domain
) -> None:
    neighbour = servers(lambda path: (200, "application/json", b"{}"))

    def well_known(path: str) -> tuple[int, str, bytes]:
        document = {
            "protocol": "pushmail",
            "version": 1,
            "versions": [1],
            "domains": ["beta.test"],
            "api": neighbour.url("/federation/v1/"),  # not where PUSHMAIL_PEERS says beta.test is
            "keys": [],
            "limits": {"max_notification_bytes": 262144, "max_recipients": 1000},
        }
        return 200, "application/json", json.dumps(document).encode()

    peer = servers(well_known)
    settings.PUSHMAIL_PEERS = {"beta.test": peer.url("").rstrip("/")}
    instance = discovery.discover("beta.test")
    assert instance is not None and instance.api_base == neighbour.url("/federation/v1/")

    with pytest.raises(peer_client.PeerError, match="refusing"):
        peer_client.fetch_body(instance=instance, as_domain=local_domain.name, global_id=uuid.uuid4())
    assert neighbour.paths == []


# --- the webmail's image proxy ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_image_proxy_never_reaches_a_peer_host(peer_and_neighbour: tuple[Server, Server], alice: User) -> None:
    peer, neighbour = peer_and_neighbour
    browser = Client()
    browser.force_login(alice)
    for url in (peer.url("/logo.png"), neighbour.url("/logo.png"), f"http://127.0.0.1:{peer.port}/x.png"):
        response = browser.get(remote_content.proxy_path(url, user=alice))
        assert response.status_code == 403, url
    assert peer.paths == [] and neighbour.paths == []


@pytest.mark.django_db  # the proxy's cache of hosts that did not answer
def test_the_image_proxy_refuses_a_public_peer_host_on_any_port(settings: Any) -> None:
    settings.PUSHMAIL_PEERS = {"beta.test": "https://mail.beta.example"}
    settings.PUSHMAIL_IMAGE_PROXY_ALLOW_HOSTS = []
    for url in ("https://mail.beta.example/logo.png", "http://mail.beta.example:8080/logo.png"):
        with pytest.raises(remote_content.ImageRefused, match="configured peer") as info:
            remote_content.fetch_image(url)
        assert info.value.status == 403


@pytest.mark.django_db
def test_the_image_proxy_reaches_a_peer_host_when_explicitly_allowed(
    peer_and_neighbour: tuple[Server, Server], settings: Any
) -> None:
    _, neighbour = peer_and_neighbour
    settings.PUSHMAIL_IMAGE_PROXY_ALLOW_HOSTS = ["127.0.0.1"]
    image = remote_content.fetch_image(neighbour.url("/logo.png"))
    assert image.content == PNG
    assert neighbour.paths == ["/logo.png"]
