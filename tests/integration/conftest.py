"""Two-instance tests: real Pushmail instances as separate processes on loopback.

Each instance is a gunicorn web server plus a Celery worker with beat, with its
own database and broker (tools/cluster.py). With PUSHMAIL_TEST_POSTGRES and
PUSHMAIL_TEST_REDIS set they use PostgreSQL and Redis; otherwise SQLite files
and kombu's filesystem broker. With CI=true an unreachable (or unconfigured)
PostgreSQL or Redis fails every test here instead of skipping it.

Instances start once per test module; every test makes its own mailboxes and
messages so tests do not see each other's mail.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests

from tools.cluster import Backend, Instance, free_port, log_tails, make_cluster

T = TypeVar("T")

# Short timings so retries, sweeps and claims happen within a test's patience.
FAST_ENV = {
    "PUSHMAIL_SWEEP_SECONDS": "1",
    "PUSHMAIL_RETRY_BASE_SECONDS": "0.5",
    "PUSHMAIL_RETRY_CAP_SECONDS": "3",
    "PUSHMAIL_CLAIM_SECONDS": "5",
    "PUSHMAIL_SWEEP_GRACE_SECONDS": "2",
    # Test peers are new to each other: without this their bursts would meet the new-origin rate
    # (tests/integration/test_origin_reputation.py sets its own).
    "PUSHMAIL_NEW_ORIGIN_RATE_PER_MINUTE": "1000000",
    # Accounts a test makes are minutes old: their spam reports count whole here (how a new
    # account's count less is tested in tests/unit/test_spam_trust.py).
    "PUSHMAIL_SPAM_TRUSTED_AFTER_DAYS": "0",
}
# Redis database numbers below this are left to the demo and other tools.
REDIS_DB_BASE = 8
PASSWORD = "correct-horse-battery"

_LIVE: list[Instance] = []  # instances whose logs a failing test report shows


# --- Backend selection and the CI rule ---------------------------------------------------


def _backend() -> Backend:
    return Backend.from_env()


def _is_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def backend_problem(backend: Backend) -> str | None:
    """Why the configured backend cannot be used, or None when it can."""
    if _is_ci() and not (backend.postgres and backend.redis):
        return (
            "CI=true but PUSHMAIL_TEST_POSTGRES and PUSHMAIL_TEST_REDIS are not both set: "
            "CI must run the two-instance tests on PostgreSQL and Redis"
        )
    if backend.postgres:
        import psycopg

        try:
            with psycopg.connect(backend.postgres.rstrip("/") + "/postgres", connect_timeout=5) as conn:
                conn.execute("SELECT 1")
        except Exception as exc:
            return f"PostgreSQL at {backend.postgres} (PUSHMAIL_TEST_POSTGRES) is unreachable: {exc}"
    if backend.redis:
        import redis

        try:
            redis.Redis.from_url(backend.redis, socket_connect_timeout=5).ping()
        except Exception as exc:
            return f"Redis at {backend.redis} (PUSHMAIL_TEST_REDIS) is unreachable: {exc}"
    return None


def pytest_report_header(config: pytest.Config) -> str:
    return f"two-instance tests: {_backend().description}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    # The header above only shows when this directory is named on the command
    # line; the summary line shows whenever these tests were collected.
    reports = (r for kind in terminalreporter.stats.values() for r in kind)
    if any(str(getattr(r, "nodeid", "")).startswith("tests/integration/") for r in reports):
        terminalreporter.write_line(f"two-instance tests ran on {_backend().description}")


@pytest.fixture(scope="session", autouse=True)
def integration_backend() -> Backend:
    """Checked once per session: a CI run without PostgreSQL and Redis fails, it never skips."""
    backend = _backend()
    problem = backend_problem(backend)
    if problem:
        pytest.fail(problem, pytrace=False)
    return backend


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when in ("setup", "call"):
        report.sections.extend(log_tails(list(_LIVE)))


# --- Starting clusters ------------------------------------------------------------------------


class Cluster(dict[str, Instance]):
    """Instances by name, stopped together."""

    def stop(self) -> None:
        def down(inst: Instance) -> None:
            inst.kill_worker()  # a graceful worker shutdown is not under test here, and takes seconds
            inst.stop()

        with ThreadPoolExecutor(len(self) or 1) as pool:
            list(pool.map(down, self.values()))
        for inst in self.values():
            if inst in _LIVE:
                _LIVE.remove(inst)


def start_cluster(
    base_dir: Path,
    specs: dict[str, list[str]],
    *,
    env: dict[str, dict[str, str]] | None = None,
    extra_peers: dict[str, dict[str, str]] | None = None,
    backend: Backend | None = None,
    **instance_options: Any,
) -> Cluster:
    """Set up and start ``specs`` (name -> domains), each a peer of the others, in parallel.

    ``backend`` replaces the configured one (a test may add a RabbitMQ broker to it);
    ``instance_options`` go to each :class:`Instance` (``celery_workers``, ``web_workers``...)."""
    backend = backend or _backend()
    backend._redis_db = REDIS_DB_BASE
    cluster = Cluster(make_cluster(base_dir, specs, backend=backend, **instance_options))
    for name, inst in cluster.items():
        inst.extra_env = {**FAST_ENV, **(env or {}).get(name, {})}
        inst.peers.update((extra_peers or {}).get(name, {}))
        inst.env()  # allocate Redis database numbers before the threads start
    _LIVE.extend(cluster.values())

    def bring_up(inst: Instance) -> None:
        inst.setup()
        inst.start()

    try:
        with ThreadPoolExecutor(len(cluster)) as pool:
            list(pool.map(bring_up, cluster.values()))
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextlib.contextmanager
def second_web(inst: Instance) -> Iterator[Instance]:
    """Another web server of the same instance (same database, cache and broker) on its own port."""
    other = dataclasses.replace(inst, port=free_port(), web=None, worker=None)
    _LIVE.append(other)
    try:
        other.start_web()
        yield other
    finally:
        other.stop_web()
        _LIVE.remove(other)


# --- Waiting ------------------------------------------------------------------------------------


def wait_for(what: str, probe: Callable[[], T], timeout: float = 30.0, interval: float = 0.2) -> T:
    """Call ``probe`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except (requests.ConnectionError, requests.Timeout) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")
        time.sleep(interval)


def wait_for_all(what: str, done: Callable[[], int], total: int, *, stall: float = 60.0, interval: float = 0.5) -> None:
    """Wait until ``done()`` reaches ``total``; fail naming ``what`` once it has not moved for ``stall`` seconds.

    For work drained by a backlog: a slow machine only makes it take longer, while a row that is
    really lost (stuck claimed, never queued again) stops the count, and the wait fails.
    """
    last, moved = -1, time.monotonic()
    while True:
        now_done = done()
        if now_done >= total:
            return
        if now_done != last:
            last, moved = now_done, time.monotonic()
        elif time.monotonic() - moved >= stall:
            raise AssertionError(f"{what}: stuck at {now_done} of {total} for {stall:.0f}s")
        time.sleep(interval)


# --- Users and the REST API -----------------------------------------------------------------


class Api:
    """One user acting through the REST API with a Bearer token."""

    def __init__(self, inst: Instance, address: str, token: str) -> None:
        self.inst = inst
        self.address = address
        self.token = token
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def __repr__(self) -> str:
        return f"<Api {self.address}>"

    def clone(self) -> Api:
        """Same user, own HTTP session (for use from another thread)."""
        return Api(self.inst, self.address, self.token)

    def url(self, path: str) -> str:
        return f"{self.inst.base_url}/api/v1/{path}"

    def send(
        self, *, to: list[str], subject: str, text: str, cc: list[str] | None = None, bcc: list[str] | None = None
    ) -> dict:
        response = self.session.post(
            self.url("messages/"),
            json={"to": to, "cc": cc or [], "bcc": bcc or [], "subject": subject, "text": text},
            timeout=30,
        )
        assert response.status_code == 201, response.text
        return response.json()

    def message(self, message_id: str) -> dict:
        response = self.session.get(self.url(f"messages/{message_id}/"), timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def delivery(self, message_id: str, domain: str) -> dict:
        return next(d for d in self.message(message_id)["deliveries"] if d["domain"] == domain)

    def withdraw(self, message_id: str) -> dict:
        response = self.session.post(self.url(f"messages/{message_id}/withdraw/"), timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def inbox(self) -> list[dict]:
        entries: list[dict] = []
        url: str | None = self.url("inbox/")
        while url:
            response = self.session.get(url, timeout=30)
            assert response.status_code == 200, response.text
            page = response.json()
            entries.extend(page["results"])
            url = page.get("next")
        return entries

    def entry_with_subject(self, subject: str, timeout: float = 30.0) -> dict:
        """Wait until the inbox lists an entry with this subject (without opening it)."""
        return wait_for(
            f"{subject!r} in the inbox of {self.address}",
            lambda: next((e for e in self.inbox() if e["subject"] == subject), None),
            timeout=timeout,
        )

    def listed_state(self, entry_id: int) -> str | None:
        """The entry's state as the inbox list shows it; listing does not open anything."""
        return next((e["state"] for e in self.inbox() if e["id"] == entry_id), None)

    def open(self, entry_id: int) -> tuple[int, dict]:
        response = self.session.get(self.url(f"inbox/{entry_id}/"), timeout=30)
        assert response.status_code in (200, 202), response.text
        return response.status_code, response.json()

    def read_until(self, entry_id: int, state: str, timeout: float = 30.0) -> dict:
        """Open the entry, polling as a client does, until it reaches ``state``; return it."""

        def probe() -> dict | None:
            status, data = self.open(entry_id)
            return data if data["state"] == state and (status == 200) else None

        return wait_for(f"entry {entry_id} of {self.address} to be {state!r}", probe, timeout=timeout)


def unique(prefix: str = "") -> str:
    return f"{prefix}{secrets.token_hex(6)}"


def shell_json(inst: Instance, code: str) -> Any:
    """Run ``code`` in the instance's Django context; it must print one JSON document last."""
    out = inst.shell(code)
    return json.loads(out.strip().splitlines()[-1])


def mailboxes(inst: Instance, count: int, *, prefix: str = "u", domain: str | None = None) -> list[Api]:
    """Create ``count`` fresh mailboxes on ``inst`` and return an API client for each."""
    domain = domain or inst.domains[0]
    addresses = [f"{prefix}-{unique()}@{domain}" for _ in range(count)]
    tokens = shell_json(
        inst,
        "import json\n"
        "from accounts.services import create_mailbox, issue_api_token\n"
        "out = {}\n"
        f"for a in {addresses!r}:\n"
        f"    out[a] = issue_api_token(user=create_mailbox(address=a, password={PASSWORD!r}), name='tests')\n"
        "print(json.dumps(out))\n",
    )
    return [Api(inst, address, tokens[address]) for address in addresses]


# --- Looking at stored state -------------------------------------------------------------------


def sql(inst: Instance, query: str) -> list[tuple]:
    """Read-only SQL against an instance's database (the query must work on PostgreSQL and SQLite)."""
    if inst.backend.postgres:
        import psycopg

        with psycopg.connect(inst.database_url, autocommit=True) as conn:
            return list(conn.execute(query).fetchall())
    conn = sqlite3.connect(inst.data_dir / "pushmail.sqlite3", timeout=30)
    try:
        return list(conn.execute(query).fetchall())
    finally:
        conn.close()


def database_bytes(inst: Instance) -> bytes:
    """Everything the instance's database holds: a pg_dump, or the SQLite file and its WAL."""
    if inst.backend.postgres:
        result = subprocess.run(
            ["pg_dump", "--no-owner", "--data-only", inst.database_url], capture_output=True, timeout=120
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        return result.stdout
    parts = []
    for suffix in ("", "-wal"):
        path = Path(str(inst.data_dir / "pushmail.sqlite3") + suffix)
        if path.exists():
            parts.append(path.read_bytes())
    return b"".join(parts)


def stored_files_bytes(inst: Instance) -> dict[Path, bytes]:
    """Every file under the instance's data folder (media, broker folder, logs, database files)."""
    return {path: path.read_bytes() for path in inst.data_dir.rglob("*") if path.is_file()}


def holds(blob: bytes, token: str) -> bool:
    """True when ``token`` is in ``blob`` as text, or hex-encoded as pg_dump writes bytea."""
    return token.encode() in blob or token.encode().hex().encode() in blob
