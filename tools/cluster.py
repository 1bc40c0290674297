"""Run several Pushmail instances side by side on loopback, each as real processes.

Used by the demo (``python -m tools.demo``), the two-instance tests and the
benchmarks. Each instance has its own database (a SQLite file, or a PostgreSQL
database when ``PUSHMAIL_TEST_POSTGRES`` names a server), its own broker
(a folder for kombu's filesystem transport, or a Redis database number) and
its own web server and Celery worker with beat, in their own process groups so
a test can SIGKILL a whole worker group.

A production-shaped instance (``celery_workers`` > 1) runs that many Celery
workers and a separate beat instead; with ``Backend.amqp`` set its broker is a
RabbitMQ virtual host of its own (``Instance.vhost``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Backend:
    """Where instance state lives: embedded (SQLite + filesystem broker) or servers."""

    postgres: str | None = None  # e.g. "postgresql://postgres@127.0.0.1:5432"
    redis: str | None = None  # e.g. "redis://127.0.0.1:6379"
    amqp: str | None = None  # e.g. "amqp://guest:guest@127.0.0.1:5672": the broker, one vhost per instance
    vhost_prefix: str = "pushmail_"
    _redis_db: int = 0

    @classmethod
    def from_env(cls) -> Backend:
        return cls(postgres=os.environ.get("PUSHMAIL_TEST_POSTGRES"), redis=os.environ.get("PUSHMAIL_TEST_REDIS"))

    @property
    def description(self) -> str:
        broker = "RabbitMQ" if self.amqp else "Redis" if self.redis else "filesystem broker"
        return f"{'PostgreSQL' if self.postgres else 'SQLite'} + {broker}" + (
            " (Redis cache)" if self.amqp and self.redis else ""
        )

    def next_redis_db(self) -> int:
        self._redis_db += 1
        return self._redis_db


@dataclass
class Instance:
    name: str
    domains: list[str]
    data_dir: Path
    backend: Backend
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    web_workers: int = 2
    worker_concurrency: int = 2
    celery_workers: int = 1  # more than one: that many workers and a separate beat process
    access_log_format: str | None = None  # gunicorn's --access-logformat; None: its default
    extra_env: dict[str, str] = field(default_factory=dict)
    peers: dict[str, str] = field(default_factory=dict)
    web: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes] | None] = field(default_factory=list)
    beat: subprocess.Popen[bytes] | None = None
    redis_db: int | None = None

    @property
    def vhost(self) -> str:
        """This instance's RabbitMQ virtual host (with ``Backend.amqp``)."""
        return f"{self.backend.vhost_prefix}{self.name}"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def database_url(self) -> str:
        if self.backend.postgres:
            return f"{self.backend.postgres.rstrip('/')}/pushmail_{self.name}"
        return f"sqlite:///{self.data_dir / 'pushmail.sqlite3'}"

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "DEBUG": "0",  # production behaviour; the demo turns it on for the admin's static files
            "SECRET_KEY": f"cluster-{self.name}-secret",
            "PUSHMAIL_KEY_ENCRYPTION_KEY": f"cluster-{self.name}-signing-key-encryption-key",
            "PUSHMAIL_DATA_DIR": str(self.data_dir),
            "DATABASE_URL": self.database_url,
            "PUSHMAIL_BASE_URL": self.base_url,
            "PUSHMAIL_PEERS": ",".join(f"{d}={u}" for d, u in sorted(self.peers.items())),
            "ALLOWED_HOSTS": f"127.0.0.1,localhost,{self.host},.localhost",
            "SESSION_COOKIE_NAME": f"pushmail_{self.name}",
            "SECURE_COOKIES": "0",
            "PYTHONUNBUFFERED": "1",
            "DJANGO_SETTINGS_MODULE": "pushmail_site.settings",
        }
        if self.backend.redis:
            if self.redis_db is None:
                self.redis_db = self.backend.next_redis_db()
            url = f"{self.backend.redis.rstrip('/')}/{self.redis_db}"
            env["CELERY_BROKER_URL"] = url
            env["CACHE_URL"] = url
        else:
            env.pop("CELERY_BROKER_URL", None)
            env.pop("CACHE_URL", None)
        if self.backend.amqp:
            env["CELERY_BROKER_URL"] = f"{self.backend.amqp.rstrip('/')}/{self.vhost}"
        env.update(self.extra_env)
        return env

    def manage(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(
            [PYTHON, "manage.py", *args], cwd=ROOT, env=self.env(), capture_output=True, text=True, timeout=300
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed on {self.name}:\n{result.stdout}{result.stderr}")
        return result.stdout.strip()

    def shell(self, code: str) -> str:
        """Run Python in this instance's Django context; return what it prints."""
        return self.manage("shell", "-v", "0", "-c", code)

    def setup(self, mailboxes: Iterable[str] = (), password: str = "correct-horse-battery") -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.backend.postgres:
            _recreate_postgres_db(self.backend.postgres, f"pushmail_{self.name}")
        else:
            for suffix in ("", "-wal", "-shm"):
                Path(str(self.data_dir / "pushmail.sqlite3") + suffix).unlink(missing_ok=True)
        if self.backend.redis:
            self.env()  # allocates the Redis db number
            _flush_redis(self.backend.redis, self.redis_db or 0)
        if self.backend.amqp:
            recreate_vhost(self.vhost)
        self.manage("migrate", "--noinput", "-v", "0")
        for domain in self.domains:
            self.manage("adddomain", domain)
        for address in mailboxes:
            self.manage("addmailbox", address, "--password", password)

    def _log(self, kind: str) -> BinaryIO:
        return open(self.data_dir / f"{kind}.log", "ab")  # noqa: SIM115 - handed to the child

    def start_web(self) -> None:
        self.web = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "gunicorn",
                "--bind",
                f"{self.host}:{self.port}",
                "--workers",
                str(self.web_workers),
                "--access-logfile",
                "-",
                "--graceful-timeout",
                "2",
                *(["--access-logformat", self.access_log_format] if self.access_log_format else []),
                "pushmail_site.wsgi:application",
            ],
            cwd=ROOT,
            env=self.env(),
            stdout=self._log("web"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_http(self.base_url + "/.well-known/pushmail")

    def _celery(self, *args: str, log: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [PYTHON, "-m", "celery", "-A", "pushmail_site", *args, "--loglevel", "INFO"],
            cwd=ROOT,
            env={**self.env(), "C_FORCE_ROOT": "1"},
            stdout=self._log(log),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _schedule_args(self) -> list[str]:
        return ["--schedule", str(self.data_dir / "celerybeat-schedule")]

    def start_worker(self, index: int | None = None) -> None:
        """Start the worker (with beat); on a production-shaped instance, worker ``index`` or
        every worker that is not running, and the beat if it is not running."""
        if self.celery_workers <= 1:
            self.worker = self._celery(
                "worker",
                "--beat",
                *self._schedule_args(),
                "--concurrency",
                str(self.worker_concurrency),
                "--hostname",
                f"{self.name}@%h",
                log="worker",
            )
            return
        self.workers += [None] * (self.celery_workers - len(self.workers))
        for i in range(self.celery_workers) if index is None else [index]:
            proc = self.workers[i]
            if proc is None or proc.poll() is not None:
                self.workers[i] = self._celery(
                    "worker",
                    "--concurrency",
                    str(self.worker_concurrency),
                    "--hostname",
                    f"{self.name}-{i}@%h",
                    log=f"worker-{i}",
                )
        if self.beat is None or self.beat.poll() is not None:
            self.beat = self._celery("beat", *self._schedule_args(), log="beat")
        self.worker = self.workers[0]

    def start(self) -> None:
        self.start_web()
        self.start_worker()

    def kill_worker(self, sig: int = signal.SIGKILL, index: int | None = None) -> None:
        """Signal the worker's whole process group (pool children and beat too); on a
        production-shaped instance, worker ``index`` only, or every worker and the beat."""
        if index is not None:
            proc = self.workers[index]
            if proc is not None and proc.poll() is None:
                _signal_group(proc, sig)
                proc.wait(timeout=30)
            self.workers[index] = None
            return
        for proc in [self.worker, *self.workers, self.beat]:
            if proc is not None and proc.poll() is None:
                _signal_group(proc, sig)
                proc.wait(timeout=30)
        self.worker = self.beat = None
        self.workers = [None] * len(self.workers)

    def stop_web(self) -> None:
        if self.web and self.web.poll() is None:
            _signal_group(self.web, signal.SIGTERM)
            try:
                self.web.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _signal_group(self.web, signal.SIGKILL)
                self.web.wait(timeout=10)
        self.web = None

    def stop(self) -> None:
        stop_all([self])


def stop_all(instances: Iterable[Instance], timeout: float = 15.0) -> None:
    """Stop instances the way systemd does: SIGTERM to every process group at once, then wait.

    A worker finishes its running tasks first (warm shutdown); whatever is still running after
    ``timeout`` seconds is killed.
    """
    instances = list(instances)
    procs = [
        p
        for inst in instances
        for p in {inst.worker, *inst.workers, inst.beat, inst.web}
        if p is not None and p.poll() is None
    ]
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(timeout=10)
    for inst in instances:
        inst.worker = inst.web = inst.beat = None
        inst.workers = [None] * len(inst.workers)


def log_tails(instances: list[Instance], limit: int = 6000) -> list[tuple[str, str]]:
    """The end of each instance's web and worker logs, titled, for a failed test's report."""
    tails = []
    for inst in instances:
        for log in sorted(inst.data_dir.glob("*.log")):
            kind = log.stem
            if log.exists():
                tail = log.read_bytes()[-limit:].decode(errors="replace")
                tails.append((f"{inst.domains[0]} {kind}.log (tail)", tail))
    return tails


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback only
                if response.status < 500:
                    return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up within {timeout}s: {last}")


def _recreate_postgres_db(server: str, name: str) -> None:
    import psycopg

    with psycopg.connect(server.rstrip("/") + "/postgres", autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')


def rabbitmqctl(*args: str, check: bool = True) -> str:
    """Run ``rabbitmqctl`` against the local RabbitMQ node; return its output."""
    result = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def recreate_vhost(vhost: str, user: str = "guest") -> None:
    """An empty RabbitMQ virtual host ``vhost`` that ``user`` may use (nothing else is touched)."""
    rabbitmqctl("delete_vhost", vhost, check=False)
    rabbitmqctl("add_vhost", vhost)
    grant_vhost(vhost, user)


def grant_vhost(vhost: str, user: str = "guest") -> None:
    rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")


def cut_vhost(vhost: str, user: str = "guest") -> None:
    """A broker outage as the clients of one virtual host see it, the rest of the broker untouched:
    ``user`` may no longer open it and its open connections are closed. Its durable queues and
    their persistent messages stay, as over a broker restart; ``grant_vhost`` ends the outage."""
    rabbitmqctl("clear_permissions", "-p", vhost, user)
    rabbitmqctl("close_all_connections", "--vhost", vhost, "broker outage (test)")


def _flush_redis(server: str, db: int) -> None:
    import redis

    parts = urlsplit(server)
    redis.Redis(host=parts.hostname or "127.0.0.1", port=parts.port or 6379, db=db).flushdb()


def make_cluster(
    base_dir: Path, specs: dict[str, list[str]], backend: Backend | None = None, **kwargs: object
) -> dict[str, Instance]:
    """Instances named by ``specs`` (name -> hosted domains), each a peer of the others."""
    backend = backend or Backend.from_env()
    instances = {
        name: Instance(name=name, domains=domains, data_dir=base_dir / name, backend=backend, **kwargs)  # type: ignore[arg-type]
        for name, domains in specs.items()
    }
    peers = {domain: inst.base_url for inst in instances.values() for domain in inst.domains}
    for inst in instances.values():
        inst.peers = dict(peers)
    return instances
