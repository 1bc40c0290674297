"""Two real Pushmail instances and Debian's Chromium, for the browser tests and tools/screenshots.py.

The instances are alpha.localhost and beta.localhost: real gunicorn + Celery (worker with
beat) processes from tools/cluster.py, each with its own database, on ports in 18800-18999.
Chromium resolves every *.localhost name to loopback, and distinct host names keep the two
instances' login cookies apart. No browser is ever downloaded: Playwright drives
/usr/bin/chromium (the Debian package).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import zlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from tools.cluster import Backend, Instance, make_cluster

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PORTS = range(18800, 19000)
PASSWORD = "correct-horse-battery"
# Redis database numbers for the browser instances: 6 and 7 (integration tests use 9 and up, benchmarks 14 and up).
REDIS_DB_BASE = 5

# Short timings so sweeps, retries and the undo window pass within a test's patience.
FAST_ENV = {
    "PUSHMAIL_SWEEP_SECONDS": "1",
    "PUSHMAIL_RETRY_BASE_SECONDS": "0.5",
    "PUSHMAIL_RETRY_CAP_SECONDS": "3",
    "PUSHMAIL_CLAIM_SECONDS": "5",
    "PUSHMAIL_SWEEP_GRACE_SECONDS": "2",
    "PUSHMAIL_UNDO_SEND_SECONDS": "3",
    # Accounts a test makes are minutes old: their spam reports count whole here (how a new
    # account's count less is tested in tests/unit/test_spam_trust.py).
    "PUSHMAIL_SPAM_TRUSTED_AFTER_DAYS": "0",
}


def is_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def port_in_range(start: int = PORTS.start, stop: int = PORTS.stop, avoid: Iterable[int] = ()) -> int:
    """A free loopback port in [start, stop)."""
    avoid = set(avoid)
    for port in range(start, stop):
        if port in avoid:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {start}-{stop - 1}")


def launch_chromium(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)


@dataclass
class Mailbox:
    """A user on one instance: the browser logs in with address and password, the API uses the token."""

    inst: Instance
    address: str
    password: str
    token: str

    @property
    def origin(self) -> str:
        return origin(self.inst)

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(
            method,
            f"{self.inst.base_url}/api/v1/{path}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
            **kwargs,
        )


def origin(inst: Instance) -> str:
    """What the browser uses: the instance's domain name (a *.localhost name) and its port."""
    return f"http://{inst.domains[0]}:{inst.port}"


def start_pair(
    base_dir: Path,
    *,
    prefix: str,
    ports: tuple[int, int] | None = None,
    backend: Backend | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Instance]:
    """Set up and start alpha.localhost and beta.localhost, peers of each other, in parallel."""
    backend = backend or Backend.from_env()
    backend._redis_db = REDIS_DB_BASE
    if ports is None:
        first = port_in_range()
        ports = (first, port_in_range(avoid={first}))
    specs = {f"{prefix}_alpha": ["alpha.localhost"], f"{prefix}_beta": ["beta.localhost"]}
    instances = make_cluster(base_dir, specs, backend=backend)
    for inst, port in zip(instances.values(), ports, strict=True):
        inst.port = port
        inst.extra_env = {**FAST_ENV, **(env or {})}
    peers = {inst.domains[0]: inst.base_url for inst in instances.values()}
    for inst in instances.values():
        inst.peers = dict(peers)
        inst.env()  # allocate Redis database numbers before the threads start

    def bring_up(inst: Instance) -> None:
        inst.setup()
        inst.start()

    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(bring_up, instances.values()))
    except BaseException:
        stop_all(instances.values())
        raise
    return {name.rpartition("_")[2]: inst for name, inst in instances.items()}


def stop_all(instances: Iterable[Instance]) -> None:
    """Kill every process group the instances started (web server, worker, beat)."""

    def down(inst: Instance) -> None:
        inst.kill_worker()
        inst.stop()

    instances = list(instances)
    with ThreadPoolExecutor(len(instances) or 1) as pool:
        list(pool.map(down, instances))


def create_mailboxes(inst: Instance, addresses: list[str], password: str = PASSWORD) -> dict[str, Mailbox]:
    """Mailboxes (and an API token each) made with the account services, in one Django start."""
    out = inst.shell(
        "import json\n"
        "from accounts.services import create_mailbox, issue_api_token\n"
        "out = {}\n"
        f"for a in {addresses!r}:\n"
        f"    out[a] = issue_api_token(user=create_mailbox(address=a, password={password!r}), name='browser tests')\n"
        "print(json.dumps(out))\n"
    )
    tokens = json.loads(out.strip().splitlines()[-1])
    return {a: Mailbox(inst, a, password, tokens[a]) for a in addresses}


def shell_json(inst: Instance, code: str) -> Any:
    """Run ``code`` in the instance's Django context; it must print one JSON document last."""
    return json.loads(inst.shell(code).strip().splitlines()[-1])


def make_png(width: int, height: int, rgb: tuple[int, int, int] = (46, 125, 50)) -> bytes:
    """A valid PNG of one colour (no imaging library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb) * width
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


# What the local "remote image" server answers.
PIXEL_PNG = make_png(1, 1)


class CountingServer:
    """A local HTTP server standing in for a tracker's host: it counts every request it gets."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.hits: list[tuple[str, str]] = []  # (path, User-Agent) of every request
        lock = threading.Lock()
        seen = self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                with lock:
                    seen.append((self.path, self.headers.get("User-Agent", "")))
                content_type = "text/css" if self.path.endswith(".css") else "image/png"
                body = b"body{background:red}" if content_type == "text/css" else PIXEL_PNG
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def requests(self) -> list[str]:
        return [path for path, _ in self.hits]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> CountingServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def login(page: Any, user: Mailbox, *, password: str | None = None) -> None:
    """Log in on the user's instance with address and password (no second factor)."""
    page.goto(f"{user.origin}/accounts/login/")
    page.locator('input[name="login"]').fill(user.address)
    page.locator('input[name="password"]').fill(password or user.password)
    page.locator('input[name="password"]').press("Enter")
    page.wait_for_load_state()
