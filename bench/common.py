"""Helpers shared by the benchmarks: backends, request signing, raw HTTP, CPU accounting, output.

The signer here is written against http-message-signatures directly, as a
third-party implementation would, following docs/protocol.md §3; it does not
import the application's own signing code.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from http_message_signatures import HTTPMessageSigner, HTTPSignatureKeyResolver, algorithms

from tools.cluster import Backend, Instance

ROOT = Path(__file__).resolve().parent.parent
CORES = os.cpu_count() or 1


# --- backends ---------------------------------------------------------------


def server_backend() -> Backend:
    """PostgreSQL + Redis on loopback. Redis database numbers start above PUSHMAIL_BENCH_REDIS_DB
    (default 13, so instances get 14 and 15) to keep clear of the test suite's."""
    backend = Backend(
        postgres=os.environ.get("PUSHMAIL_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432"),
        redis=os.environ.get("PUSHMAIL_BENCH_REDIS", "redis://127.0.0.1:6379"),
    )
    backend._redis_db = int(os.environ.get("PUSHMAIL_BENCH_REDIS_DB", "13"))
    return backend


# Production-like settings for instances under measurement: no DEBUG (which
# records every SQL query in memory), warnings only in the logs.
PRODUCTION_ENV = {"DEBUG": "0", "LOG_LEVEL": "WARNING"}


def create_mailboxes_code(addresses: Sequence[str], *, tokens: bool = False) -> str:
    """Python for ``Instance.shell``: create mailboxes quickly (a cheap password hasher is
    fine for benchmark fixtures) and print a JSON map address -> API token (or "")."""
    return (
        "import json\n"
        "from django.test.utils import override_settings\n"
        "from accounts.models import User\n"
        "from accounts.services import create_mailbox, issue_api_token\n"
        f"addresses = {list(addresses)!r}\n"
        "out = {}\n"
        "with override_settings(PASSWORD_HASHERS=['django.contrib.auth.hashers.MD5PasswordHasher']):\n"
        "    for a in addresses:\n"
        "        u = User.objects.filter(email=a).first() or create_mailbox(address=a, password='bench-pw-1')\n"
        f"        out[a] = issue_api_token(user=u, name='bench') if {tokens!r} else ''\n"
        "print(json.dumps(out))\n"
    )


def signing_key_of(instance: Instance, domain: str) -> tuple[str, str]:
    """(key id, base64 Ed25519 seed) of a hosted domain's current key."""
    out = instance.shell(
        "from federation.keys import b64, current_key, private_key_of, raw_seed\n"
        f"k = current_key({domain!r})\nprint(k.key_id)\nprint(b64(raw_seed(private_key_of(k))))\n"
    )
    key_id, seed = out.strip().splitlines()[-2:]
    return key_id, seed


# --- signing ------------------------------------------------------------------


@dataclass
class _Message:
    method: str
    url: str
    headers: dict[str, str]


class _Keys(HTTPSignatureKeyResolver):
    def __init__(self, private: Ed25519PrivateKey) -> None:
        self.private = private

    def resolve_private_key(self, key_id: str) -> Ed25519PrivateKey:
        return self.private

    def resolve_public_key(self, key_id: str):  # type: ignore[no-untyped-def]
        raise NotImplementedError


class Signer:
    """Signs requests as docs/protocol.md §3 says: label ``pm``, tag ``pushmail``,
    ``@method @authority @path @query`` (+ ``content-digest`` with a body), created, nonce."""

    def __init__(self, key_id: str, seed_b64: str) -> None:
        self.key_id = key_id
        private = Ed25519PrivateKey.from_private_bytes(base64.b64decode(seed_b64))
        self._signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=_Keys(private))

    def sign(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None) -> dict[str, str]:
        message = _Message(method=method.upper(), url=url, headers=dict(headers))
        self._signer.sign(
            message,
            key_id=self.key_id,
            label="pm",
            tag="pushmail",
            nonce=secrets.token_urlsafe(16),
            created=datetime.now(UTC),
            covered_component_ids=("@method", "@authority", "@path", "@query"),
            body=body or None,
        )
        return message.headers


