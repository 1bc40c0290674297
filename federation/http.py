"""The one outbound HTTP client for server-to-server (federation) traffic.

Federation means fetching URLs that other, untrusted servers hand us: key
documents, delivery endpoints, redirects. Done naively that is a server-side
request forgery (SSRF) hole: a hostile peer could make us talk to 127.0.0.1,
the cloud metadata service at 169.254.169.254 or anything else on our private
network, or tie up workers with endless, huge or slow responses.

So every outbound request goes through :func:`request`, which

* allows only ``https://``, except for the base URLs in ``settings.PUSHMAIL_PEERS``
  (local test/dev peers): exactly their scheme, host and port may also be reached
  over ``http://`` and on private addresses, and no other port of those hosts;
* resolves the host itself, refuses if any address is not public, connects to
  exactly the address it checked, and then checks the socket's real peer
  address again. Because the check is on the address actually connected to,
  DNS rebinding and odd IP spellings (``http://2130706433/``,
  ``http://0x7f.1/``) do not get through;
* follows at most 3 redirects, and only within the same scheme, host and port;
* applies connect/read timeouts plus an overall deadline (a watchdog shuts the
  socket down), so a slow-drip peer cannot hold a worker;
* streams the body and stops as soon as it grows past ``max_bytes``;
* asks for gzip only and refuses any other content coding (docs/protocol.md §5.1).

One caller changes the rules per call: the webmail's image proxy passes
``allow_http=True`` (plain http to public addresses) and ``refuse_peer_hosts=True``
(no configured peer's host, on any port, and no peer exception), and, for local
test servers, ``extra_private_hosts`` (host names that may use http and private
addresses, on any port, for that call only).

Failures raise :class:`OutboundError` (or a subclass) with a short,
human-readable message and a ``retryable`` flag for the delivery queue.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from typing import IO, Any, Self
from urllib.parse import urljoin, urlsplit

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family

from . import payloads

__all__ = [
    "BlockedAddress",
    "OutboundError",
    "RedirectRefused",
    "Response",
    "ResponseTooLarge",
    "allowed_peer_origins",
    "allowed_private_hosts",
    "is_public_address",
    "request",
]

USER_AGENT = "Pushmail/1 (+federation)"
DEFAULT_TIMEOUT = 10.0
MAX_REDIRECTS = 3

_CHUNK_SIZE = 64 * 1024
# docs/protocol.md §5.1: the only content codings of version 1. Asking for no other
# keeps a peer from answering with "deflate" (zlib or raw, an old ambiguity) or br.
ACCEPT_ENCODING = "gzip"
_ACCEPTED_CODINGS = frozenset({"", "identity", "gzip"})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}


# --- errors -----------------------------------------------------------------


class OutboundError(Exception):
    """An outbound request failed. ``retryable`` says whether a later retry may help."""

    retryable: bool = True

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable


class BlockedAddress(OutboundError):
    """The target is not allowed (non-public address or plain http to a non-peer)."""

    retryable = False


class ResponseTooLarge(OutboundError):
    """The response body is larger than the caller's ``max_bytes``."""

    retryable = False


class RedirectRefused(OutboundError):
    """A redirect left the original origin, or there were too many of them."""

    retryable = False


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # names lower-cased
    content: bytes
    url: str

    def json(self) -> Any:
        """The answer as JSON, parsed as a peer's payloads are (raises PayloadError, a ValueError)."""
        return payloads.loads(self.content)


# --- address policy ---------------------------------------------------------

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # also holds :: and ::1
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


def _ipv4_is_public(addr: ipaddress.IPv4Address) -> bool:
    return addr.is_global and not (
        addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_multicast
        or addr.is_reserved
        or addr.is_unspecified
        or addr in _CGNAT
    )


