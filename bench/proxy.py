"""A byte-counting TCP proxy on loopback, for measuring HTTP traffic on the wire.

Each proxy listens on its own port and relays to one instance. It counts every
byte in both directions (request and response lines, headers and bodies) per
TCP connection, and notes each connection's first request line and status, so
traffic can be sorted into notifications, body fetches and discovery.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from dataclasses import dataclass, field

_REQUEST_END = re.compile(rb" HTTP/1\.[01]\r\n")


@dataclass
class Connection:
    proxy: str
    up: int = 0  # client -> server: request bytes
    down: int = 0  # server -> client: response bytes
    requests: int = 0  # request lines seen (gunicorn's sync workers allow one per connection)
    response_head: bytearray = field(default_factory=bytearray, repr=False)
    _up_head: bytearray = field(default_factory=bytearray, repr=False)

    @property
    def request_line(self) -> str:
        return bytes(self._up_head).split(b"\r\n", 1)[0].decode("latin-1")

    @property
    def status(self) -> int:
        line = bytes(self.response_head).split(b"\r\n", 1)[0].split()
        return int(line[1]) if len(line) > 1 and line[1].isdigit() else 0

    @property
    def content_coded(self) -> bool:
        """The response carried a Content-Encoding (e.g. gzip)."""
        head = bytes(self.response_head).split(b"\r\n\r\n", 1)[0].lower()
        return b"\r\ncontent-encoding:" in head

    def heads(self) -> tuple[str, str]:
        """Request and response headers, as sent."""
        request = bytes(self._up_head).split(b"\r\n\r\n", 1)[0].decode("latin-1")
        response = bytes(self.response_head).split(b"\r\n\r\n", 1)[0].decode("latin-1")
        return request, response

    @property
    def kind(self) -> str:
        method, _, rest = self.request_line.partition(" ")
        path = rest.split(" ", 1)[0]
        if path.startswith("/.well-known/pushmail"):
            return "discovery"
        if method == "POST" and path.startswith("/federation/v1/notifications"):
            return "notification"
        if method == "GET" and path.startswith("/federation/v1/messages/") and path.endswith("/body"):
            return "fetch"
        if path.startswith("/federation/v1/withdrawals"):
            return "withdrawal"
        return "other"


def hold_ports(count: int) -> list[socket.socket]:
    """Bound sockets on distinct free ports; close them just before the servers bind."""
    held = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        held.append(sock)
    return held


class Proxies:
    """Any number of counting proxies served by one event loop in a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="counting-proxies", daemon=True)
        self.thread.start()
        self.connections: list[Connection] = []
        self._lock = threading.Lock()
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task[None] | None] = set()

    def add(self, name: str, target_port: int) -> int:
        """Start a proxy to 127.0.0.1:target_port; return the port it listens on."""

        async def start() -> int:
            server = await asyncio.start_server(
                lambda r, w: self._relay(name, target_port, r, w), "127.0.0.1", 0, backlog=512
            )
            self._servers.append(server)
            return int(server.sockets[0].getsockname()[1])

        return asyncio.run_coroutine_threadsafe(start(), self.loop).result(timeout=10)

    def take(self) -> list[Connection]:
        """Connections opened since the last call (their bytes so far)."""
        with self._lock:
            done, self.connections = self.connections, []
        return done

    def close(self) -> None:
        async def stop() -> None:
            for server in self._servers:
                server.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    async def _relay(
        self, name: str, target_port: int, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        # Registered before any byte moves, and counted as bytes pass, so a
        # connection still open when the counts are taken is not lost.
        conn = Connection(proxy=name)
        with self._lock:
            self.connections.append(conn)
        # The event loop holds tasks only weakly: keep this one until it is done.
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client_w.close()
            self._tasks.discard(task)
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: bool) -> None:
            try:
                while data := await src.read(65536):
                    if upstream:
                        conn.up += len(data)
                        if len(conn._up_head) < 4096:
                            conn._up_head += data[:4096]
                        conn.requests += len(_REQUEST_END.findall(data))
                    else:
                        conn.down += len(data)
                        if len(conn.response_head) < 4096:
                            conn.response_head += data[:4096]
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass

        upstream = asyncio.create_task(pipe(client_r, server_w, True))
        try:
            # gunicorn's sync workers close the connection after each response,
            # so the server's end of stream means the exchange is complete.
            await pipe(server_r, client_w, False)
            await asyncio.wait([upstream], timeout=0.5)
        finally:
            for writer in (client_w, server_w):
                writer.close()
            upstream.cancel()
            self._tasks.discard(task)
