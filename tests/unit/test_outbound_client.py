"""Tests for federation.http, the guarded outbound HTTP client.

Every test runs under ``network_guard``: a socket may only connect to
loopback, and only numeric host names may be resolved (the resolver itself is
off-box). Refusals must therefore happen before any connection is attempted.
"""

from __future__ import annotations

import gzip
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from federation import http as outbound

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _is_loopback(address: Any) -> bool:
    if not isinstance(address, tuple):
        return False
    try:
        ip = ipaddress.ip_address(str(address[0]).split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


@pytest.fixture(autouse=True)
def network_guard(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Fail any connect to a non-loopback address and any real DNS lookup."""
    attempts: list[Any] = []

    def connect(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        if not _is_loopback(address):
            raise AssertionError(f"test tried to connect to {address!r}")
        _real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        attempts.append(address)
        if not _is_loopback(address):
            raise AssertionError(f"test tried to connect to {address!r}")
        return _real_connect_ex(self, address)

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            _real_getaddrinfo(host, port, 0, 0, 0, socket.AI_NUMERICHOST)
        except socket.gaierror:
            raise AssertionError(f"test tried a DNS lookup for {host!r}") from None
        return _real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


@pytest.fixture(autouse=True)
def no_peers(settings: Any) -> None:
    # Independent of whatever the project settings configure.
    settings.PUSHMAIL_PEERS = {}
    settings.PUSHMAIL_HTTP_TIMEOUT = 5


# --- local servers ----------------------------------------------------------

Route = Callable[[BaseHTTPRequestHandler], None]


def reply(
    h: BaseHTTPRequestHandler,
    status: int = 200,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> None:
    h.send_response(status)
    for name, value in (headers or {}).items():
        h.send_header(name, value)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def redirect(location: str, status: int = 302) -> Route:
    return lambda h: reply(h, status, headers={"Location": location})


class LocalServer:
    """A real HTTP/1.1 server on 127.0.0.1 that records what it sees."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.connections = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                owner.connections += 1
                super().setup()

            def handle_one(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                owner.requests.append((self.command, self.path, dict(self.headers)))
                route = owner.routes.get(self.path.split("?", 1)[0])
                try:
                    if route is None:
                        reply(self, 404, b"not found")
                    else:
                        route(self)
                except OSError:
                    self.close_connection = True  # client went away: fine

            do_GET = do_POST = do_HEAD = handle_one

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class RawServer:
    """A TCP server on 127.0.0.1 that runs ``behaviour`` for each connection."""

    def __init__(self, behaviour: Callable[[socket.socket], None]) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []
        self.behaviour = behaviour
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self.behaviour(conn)
        except OSError:
            pass

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def make_server() -> Iterator[Callable[[dict[str, Route]], LocalServer]]:
    servers: list[LocalServer] = []

    def make(routes: dict[str, Route]) -> LocalServer:
        server = LocalServer(routes)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def make_raw_server() -> Iterator[Callable[[Callable[[socket.socket], None]], RawServer]]:
    servers: list[RawServer] = []

    def make(behaviour: Callable[[socket.socket], None]) -> RawServer:
        server = RawServer(behaviour)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def make_peer(settings: Any, port: int, host: str = "127.0.0.1") -> None:
    settings.PUSHMAIL_PEERS = {"beta.test": f"http://{host}:{port}"}


def fake_dns(monkeypatch: pytest.MonkeyPatch, table: dict[str, list[str]]) -> list[str]:
    """Answer getaddrinfo for the names in ``table``; record every lookup."""
    lookups: list[str] = []
    guarded = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        lookups.append(str(host))
        if host in table:
            result = []
            for ip in table[host]:
                if ":" in ip:
                    result.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0)))
                else:
                    result.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)))
            return result
        return guarded(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- loopback and peers -----------------------------------------------------


def test_loopback_refused_when_not_a_peer(make_server: Callable[..., LocalServer], network_guard: list[Any]) -> None:
    server = make_server({"/": lambda h: reply(h, 200, b"hello")})

    with pytest.raises(outbound.BlockedAddress, match="plain http"):
        outbound.request("GET", server.url("/"))
    with pytest.raises(
        outbound.BlockedAddress,
        match=r"refusing to connect to private address 127\.0\.0\.1",
    ) as info:
        outbound.request("GET", f"https://127.0.0.1:{server.port}/")

    assert info.value.retryable is False
    assert network_guard == []
    assert server.connections == 0


def test_loopback_allowed_when_host_is_a_peer(make_server: Callable[..., LocalServer], settings: Any) -> None:
    server = make_server({"/doc": lambda h: reply(h, 200, b'{"ok": true}', {"X-Thing": "1"})})
    make_peer(settings, server.port)

    resp = outbound.request("GET", server.url("/doc"), headers={"Accept": "x/y"})

    assert resp.status == 200
    assert resp.json() == {"ok": True}
    assert resp.headers["x-thing"] == "1"
    assert all(name == name.lower() for name in resp.headers)
    assert resp.url == server.url("/doc")
    (_, path, seen) = server.requests[0]
    assert path == "/doc"
    assert seen["User-Agent"] == "Pushmail/1 (+federation)"
    assert seen["Accept"] == "x/y"


def test_peer_status_is_not_inherited_by_other_spellings(
    make_server: Callable[..., LocalServer], settings: Any, network_guard: list[Any]
) -> None:
    server = make_server({"/": lambda h: reply(h, 200, b"hi")})
    make_peer(settings, server.port)

    for url in (
        f"https://2130706433:{server.port}/",
        f"https://0x7f.1:{server.port}/",
        f"https://127.1:{server.port}/",
        f"https://[::ffff:127.0.0.1]:{server.port}/",
    ):
        with pytest.raises(outbound.BlockedAddress, match=r"127\.0\.0\.1"):
            outbound.request("GET", url)
    assert network_guard == []
    assert server.connections == 0


def test_keep_alive_connections_are_pooled(make_server: Callable[..., LocalServer], settings: Any) -> None:
    server = make_server({"/": lambda h: reply(h, 200, b"again")})
    make_peer(settings, server.port)

    for _ in range(3):
        assert outbound.request("GET", server.url("/")).content == b"again"

    assert len(server.requests) == 3
    assert server.connections == 1


def test_reused_connection_is_rechecked_when_peers_change(
    make_server: Callable[..., LocalServer],
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = make_server({"/": lambda h: reply(h, 200, b"ok")})
    make_peer(settings, server.port)
    assert outbound.request("GET", server.url("/")).status == 200

    # The host is no longer a peer; skip the URL-level check so the pooled
    # keep-alive connection itself has to refuse.
    settings.PUSHMAIL_PEERS = {}
    monkeypatch.setattr(outbound, "_check_target", lambda url, allowed: outbound._origin(url))
    with pytest.raises(outbound.BlockedAddress, match=r"127\.0\.0\.1"):
        outbound.request("GET", server.url("/"))
    assert len(server.requests) == 1
    assert server.connections == 1


def test_environment_proxies_are_ignored(
    make_server: Callable[..., LocalServer],
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = make_server({"/": lambda h: reply(h, 200, b"direct")})
    make_peer(settings, server.port)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, "http://10.0.0.1:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    assert outbound.request("GET", server.url("/")).content == b"direct"


# --- refused addresses ------------------------------------------------------

REFUSED_URLS = [
    ("https://10.0.0.1/", "10.0.0.1"),
    ("https://192.168.1.1/", "192.168.1.1"),
    ("https://172.16.0.1/", "172.16.0.1"),
    ("https://169.254.169.254/latest/meta-data/", "169.254.169.254"),
    ("https://100.64.0.1/", "100.64.0.1"),
    ("https://0.0.0.0/", "0.0.0.0"),
    ("https://224.0.0.1/", "224.0.0.1"),
    ("https://[::1]/", "::1"),
    ("https://[::]/", "::"),
    ("https://[fe80::1]/", "fe80::1"),
    ("https://[fc00::1]/", "fc00::1"),
    ("https://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1"),
    ("https://[::ffff:10.0.0.1]/", "::ffff:10.0.0.1"),
    ("https://[64:ff9b::a00:1]/", "64:ff9b::a00:1"),
    ("https://[2002:a00:1::1]/", "2002:a00:1::1"),
    ("https://2130706433/", "127.0.0.1"),
    ("https://0x7f000001/", "127.0.0.1"),
    ("https://0x7f.1/", "127.0.0.1"),
    ("https://017700000001/", "127.0.0.1"),
    ("https://127.1/", "127.0.0.1"),
]


@pytest.mark.parametrize(("url", "address"), REFUSED_URLS)
def test_non_public_addresses_are_refused_before_connecting(url: str, address: str, network_guard: list[Any]) -> None:
    with pytest.raises(outbound.BlockedAddress) as info:
        outbound.request("GET", url, timeout=1)

    assert f"refusing to connect to private address {address}" in str(info.value)
    assert info.value.retryable is False
    assert network_guard == []


@pytest.mark.parametrize(("url", "address"), REFUSED_URLS)
def test_connection_layer_alone_refuses_before_connecting(
    url: str, address: str, network_guard: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Bypass the URL-level literal check: the connection class must still refuse.
    monkeypatch.setattr(outbound, "_check_target", lambda url, allowed: outbound._origin(url))

    with pytest.raises(outbound.BlockedAddress, match="private address"):
        outbound.request("GET", url, timeout=1)
    assert network_guard == []


@pytest.mark.parametrize("url", ["http://2130706433/", "http://10.0.0.1/", "http://0x7f000001/"])
def test_plain_http_to_literal_addresses_is_refused(url: str, network_guard: list[Any]) -> None:
    with pytest.raises(outbound.BlockedAddress):
        outbound.request("GET", url, timeout=1)
    assert network_guard == []


def test_http_refused_for_non_peer_host(network_guard: list[Any]) -> None:
    with pytest.raises(outbound.BlockedAddress, match="plain http") as info:
        outbound.request("GET", "http://example.com/inbox")
    assert "example.com" in str(info.value)
    assert info.value.retryable is False
    assert network_guard == []


def test_name_resolving_to_private_address_is_refused(
    monkeypatch: pytest.MonkeyPatch, network_guard: list[Any]
) -> None:
    lookups = fake_dns(monkeypatch, {"evil.test": ["10.0.0.5"]})

    with pytest.raises(outbound.BlockedAddress, match=r"private address 10\.0\.0\.5 \(for evil\.test\)"):
        outbound.request("POST", "https://evil.test/inbox", body=b"{}", timeout=1)

    assert lookups == ["evil.test"]
    assert network_guard == []


def test_name_with_any_private_address_is_refused(monkeypatch: pytest.MonkeyPatch, network_guard: list[Any]) -> None:
    # A public address first must not let the private one slip through later.
    fake_dns(monkeypatch, {"mixed.test": ["8.8.8.8", "2001:4860:4860::8888", "::1"]})

    with pytest.raises(outbound.BlockedAddress, match="::1"):
        outbound.request("GET", "https://mixed.test/", timeout=1)
    assert network_guard == []


def test_actual_peer_address_is_checked_after_connect(
    make_raw_server: Callable[..., RawServer],
    monkeypatch: pytest.MonkeyPatch,
    network_guard: list[Any],
) -> None:
    # DNS says public, but the connection lands on loopback (rebinding, or any
    # other way the resolver and the socket disagree).
    received: list[bytes] = []
    server = make_raw_server(lambda conn: received.append(conn.recv(100)))
    fake_dns(monkeypatch, {"rebind.test": ["8.8.8.8"], "8.8.8.8": ["127.0.0.1"]})

    with pytest.raises(outbound.BlockedAddress, match=r"127\.0\.0\.1 \(for rebind\.test\)"):
        outbound.request("GET", f"https://rebind.test:{server.port}/", timeout=2)

    assert [a[0] for a in network_guard] == ["127.0.0.1"]
    time.sleep(0.2)
    assert received in ([], [b""])  # closed without sending a byte


# --- redirects --------------------------------------------------------------


@pytest.mark.parametrize(
    "location",
    [
        "http://10.0.0.1/",
        "https://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "https://other.test/inbox",
        "http://beta.test/",
        "https://127.0.0.1/same-host-other-scheme",
        "//other.test/protocol-relative",
    ],
)
def test_redirect_off_origin_is_refused(
    location: str,
    make_server: Callable[..., LocalServer],
    settings: Any,
    network_guard: list[Any],
) -> None:
    server = make_server({"/start": redirect(location)})
    make_peer(settings, server.port)

    with pytest.raises(outbound.RedirectRefused, match="refusing redirect") as info:
        outbound.request("GET", server.url("/start"), timeout=2)

    assert info.value.retryable is False
    assert [path for _, path, _ in server.requests] == ["/start"]
    assert all(_is_loopback(a) for a in network_guard)


def test_redirect_to_other_port_on_same_host_is_refused(make_server: Callable[..., LocalServer], settings: Any) -> None:
    other = make_server({"/": lambda h: reply(h, 200, b"other")})
    server = make_server({"/start": redirect(f"http://127.0.0.1:{other.port}/")})
    make_peer(settings, server.port)
    settings.PUSHMAIL_PEERS["gamma.test"] = other.url("/")

    with pytest.raises(outbound.RedirectRefused):
        outbound.request("GET", server.url("/start"))
    assert other.requests == []


def test_same_host_redirects_are_followed(make_server: Callable[..., LocalServer], settings: Any) -> None:
    server = make_server(
        {
            "/start": redirect("/middle", 301),
            "/middle": lambda h: reply(h, 307, headers={"Location": f"http://127.0.0.1:{server.port}/final"}),
            "/final": lambda h: reply(h, 200, b"done"),
        }
    )
    make_peer(settings, server.port)

    resp = outbound.request("GET", server.url("/start"))

    assert resp.status == 200
    assert resp.content == b"done"
    assert resp.url == server.url("/final")
    assert [path for _, path, _ in server.requests] == ["/start", "/middle", "/final"]


def test_303_after_post_becomes_get(make_server: Callable[..., LocalServer], settings: Any) -> None:
    server = make_server({"/inbox": redirect("/status", 303), "/status": lambda h: reply(h, 200, b"ok")})
    make_peer(settings, server.port)

    resp = outbound.request(
        "POST",
        server.url("/inbox"),
        body=b'{"a": 1}',
        headers={"Content-Type": "application/json"},
    )

    assert resp.content == b"ok"
    assert [(m, p) for m, p, _ in server.requests] == [
        ("POST", "/inbox"),
        ("GET", "/status"),
    ]
    assert "Content-Type" not in server.requests[1][2]


def test_at_most_three_redirects(make_server: Callable[..., LocalServer], settings: Any) -> None:
    server = make_server(
        {
            "/loop": redirect("/loop"),
            "/r1": redirect("/r2"),
            "/r2": redirect("/r3"),
            "/r3": redirect("/end"),
            "/end": lambda h: reply(h, 200, b"end"),
        }
    )
    make_peer(settings, server.port)

    assert outbound.request("GET", server.url("/r1")).content == b"end"  # 3 hops: ok

    with pytest.raises(outbound.RedirectRefused, match="too many redirects"):
        outbound.request("GET", server.url("/loop"))
    assert [p for _, p, _ in server.requests].count("/loop") == 4


# --- response size ----------------------------------------------------------


def _endless(h: BaseHTTPRequestHandler, chunked: bool) -> None:
    h.send_response(200)
    if chunked:
        h.send_header("Transfer-Encoding", "chunked")
    else:
        h.send_header("Connection", "close")
    h.end_headers()
    block = b"x" * 4096
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        h.wfile.write(b"1000\r\n" + block + b"\r\n" if chunked else block)
        h.wfile.flush()


def test_response_too_large_by_content_length(make_server: Callable[..., LocalServer], settings: Any) -> None:
    server = make_server({"/big": lambda h: reply(h, 200, b"y" * 2000)})
    make_peer(settings, server.port)

    with pytest.raises(outbound.ResponseTooLarge, match="2000 bytes") as info:
        outbound.request("GET", server.url("/big"), max_bytes=1000)
    assert info.value.retryable is False


@pytest.mark.parametrize("chunked", [False, True], ids=["close-delimited", "chunked"])
def test_response_too_large_without_content_length(
    chunked: bool, make_server: Callable[..., LocalServer], settings: Any
) -> None:
    # The body never ends, so only a streaming cap can stop it quickly.
    server = make_server({"/endless": lambda h: _endless(h, chunked)})
    make_peer(settings, server.port)

    started = time.monotonic()
    with pytest.raises(outbound.ResponseTooLarge, match="exceeded the 100000-byte limit"):
        outbound.request("GET", server.url("/endless"), max_bytes=100_000, timeout=5)
    assert time.monotonic() - started < 3


def test_compressed_response_is_capped_after_decoding(make_server: Callable[..., LocalServer], settings: Any) -> None:
    bomb = gzip.compress(b"\0" * 5_000_000)
    server = make_server({"/gz": lambda h: reply(h, 200, bomb, {"Content-Encoding": "gzip"})})
    make_peer(settings, server.port)

    assert len(bomb) < 100_000
    with pytest.raises(outbound.ResponseTooLarge):
        outbound.request("GET", server.url("/gz"), max_bytes=100_000)


def test_response_of_exactly_max_bytes_is_accepted(make_server: Callable[..., LocalServer], settings: Any) -> None:
    server = make_server(
        {
            "/exact": lambda h: reply(h, 200, b"z" * 1000),
            "/chunked": lambda h: _chunked_exact(h, 1000),
        }
    )
    make_peer(settings, server.port)

    assert len(outbound.request("GET", server.url("/exact"), max_bytes=1000).content) == 1000
    assert outbound.request("GET", server.url("/chunked"), max_bytes=1000).content == (b"z" * 1000)


def _chunked_exact(h: BaseHTTPRequestHandler, size: int) -> None:
    h.send_response(200)
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    for _ in range(size // 100):
        h.wfile.write(b"64\r\n" + b"z" * 100 + b"\r\n")
    h.wfile.write(b"0\r\n\r\n")


# --- timeouts and connection errors -----------------------------------------


def _hang(conn: socket.socket) -> None:
    time.sleep(10)  # accepts, never answers


def test_server_that_never_answers_times_out(make_raw_server: Callable[..., RawServer], settings: Any) -> None:
    server = make_raw_server(_hang)
    make_peer(settings, server.port)

    started = time.monotonic()
    with pytest.raises(outbound.OutboundError) as info:
        outbound.request("GET", f"http://127.0.0.1:{server.port}/", timeout=1)
    elapsed = time.monotonic() - started

    assert info.value.retryable is True
    assert str(info.value) == f"timed out after 1s contacting 127.0.0.1:{server.port}"
    assert 0.8 < elapsed < 2.5


def test_default_timeout_comes_from_settings(make_raw_server: Callable[..., RawServer], settings: Any) -> None:
    server = make_raw_server(_hang)
    make_peer(settings, server.port)
    settings.PUSHMAIL_HTTP_TIMEOUT = 1

    started = time.monotonic()
    with pytest.raises(outbound.OutboundError, match="timed out after 1s"):
        outbound.request("GET", f"http://127.0.0.1:{server.port}/")
    assert time.monotonic() - started < 2.5

    settings.PUSHMAIL_HTTP_TIMEOUT = None
    assert outbound.default_timeout() == 10


def _drip_body(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(100):
        conn.sendall(b"x")
        time.sleep(0.2)


def _drip_headers(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    for _ in range(100):
        conn.sendall(b"X-Slow: a\r\n")
        time.sleep(0.2)


@pytest.mark.parametrize("behaviour", [_drip_body, _drip_headers], ids=["body", "headers"])
def test_slow_drip_is_cut_off_at_the_overall_deadline(
    behaviour: Callable[[socket.socket], None],
    make_raw_server: Callable[..., RawServer],
    settings: Any,
) -> None:
    # Each read gets a byte well within the read timeout; only the overall
    # deadline can stop this.
    server = make_raw_server(behaviour)
    make_peer(settings, server.port)

    started = time.monotonic()
    with pytest.raises(outbound.OutboundError, match="timed out after 1s") as info:
        outbound.request("GET", f"http://127.0.0.1:{server.port}/", timeout=1)
    assert info.value.retryable is True
    assert time.monotonic() - started < 2


def test_connection_refused_is_retryable(settings: Any) -> None:
    port = free_port()
    make_peer(settings, port)

    with pytest.raises(outbound.OutboundError) as info:
        outbound.request("GET", f"http://127.0.0.1:{port}/", timeout=2)

    assert type(info.value) is outbound.OutboundError
    assert info.value.retryable is True
    assert str(info.value) == f"connection to 127.0.0.1:{port} refused"


def test_unresolvable_name_is_retryable(monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    def no_such_host(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)

    with pytest.raises(outbound.OutboundError) as info:
        outbound.request("GET", "https://nowhere.test/", timeout=1)
    assert info.value.retryable is True
    assert str(info.value) == "could not resolve nowhere.test"


# --- helpers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "public"),
    [
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("2606:4700:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::808:808", True),
        ("2002:808:808::1", True),
        ("[2606:4700:4700::1111]", True),
        ("127.0.0.1", False),
        ("127.255.255.254", False),
        ("10.0.0.1", False),
        ("172.16.0.1", False),
        ("172.31.255.255", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("100.127.255.254", False),
        ("0.0.0.0", False),
        ("0.1.2.3", False),
        ("224.0.0.1", False),
        ("239.255.255.250", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("192.0.2.1", False),
        ("198.18.0.1", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("fd12:3456::1", False),
        ("fec0::1", False),
        ("ff02::1", False),
        ("2001:db8::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("::ffff:169.254.169.254", False),
        ("::127.0.0.1", False),
        ("::8.8.8.8", False),
        ("64:ff9b::7f00:1", False),
        ("64:ff9b::a00:1", False),
        ("64:ff9b:1::808:808", False),
        ("2002:7f00:1::1", False),
        ("2002:a00:1::1", False),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),
        ("2130706433", False),
        ("0x7f000001", False),
        ("localhost", False),
        ("", False),
    ],
)
def test_is_public_address(ip: str, public: bool) -> None:
    assert outbound.is_public_address(ip) is public


def test_allowed_private_hosts(settings: Any) -> None:
    settings.PUSHMAIL_PEERS = {
        "a.test": "http://127.0.0.1:8001",
        "b.test": "https://Peer.Example.:8443/base",
        "c.test": "http://[::1]:9000/",
    }
    assert outbound.allowed_private_hosts() == {"127.0.0.1", "peer.example", "::1"}

    settings.PUSHMAIL_PEERS = {}
    assert outbound.allowed_private_hosts() == set()


def test_error_hierarchy() -> None:
    for cls in (
        outbound.BlockedAddress,
        outbound.ResponseTooLarge,
        outbound.RedirectRefused,
    ):
        assert issubclass(cls, outbound.OutboundError)
        assert cls("x").retryable is False
    assert outbound.OutboundError("x").retryable is True
    assert outbound.OutboundError("x", retryable=False).retryable is False


# --- downloads into a file (attachments) ----------------------------------------------------


def test_a_download_streams_into_the_sink_and_is_capped(make_server: Callable[..., LocalServer], settings: Any) -> None:
    import io

    payload = bytes(range(256)) * 1024  # 256 KiB: many reads
    server = make_server(
        {
            "/file": lambda h: reply(h, 200, payload),
            "/gone": lambda h: reply(h, 410, b'{"error": "gone", "reason": "withdrawn"}' + b" " * 100),
        }
    )
    make_peer(settings, server.port)

    sink = io.BytesIO()
    resp = outbound.request("GET", server.url("/file"), max_bytes=len(payload), sink=sink)
    assert resp.status == 200 and resp.content == b"" and sink.getvalue() == payload

    with pytest.raises(outbound.ResponseTooLarge):
        outbound.request("GET", server.url("/file"), max_bytes=len(payload) - 1, sink=io.BytesIO())

    # An error answer is read into memory with its own cap, whatever the file's size.
    sink = io.BytesIO()
    gone = outbound.request("GET", server.url("/gone"), max_bytes=1, sink=sink)
    assert gone.status == 410 and gone.json()["reason"] == "withdrawn" and sink.getvalue() == b""