def raw_request(method: str, url: str, headers: Mapping[str, str], body: bytes = b"") -> bytes:
    """A complete HTTP/1.1 request on one connection (``Connection: close``)."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def http_json(
    method: str, url: str, *, token: str | None = None, payload: object = None, timeout: float = 30
) -> tuple[int, object]:
    """A small blocking JSON call over http.client, one connection per call."""
    import http.client

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = None
    if payload is not None:
        body = json.dumps(payload).encode()
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, (json.loads(data) if data else None)
    finally:
        conn.close()


# --- CPU accounting -------------------------------------------------------------


def _proc_stat_total() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields), idle


def _uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def _process_times() -> dict[int, tuple[str, int, float, float]]:
    """pid -> (command name, process group, CPU seconds used so far, start time in seconds since boot)."""
    tick = os.sysconf("SC_CLK_TCK")
    result = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        rest = raw[raw.rindex(")") + 2 :].split()
        pgrp = int(rest[2])
        cpu = (int(rest[11]) + int(rest[12])) / tick
        result[int(entry.name)] = (comm, pgrp, cpu, int(rest[19]) / tick)
    return result


@dataclass
class CpuSample:
    started: float
    total: tuple[int, int]
    procs: dict[int, tuple[str, int, float, float]]
    load: tuple[float, float, float]
    uptime: float = 0.0


def cpu_sample() -> CpuSample:
    return CpuSample(time.monotonic(), _proc_stat_total(), _process_times(), os.getloadavg(), _uptime())


@dataclass
class CpuReport:
    seconds: float
    machine_busy_pct: float
    by_group: dict[str, float] = field(default_factory=dict)  # CPU seconds
    loadavg_before: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def to_json(self) -> dict[str, object]:
        capacity = self.seconds * CORES
        return {
            "seconds": round(self.seconds, 3),
            "machine_busy_pct": round(self.machine_busy_pct, 1),
            "loadavg_1m_before": round(self.loadavg_before[0], 2),
            "cpu_share_pct": {k: round(100 * v / capacity, 1) for k, v in sorted(self.by_group.items())},
            # Busy time no live process accounts for: mostly processes that ended
            # during the run (e.g. database backends recycled by CONN_MAX_AGE).
            "unattributed_pct": round(self.machine_busy_pct - 100 * sum(self.by_group.values()) / capacity, 1),
        }

    def summary(self) -> str:
        shares = ", ".join(f"{k} {v}%" for k, v in self.to_json()["cpu_share_pct"].items())  # type: ignore[union-attr]
        shares += f", unattributed {self.to_json()['unattributed_pct']}%"
        return f"machine {self.machine_busy_pct:.0f}% busy ({CORES} cores): {shares}"


def cpu_report(before: CpuSample, groups: Mapping[str, Iterable[int]]) -> CpuReport:
    """CPU used since ``before``, split into named process groups (by process group id),
    the benchmark process itself, PostgreSQL, Redis and everything else on the machine."""
    after = cpu_sample()
    total = after.total[0] - before.total[0]
    idle = after.total[1] - before.total[1]
    pgid_to_group = {pgid: name for name, pgids in groups.items() for pgid in pgids}
    used: dict[str, float] = {}
    me = os.getpid()
    for pid, (comm, pgrp, cpu, started) in after.procs.items():
        prev = before.procs.get(pid)
        if prev is not None and prev[3] == started:
            delta = cpu - prev[2]
        elif started >= before.uptime - 0.1:
            delta = cpu  # started during the run
        else:
            continue  # existed before but was not read then: its share is left unattributed
        if delta <= 0:
            continue
        if pid == me:
            name = "load generator (this process)"
        elif pgrp in pgid_to_group:
            name = pgid_to_group[pgrp]
        elif comm.startswith("postgres"):
            name = "postgresql"
        elif comm.startswith("redis"):
            name = "redis"
        else:
            name = "other processes"
        used[name] = used.get(name, 0.0) + delta
    return CpuReport(
        seconds=after.started - before.started,
        machine_busy_pct=100.0 * (total - idle) / total if total else 0.0,
        by_group=used,
        loadavg_before=before.load,
    )


def pgid_of(proc: subprocess.Popen[bytes] | None) -> list[int]:
    return [os.getpgid(proc.pid)] if proc and proc.poll() is None else []


# --- output ------------------------------------------------------------------------


def machine() -> dict[str, object]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "commit": commit,
        "cores": CORES,
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def emit(record: Mapping[str, object]) -> None:
    """One JSON line on stdout, for docs/benchmarks.md and for scripts."""
    print(json.dumps(record, sort_keys=False), flush=True)


def log(*args: object) -> None:
    print("[bench]", *args, file=sys.stderr, flush=True)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    rows = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), int(-(-pct * len(ordered) // 100))))
    return ordered[rank - 1]


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def machine_busy(seconds: float = 2.0) -> float:
    """Percent of all cores busy over the next ``seconds``."""
    before = _proc_stat_total()
    time.sleep(seconds)
    after = _proc_stat_total()
    total = after[0] - before[0]
    return 100.0 * (total - (after[1] - before[1])) / total if total else 0.0


def wait_for_quiet(max_busy: float, timeout: float) -> float:
    """Wait (up to ``timeout`` s) until other work on the machine is below ``max_busy`` percent;
    return the last reading. The machine is shared, so a run may still start on a busy machine:
    the CPU accounting of each run says how busy it was."""
    deadline = time.monotonic() + timeout
    busy = machine_busy()
    while busy > max_busy and time.monotonic() < deadline:
        log(f"machine {busy:.0f}% busy; waiting for it to drop below {max_busy:.0f}%")
        busy = machine_busy(5.0)
    return busy