def _ipv6_is_public(addr: ipaddress.IPv6Address) -> bool:
    # Addresses that carry an IPv4 address are judged by that address.
    mapped = addr.ipv4_mapped
    if mapped is not None:
        return _ipv4_is_public(mapped)
    if addr in _IPV4_COMPATIBLE or addr in _NAT64_LOCAL or addr.teredo is not None:
        return False
    if addr in _NAT64_WELL_KNOWN:
        return _ipv4_is_public(ipaddress.IPv4Address(int(addr) & 0xFFFF_FFFF))
    sixtofour = addr.sixtofour
    if sixtofour is not None:
        return _ipv4_is_public(sixtofour)
    return addr.is_global and not (
        addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_site_local
        or addr.is_multicast
        or addr.is_reserved
        or addr.is_unspecified
    )


def is_public_address(ip: str) -> bool:
    """True if ``ip`` (an IP address literal) may be contacted by a non-peer request."""
    try:
        addr = ipaddress.ip_address(ip.strip("[]").split("%", 1)[0])  # drop zone id
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address):
        return _ipv6_is_public(addr)
    return _ipv4_is_public(addr)


def _norm_host(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


def allowed_private_hosts() -> set[str]:
    """Host names of the base URLs in ``settings.PUSHMAIL_PEERS``.

    Only their exact origins (:func:`allowed_peer_origins`) may be reached over plain http or
    on non-public addresses; a caller passing ``refuse_peer_hosts`` reaches none of these hosts.
    """
    hosts: set[str] = set()
    for base_url in settings.PUSHMAIL_PEERS.values():
        if not isinstance(base_url, str):
            continue
        try:
            host = urlsplit(base_url).hostname
        except ValueError:
            continue
        if host:
            hosts.add(_norm_host(host))
    return hosts


Origin = tuple[str, str, int]  # scheme, normalised host, port


def allowed_peer_origins() -> set[Origin]:
    """The exact origins (scheme, host, port) of the base URLs in ``settings.PUSHMAIL_PEERS``.

    Only these may be reached over plain http or on non-public addresses: another port or
    scheme on a peer's host is any other target.
    """
    origins: set[Origin] = set()
    for base_url in settings.PUSHMAIL_PEERS.values():
        if not isinstance(base_url, str):
            continue
        try:
            origins.add(_origin(base_url))
        except ValueError:
            continue
    return origins


@dataclass(frozen=True)
class _Trust:
    """What one request() call may reach over plain http and on non-public addresses."""

    origins: frozenset[Origin] = frozenset()  # exactly these (the configured peers)
    hosts: frozenset[str] = frozenset()  # these host names on any port (a caller's explicit allow-list)

    def allows(self, origin: Origin) -> bool:
        return origin in self.origins or origin[1] in self.hosts


def _trust_now() -> _Trust:
    """The current request() call's trust; outside one, the configured peers'."""
    trust: _Trust | None = getattr(_local, "trust", None)
    return trust if trust is not None else _Trust(origins=frozenset(allowed_peer_origins()))


def _conn_origin(conn: HTTPConnection) -> Origin:
    scheme = "https" if isinstance(conn, HTTPSConnection) else "http"
    return scheme, _norm_host(conn.host), int(conn.port or _DEFAULT_PORTS[scheme])


def default_timeout() -> float:
    value = settings.PUSHMAIL_HTTP_TIMEOUT
    return float(value) if value else DEFAULT_TIMEOUT


def _blocked(address: str, host: str) -> BlockedAddress:
    where = "" if _norm_host(address) == _norm_host(host) else f" (for {host})"
    return BlockedAddress(f"refusing to connect to private address {address}{where}")


# --- per-request deadline ---------------------------------------------------

_local = threading.local()


class _Deadline:
    """Overall deadline for one request() call, redirects included.

    Connections used by the request register here; when the deadline passes a
    timer shuts their sockets down, which unblocks any pending read or write.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expires = time.monotonic() + seconds
        self.fired = False
        self._conns: list[HTTPConnection] = []
        self._lock = threading.Lock()
        self._done = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def remaining(self) -> float:
        return self.expires - time.monotonic()

    def watch(self, conn: HTTPConnection) -> None:
        with self._lock:
            if not any(c is conn for c in self._conns):
                self._conns.append(conn)

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
            for conn in self._conns:
                sock = conn.sock
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    def __enter__(self) -> Self:
        _local.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()
        _local.deadline = None


def _watch(conn: HTTPConnection) -> None:
    deadline: _Deadline | None = getattr(_local, "deadline", None)
    if deadline is not None:
        deadline.watch(conn)


# --- guarded connections ----------------------------------------------------


def _resolve(conn: HTTPConnection, dns_host: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(dns_host, conn.port, allowed_gai_family(), socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NameResolutionError(conn.host, conn, exc) from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _connect_checked(conn: HTTPConnection, connect: Callable[[], socket.socket]) -> socket.socket:
    """Resolve, check every address, connect to a checked one, check the peer."""
    host = conn.host
    allow_private = _trust_now().allows(_conn_origin(conn))
    dns_host = conn._dns_host
    addresses = _resolve(conn, dns_host)
    if not allow_private:
        for address in addresses:
            if not is_public_address(address):
                raise _blocked(address, host)

    sock: socket.socket | None = None
    error: Exception | None = None
    for address in addresses:
        # Make urllib3 connect to the literal address we just checked, so a
        # second DNS answer cannot differ. TLS still uses conn.host for SNI
        # and certificate checks because we restore _dns_host right away.
        conn._dns_host = address
        try:
            sock = connect()
            break
        except NewConnectionError as exc:
            error = exc
        finally:
            conn._dns_host = dns_host
    if sock is None:
        raise error or NewConnectionError(conn, f"no addresses found for {host}")

    _check_peer(conn, sock, allow_private)
    _watch(conn)
    return sock


def _check_peer(conn: HTTPConnection, sock: socket.socket, allow_private: bool | None = None) -> None:
    if allow_private is None:
        allow_private = _trust_now().allows(_conn_origin(conn))
    if allow_private:
        return
    peer = str(sock.getpeername()[0])
    if not is_public_address(peer):
        sock.close()
        raise _blocked(peer, conn.host)


def _before_request(conn: HTTPConnection) -> None:
    _watch(conn)
    if conn.sock is not None:  # reused keep-alive connection: check it again
        try:
            _check_peer(conn, conn.sock)
        except BlockedAddress:
            conn.sock = None
            raise


class _GuardedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _connect_checked(self, super()._new_conn)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _before_request(self)
        super().request(*args, **kwargs)


class _GuardedHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        return _connect_checked(self, super()._new_conn)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _before_request(self)
        super().request(*args, **kwargs)


class _GuardedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedAdapter(HTTPAdapter):
    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _GuardedHTTPConnectionPool,
            "https": _GuardedHTTPSConnectionPool,
        }

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        # A proxy would make the peer-address check meaningless.
        raise OutboundError("proxies are not supported", retryable=False)


# --- session ------------------------------------------------------------------

_session: requests.Session | None = None
_session_lock = threading.Lock()


def _new_session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxies or .netrc from the environment
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))  # no cookies
    adapter = _GuardedAdapter(pool_connections=20, pool_maxsize=20)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    session.headers["Accept-Encoding"] = ACCEPT_ENCODING
    return session


def _get_session() -> requests.Session:
    global _session
    session = _session
    if session is None:
        with _session_lock:
            if _session is None:
                _session = _new_session()
            session = _session
    return session


def _forget_session_after_fork() -> None:
    # A forked child (Celery prefork) must not share pooled sockets or a lock
    # held by some other parent thread; it builds its own session on first use.
    global _session, _session_lock
    _session = None
    _session_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_session_after_fork)


# --- request ------------------------------------------------------------------


def _origin(url: str) -> Origin:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host:
        raise ValueError(url)
    return scheme, _norm_host(host), parts.port or _DEFAULT_PORTS[scheme]


def _label(origin: Origin) -> str:
    scheme, host, port = origin
    shown = f"[{host}]" if ":" in host else host
    return shown if port == _DEFAULT_PORTS[scheme] else f"{shown}:{port}"


def _check_target(url: str, trust: _Trust, allow_http: bool = False) -> Origin:
    try:
        origin = _origin(url)
    except ValueError:
        raise OutboundError(f"invalid URL {url[:200]!r}", retryable=False) from None
    scheme, host, _ = origin
    if trust.allows(origin):
        return origin
    if scheme != "https" and not allow_http:
        raise BlockedAddress(f"refusing plain http:// to {host}: only configured peers may use http")
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return origin  # a name; checked once resolved, at connect time
    if not is_public_address(host):
        raise _blocked(host, host)
    return origin


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [
            current.__cause__,
            current.__context__,
            getattr(current, "reason", None),
        ]
        linked.extend(current.args)
        stack.extend(e for e in linked if isinstance(e, BaseException))


def _translate(exc: requests.RequestException, where: str, deadline: _Deadline) -> OutboundError:
    if deadline.fired or isinstance(exc, requests.Timeout):
        return OutboundError(f"timed out after {deadline.seconds:g}s contacting {where}")
    causes = list(_causes(exc))
    if isinstance(exc, requests.exceptions.SSLError):
        return OutboundError(f"TLS handshake with {where} failed")
    if isinstance(exc, requests.ConnectionError):
        if any(isinstance(c, NameResolutionError) for c in causes):
            return OutboundError(f"could not resolve {where}")
        if any(isinstance(c, ConnectionRefusedError) for c in causes):
            return OutboundError(f"connection to {where} refused")
        if any(isinstance(c, (ConnectionResetError, Urllib3Error)) for c in causes):
            return OutboundError(f"connection to {where} was closed unexpectedly")
        return OutboundError(f"could not connect to {where}")
    if isinstance(
        exc,
        (
            requests.exceptions.InvalidURL,
            requests.exceptions.InvalidHeader,
            requests.exceptions.InvalidSchema,
            requests.exceptions.MissingSchema,
        ),
    ):
        return OutboundError(f"invalid request to {where}", retryable=False)
    return OutboundError(f"request to {where} failed")


def _send(
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
    timeout: float,
    deadline: _Deadline,
    where: str,
) -> requests.Response:
    remaining = deadline.remaining()
    if remaining <= 0:
        raise OutboundError(f"timed out after {timeout:g}s contacting {where}")
    per_op = min(timeout, remaining)
    try:
        return _get_session().request(
            method,
            url,
            headers=headers,
            data=body,
            timeout=(per_op, per_op),
            allow_redirects=False,
            stream=True,
        )
    except requests.RequestException as exc:
        raise _translate(exc, where, deadline) from exc
    except ValueError as exc:  # e.g. a host name IDNA refuses, or a redirect's Location that is not UTF-8
        raise OutboundError(
            f"request to {where} failed: a host or header that cannot be read", retryable=False
        ) from exc


def _read_body(
    resp: requests.Response, max_bytes: int, deadline: _Deadline, where: str, sink: IO[bytes] | None = None
) -> bytes:
    length = resp.headers.get("content-length", "").strip()
    if length.isascii() and length.isdigit() and int(length) > max_bytes:  # "²" is a digit to isdigit()
        raise ResponseTooLarge(f"response from {where} is {int(length)} bytes, over the {max_bytes}-byte limit")
    chunks: list[bytes] = []
    total = 0
    try:
        while True:
            if deadline.remaining() <= 0:
                raise OutboundError(f"timed out after {deadline.seconds:g}s contacting {where}")
            # read1 returns whatever has arrived (up to amt), so the size and
            # deadline checks run between network reads.
            amount = min(_CHUNK_SIZE, max_bytes + 1 - total)
            chunk: bytes = resp.raw.read1(amount, decode_content=True)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise ResponseTooLarge(f"response from {where} exceeded the {max_bytes}-byte limit")
            if sink is not None:
                sink.write(chunk)  # large downloads go to a file, not memory
            else:
                chunks.append(chunk)
    except (Urllib3Error, OSError) as exc:
        if deadline.fired:
            raise OutboundError(f"timed out after {deadline.seconds:g}s contacting {where}") from exc
        raise OutboundError(f"connection to {where} broke while reading the response") from exc
    return b"".join(chunks)


def _without(headers: dict[str, str], *names: str) -> dict[str, str]:
    drop = {n.lower() for n in names}
    return {k: v for k, v in headers.items() if k.lower() not in drop}


def request(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    max_bytes: int = 1_048_576,
    timeout: float | None = None,
    extra_private_hosts: frozenset[str] = frozenset(),
    allow_http: bool = False,
    refuse_peer_hosts: bool = False,
    sink: IO[bytes] | None = None,
) -> Response:
    """Send one server-to-server request; see the module docstring for the rules.

    Any HTTP status is returned as a :class:`Response`; problems reaching the
    server, or with what it sends, raise :class:`OutboundError`. With ``sink``,
    a 2xx body is written there (``content`` is then empty) and ``max_bytes``
    caps it; other answers are read into memory, capped at 64 KiB.
    """
    seconds = default_timeout() if timeout is None else float(timeout)
    if seconds <= 0:
        raise ValueError("timeout must be positive")
    extra = frozenset(_norm_host(h) for h in extra_private_hosts)
    peers = frozenset(allowed_peer_origins())
    # A caller that must not reach the peers (the image proxy) gets no exception for them either.
    trust = _Trust(origins=frozenset() if refuse_peer_hosts else peers, hosts=extra)
    # allow_http: plain http to public addresses (the image proxy); private ones still need allowing.
    origin = _check_target(url, trust, allow_http) if allow_http else _check_target(url, trust)
    where = _label(origin)
    if refuse_peer_hosts and origin[1] in allowed_private_hosts() and origin[1] not in extra:
        raise BlockedAddress(f"refusing to connect to {where}: the host of a configured peer")
    send_headers = {"User-Agent": USER_AGENT, **(headers or {})}
    method = method.upper()

    _local.trust = trust
    with _Deadline(seconds) as deadline, _forget_trust():
        for redirects in range(MAX_REDIRECTS + 1):
            resp = _send(method, url, send_headers, body, seconds, deadline, where)
            try:
                location = resp.headers.get("location")
                status = resp.status_code
                if status in _REDIRECT_STATUSES and location:
                    url = _follow(url, location, origin, redirects)
                    if status == 303 or (status in (301, 302) and method == "POST"):
                        method = "GET" if method != "HEAD" else method
                        body = None
                        send_headers = _without(send_headers, "Content-Type", "Content-Length")
                    continue
                coding = resp.headers.get("content-encoding", "").strip().lower()
                if coding not in _ACCEPTED_CODINGS:
                    raise OutboundError(
                        f"{where} answered with Content-Encoding {coding[:40]!r}; only gzip or none is accepted"
                    )
                if sink is not None and 200 <= status < 300:
                    content = _read_body(resp, max_bytes, deadline, where, sink)
                else:
                    cap = max_bytes if sink is None else 65536  # an error answer, whatever the file's cap
                    content = _read_body(resp, cap, deadline, where)
                return Response(
                    status=status,
                    headers={k.lower(): v for k, v in resp.headers.items()},
                    content=content,
                    url=resp.url,
                )
            finally:
                resp.close()
    raise AssertionError("unreachable")  # pragma: no cover


@contextmanager
def _forget_trust() -> Iterator[None]:
    try:
        yield
    finally:
        _local.trust = None


def _follow(url: str, location: str, origin: Origin, redirects: int) -> str:
    """The redirect target, if it may be followed."""
    where = _label(origin)
    if redirects >= MAX_REDIRECTS:
        raise RedirectRefused(f"too many redirects from {where} (limit {MAX_REDIRECTS})")
    try:
        target = urljoin(url, location)  # raises on e.g. "http://[abc"
        target_origin = _origin(target)
    except ValueError:
        raise RedirectRefused(f"refusing redirect from {where} to invalid URL {location[:200]!r}") from None
    if target_origin != origin:
        raise RedirectRefused(
            f"refusing redirect from {origin[0]}://{where} "
            f"to {target_origin[0]}://{_label(target_origin)}: "
            "only same-origin redirects are followed"
        )
    return target
