"""Soak: a production-shaped deployment of two instances under load and faults.

Each instance runs two gunicorn web processes, three Celery workers (two pool
processes each) and one beat, on PostgreSQL and RabbitMQ. PostgreSQL is the
benchmark's own cluster (``initdb``/``pg_ctl`` in a temporary folder, on its
own port), so restarting it touches nobody else. Each instance's broker is a
RabbitMQ virtual host of its own on the machine's broker; the shared cache
(nonces, rate limits) is Redis. alpha hosts the senders (alpha.test); beta
hosts the three recipient domains (beta.test, gamma.test, delta.test).

Scenarios (each prints a JSON summary line; ``--scenarios`` picks some):

1. ``kill``: ``--messages`` messages, each to one recipient in each of the 3
   domains, sent as fast as ``--senders`` clients go, while every
   ``--kill-every`` seconds one Celery worker (alternately alpha's and beta's)
   gets SIGKILL and is started again, as systemd would; readers open
   ``--open-share`` of the mail so bodies are fetched. Counts lost and
   duplicated inbox entries and rows not in a final state.
2. ``rate``: ``--notifications`` single-recipient messages at ``--rate`` per
   second, with ``--readers`` readers opening mail. The receiver's gunicorn
   access log times every notification request (%(M)s: milliseconds).
3. ``faults``: messages at ``--rate`` for ``--fault-seconds``; PostgreSQL is
   restarted (``pg_ctl restart``) at a quarter of the run and the broker is cut
   at 60% for ``--outage-seconds``: each instance's virtual host refuses its
   user and its connections are closed (a broker outage as the clients see it;
   the machine's other virtual hosts are not touched, which a ``rabbitmqctl
   stop_app`` would do). Measures how long the backlog of acknowledged messages
   takes to drain after each is back, and counts lost ones.

    python -m bench.soak                                   # the full soak (about 25 minutes)
    python -m bench.soak --messages 300 --notifications 600 --fault-seconds 60   # a short one
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import requests

from bench.common import PRODUCTION_ENV, cpu_report, cpu_sample, create_mailboxes_code, pgid_of
from tools.cluster import (
    Backend,
    Instance,
    cut_vhost,
    free_port,
    grant_vhost,
    make_cluster,
    rabbitmqctl,
    stop_all,
)

ALPHA = ["alpha.test"]
BETA = ["beta.test", "gamma.test", "delta.test"]
ACCESS_FORMAT = '%(h)s "%(r)s" %(s)s %(M)s'
ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" (?P<status>\d{3}) (?P<ms>\d+)$')
ENV = {
    **PRODUCTION_ENV,
    # The two instances are new to each other and exchange far more than a new origin's share.
    "PUSHMAIL_NEW_ORIGIN_RATE_PER_MINUTE": "1000000",
    "PUSHMAIL_ORIGIN_RATE_PER_MINUTE": "1000000",
    "PUSHMAIL_SPAM_TRUSTED_AFTER_DAYS": "0",
}


# --- the benchmark's own PostgreSQL ------------------------------------------------------


class OwnPostgres:
    """A PostgreSQL cluster of the benchmark's own, in a temporary folder, on its own port."""

    def __init__(self, base: Path) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
        if not bins:
            raise SystemExit("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        self.bin = Path(bins[-1])
        self.base = base
        self.data = base / "pgdata"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}"

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:  # initdb refuses root: the cluster belongs to the postgres user
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=180)

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self._ctl("start")

    def _ctl(self, action: str) -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.base / "postgres.log"),
            "-o",
            options,
            "-w",
            "-m",
            "fast",
            action,
        )

    def restart(self) -> None:
        self._ctl("restart")

    def stop(self) -> None:
        self._ctl("stop")


# --- the deployment --------------------------------------------------------------------------


@dataclass
class Deployment:
    alpha: Instance
    beta: Instance
    pg: OwnPostgres
    senders: list[str] = field(default_factory=list)  # alpha addresses
    tokens: dict[str, str] = field(default_factory=dict)  # address -> API token
    readers: dict[str, list[str]] = field(default_factory=dict)  # beta domain -> addresses

    @property
    def instances(self) -> list[Instance]:
        return [self.alpha, self.beta]

    def query(self, inst: Instance, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(inst.database_url, autocommit=True, connect_timeout=5) as conn:
            return list(conn.execute(sql, params).fetchall())


@contextmanager
def deployment(base: Path, *, readers_per_domain: int, senders: int) -> Iterator[Deployment]:
    base.chmod(0o755)  # the cluster's owner (postgres, when run as root) reaches its folder inside
    pg = OwnPostgres(base / "pg")
    pg.base.mkdir()
    pg.start()
    backend = Backend(
        postgres=pg.url,
        redis=os.environ.get("PUSHMAIL_BENCH_REDIS", "redis://127.0.0.1:6379"),
        amqp=os.environ.get("PUSHMAIL_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672"),
        vhost_prefix="pushmail_soak_",
    )
    backend._redis_db = int(os.environ.get("PUSHMAIL_BENCH_REDIS_DB", "13"))
    cluster = make_cluster(
        base,
        {"alpha": ALPHA, "beta": BETA},
        backend=backend,
        web_workers=2,
        celery_workers=3,
        worker_concurrency=2,
        access_log_format=ACCESS_FORMAT,
    )
    for inst in cluster.values():
        inst.extra_env = dict(ENV)
        inst.env()
    dep = Deployment(cluster["alpha"], cluster["beta"], pg)
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda i: i.setup(), dep.instances))
        dep.senders = [f"sender{i}@alpha.test" for i in range(senders)]
        dep.tokens.update(json.loads(dep.alpha.shell(create_mailboxes_code(dep.senders, tokens=True)).splitlines()[-1]))
        dep.readers = {d: [f"reader{i}@{d}" for i in range(readers_per_domain)] for d in BETA}
        everyone = [a for addresses in dep.readers.values() for a in addresses]
        dep.tokens.update(json.loads(dep.beta.shell(create_mailboxes_code(everyone, tokens=True)).splitlines()[-1]))
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda i: i.start(), dep.instances))
        yield dep
    finally:
        stop_all(dep.instances)
        pg.stop()
        for inst in dep.instances:
            rabbitmqctl("delete_vhost", inst.vhost, check=False)


# --- load --------------------------------------------------------------------------------------


@dataclass
class Sent:
    accepted: dict[str, tuple[str, float]] = field(default_factory=dict)  # message id -> (subject, time)
    refused: list[str] = field(default_factory=list)  # what the API said instead of 201
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def send_messages(
    dep: Deployment,
    count: int,
    *,
    prefix: str,
    recipients: Callable[[int], list[str]],
    rate: float | None,
    clients: int,
    stop: threading.Event | None = None,
) -> Sent:
    """Send ``count`` messages through alpha's API (at ``rate`` per second, or as fast as
    ``clients`` go); a refused or failed send is counted, not retried (it was not acknowledged)."""
    sent = Sent()
    local = threading.local()
    start = time.monotonic()

    def one(i: int) -> None:
        if stop is not None and stop.is_set():
            return
        if rate:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if not hasattr(local, "sessions"):
            local.sessions = {}
        sender = dep.senders[i % len(dep.senders)]
        session = local.sessions.get(sender)
        if session is None:
            session = local.sessions[sender] = requests.Session()
            session.headers["Authorization"] = f"Bearer {dep.tokens[sender]}"
        subject = f"{prefix}-{i:06d}"
        began = time.monotonic()
        try:
            response = session.post(
                f"{dep.alpha.base_url}/api/v1/messages/",
                json={"to": recipients(i), "subject": subject, "text": f"Soak message {i}.\n" + "x" * 400},
                timeout=60,
            )
        except requests.RequestException as exc:
            with sent.lock:
                sent.refused.append(type(exc).__name__)
            return
        with sent.lock:
            sent.latencies.append(time.monotonic() - began)
            if response.status_code == 201:
                sent.accepted[response.json()["id"]] = (subject, time.time())
            else:
                sent.refused.append(str(response.status_code))

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(count)))
    return sent


class Readers:
    """``count`` readers opening their unread mail on beta through the API (each open of an
    unfetched body queues its fetch), ``share`` of what arrives, until stopped."""

    def __init__(self, dep: Deployment, prefix: str, *, count: int, share: float, pause: float = 0.2) -> None:
        self.dep, self.prefix, self.share, self.pause = dep, prefix, share, pause
        self.addresses = [a for group in zip(*dep.readers.values(), strict=True) for a in group][:count]
        self.opened: set[int] = set()
        self.skipped: set[int] = set()
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._read, args=(a,), daemon=True) for a in self.addresses]

    def __enter__(self) -> Readers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _read(self, address: str) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.dep.tokens[address]}"
        while not self.stop.is_set():
            try:
                rows = self.dep.query(
                    self.dep.beta,
                    "SELECT e.id FROM mailbox_inboxentry e JOIN accounts_user u ON u.id = e.owner_id "
                    "WHERE u.email = %s AND e.subject LIKE %s AND e.opened_at IS NULL ORDER BY e.id LIMIT 20",
                    (address, self.prefix + "-%"),
                )
            except psycopg.Error:  # the database is restarting: a reader waits as a person would
                time.sleep(1)
                continue
            fresh = [r[0] for r in rows if r[0] not in self.opened and r[0] not in self.skipped]
            if not fresh:
                time.sleep(self.pause)
                continue
            for entry in fresh:
                if self.stop.is_set():
                    return
                if random.random() >= self.share:  # noqa: S311 - load shape, not security
                    self.skipped.add(entry)
                    continue
                try:
                    response = session.get(f"{self.dep.beta.base_url}/api/v1/inbox/{entry}/", timeout=60)
                    if response.status_code in (200, 202):
                        self.opened.add(entry)
                    else:
                        self.errors.append(str(response.status_code))
                except requests.RequestException as exc:
                    self.errors.append(type(exc).__name__)
                time.sleep(self.pause)


class Killer:
    """Every ``every`` seconds, SIGKILL one Celery worker (alternately alpha's and beta's, a
    random one of their three) and start it again, as systemd's Restart=always would."""

    def __init__(self, dep: Deployment, every: float) -> None:
        self.dep, self.every = dep, every
        self.kills: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Killer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)

    def _run(self) -> None:
        n = 0
        while not self.stop.wait(self.every):
            inst = self.dep.instances[n % 2]
            index = random.randrange(inst.celery_workers)  # noqa: S311
            inst.kill_worker(index=index)
            inst.start_worker(index)
            self.kills.append(f"{inst.name}-{index}")
            n += 1


# --- checking ----------------------------------------------------------------------------------


def outstanding(dep: Deployment, prefix: str, before: float | None = None) -> int:
    """Deliveries of this run's messages (sent before ``before``) not yet notified."""
    sql = (
        "SELECT count(*) FROM outbox_delivery d JOIN outbox_message m ON m.id = d.message_id "
        "WHERE m.subject LIKE %s AND d.state <> 'notified'"
    )
    params: tuple[Any, ...] = (prefix + "-%",)
    if before is not None:
        sql += " AND m.date < %s"
        params += (datetime.fromtimestamp(before, UTC),)
    return int(dep.query(dep.alpha, sql, params)[0][0])


def fetching(dep: Deployment, prefix: str) -> int:
    """This run's bodies asked for (a reader opened them) whose fetch has not ended."""
    return int(
        dep.query(
            dep.beta,
            "SELECT count(*) FROM mailbox_remotemessage WHERE subject LIKE %s AND state = 'fetching'",
            (prefix + "-%",),
        )[0][0]
    )


def wait_settled(dep: Deployment, prefix: str, timeout: float) -> float:
    """Seconds until every delivery is notified and every requested fetch has ended."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if outstanding(dep, prefix) == 0 and fetching(dep, prefix) == 0:
                return time.monotonic() - start
        except psycopg.Error:
            pass
        time.sleep(1)
    return float("nan")


def audit(dep: Deployment, prefix: str, sent: Sent, per_message: int) -> dict[str, Any]:
    """Lost and duplicated mail, and rows not in a final state, for this run's messages."""
    like = (prefix + "-%",)
    arrived = dict(
        dep.query(
            dep.beta,
            "SELECT subject, count(*) FROM mailbox_inboxentry WHERE subject LIKE %s AND remote_id IS NOT NULL "
            "GROUP BY subject",
            like,
        )
    )
    per_owner = dep.query(
        dep.beta,
        "SELECT count(*) FROM (SELECT owner_id, subject FROM mailbox_inboxentry WHERE subject LIKE %s "
        "GROUP BY owner_id, subject HAVING count(*) > 1) AS d",
        like,
    )
    subjects = [subject for subject, _ in sent.accepted.values()]
    lost = sum(max(0, per_message - int(arrived.get(s, 0))) for s in subjects)
    unexpected = sum(int(c) for s, c in arrived.items() if s not in set(subjects))
    deliveries = dict(
        dep.query(
            dep.alpha,
            "SELECT d.state, count(*) FROM outbox_delivery d JOIN outbox_message m ON m.id = d.message_id "
            "WHERE m.subject LIKE %s GROUP BY d.state",
            like,
        )
    )
    fetches = dict(  # a body nobody opened stays "notified"; each one asked for ends "fetched" (or gone)
        dep.query(
            dep.beta,
            "SELECT state, count(*) FROM mailbox_remotemessage WHERE subject LIKE %s AND state <> 'notified' "
            "GROUP BY state",
            like,
        )
    )
    return {
        "accepted": len(sent.accepted),
        "refused": len(sent.refused),
        "refused_by": _tally(sent.refused),
        "entries_expected": len(subjects) * per_message,
        "entries": sum(int(c) for c in arrived.values()),
        "lost": lost,
        "duplicated": int(per_owner[0][0]),
        "not_sent_but_arrived": unexpected,
        "deliveries": deliveries,
        "fetches": fetches,
        "not_final": sum(v for k, v in deliveries.items() if k != "notified") + int(fetches.get("fetching", 0)),
    }


def _tally(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def access_log_offsets(inst: Instance) -> int:
    path = inst.data_dir / "web.log"
    return path.stat().st_size if path.exists() else 0


def access_entries(inst: Instance, offset: int) -> list[tuple[str, str, int, int]]:
    """(method, path, status, milliseconds) of each request logged after ``offset``."""
    text = (inst.data_dir / "web.log").read_bytes()[offset:].decode(errors="replace")
    out = []
    for line in text.splitlines():
        match = ACCESS_LINE.search(line.strip())
        if match:
            out.append((match["method"], match["path"], int(match["status"]), int(match["ms"])))
    return out


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- scenarios ------------------------------------------------------------------------------


def all_domains(dep: Deployment) -> Callable[[int], list[str]]:
    def recipients(i: int) -> list[str]:
        return [addresses[i % len(addresses)] for addresses in dep.readers.values()]

    return recipients


def one_recipient(dep: Deployment) -> Callable[[int], list[str]]:
    everyone = [a for group in zip(*dep.readers.values(), strict=True) for a in group]

    def recipients(i: int) -> list[str]:
        return [everyone[i % len(everyone)]]

    return recipients


def scenario_kill(dep: Deployment, args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"kill{int(time.time())}"
    began, load_before = time.monotonic(), load()
    with Readers(dep, prefix, count=args.readers, share=args.open_share) as readers, Killer(dep, args.kill_every) as k:
        sent = send_messages(
            dep, args.messages, prefix=prefix, recipients=all_domains(dep), rate=None, clients=args.senders
        )
        sending = time.monotonic() - began
        settle = wait_settled(dep, prefix, args.settle_timeout)
        time.sleep(2)  # readers open what arrived last
    settle_after = wait_settled(dep, prefix, args.settle_timeout)
    result = audit(dep, prefix, sent, per_message=len(BETA))
    return {
        "scenario": "kill",
        "messages": args.messages,
        "recipient_domains": len(BETA),
        "sending_seconds": round(sending, 1),
        "messages_per_second": round(len(sent.accepted) / sending, 1),
        "deliveries_per_second": round(len(sent.accepted) * len(BETA) / (sending + settle), 1),
        "settled_seconds_after_sending": round(settle, 1),
        "worker_kills": len(k.kills),
        "opened": len(readers.opened),
        "fetches_settled_seconds_after": round(settle_after, 1),
        "reader_errors": _tally(readers.errors),
        "send_p50_ms": round(percentile(sent.latencies, 50) * 1000),
        "send_p99_ms": round(percentile(sent.latencies, 99) * 1000),
        "load_before": load_before,
        "load_after": load(),
        **result,
    }


def scenario_rate(dep: Deployment, args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"rate{int(time.time())}"
    offsets = {inst.name: access_log_offsets(inst) for inst in dep.instances}
    began, load_before = time.monotonic(), load()
    cpu_before = cpu_sample()
    with Readers(dep, prefix, count=args.readers, share=1.0, pause=1.0) as readers:
        sent = send_messages(
            dep,
            args.notifications,
            prefix=prefix,
            recipients=one_recipient(dep),
            rate=args.rate,
            clients=max(args.senders, int(args.rate)),
        )
        sending = time.monotonic() - began
        settle = wait_settled(dep, prefix, args.settle_timeout)
        time.sleep(2)
    wait_settled(dep, prefix, args.settle_timeout)
    cpu = cpu_report(cpu_before, process_groups(dep))
    result = audit(dep, prefix, sent, per_message=1)
    received = access_entries(dep.beta, offsets["beta"])
    notes = [r for r in received if r[0] == "POST" and r[1].startswith("/federation/v1/notifications")]
    opens = [r for r in received if r[1].startswith("/api/v1/inbox/")]
    served = [r for r in access_entries(dep.alpha, offsets["alpha"]) if "/messages/" in r[1] and r[0] == "GET"]
    errors = [r for r in notes + opens if r[2] >= 400]
    return {
        "scenario": "rate",
        "notifications": args.notifications,
        "rate": args.rate,
        "achieved_rate": round(len(sent.accepted) / sending, 1),
        "notification_requests": len(notes),
        "notification_batches": sum(1 for r in notes if r[1].startswith("/federation/v1/notifications/batch")),
        "notification_p50_ms": percentile([r[3] for r in notes], 50),
        "notification_p99_ms": percentile([r[3] for r in notes], 99),
        "notification_max_ms": max((r[3] for r in notes), default=0),
        "opens": len(opens),
        "open_p99_ms": percentile([r[3] for r in opens], 99),
        "body_fetches_served": len(served),
        "http_errors": len(errors) + len(readers.errors) + len(sent.refused),
        "reader_errors": _tally(readers.errors),
        "send_p99_ms": round(percentile(sent.latencies, 99) * 1000),
        "settled_seconds_after_sending": round(settle, 1),
        # CPU per message of the run (each one notification, one open and one fetch), by process group.
        "cpu_ms_per_message": {
            name: round(1000 * seconds / max(1, len(sent.accepted)), 2)
            for name, seconds in sorted(cpu.by_group.items())
        },
        "cpu": cpu.to_json(),
        "load_before": load_before,
        "load_after": load(),
        **result,
    }


def process_groups(dep: Deployment) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for inst in dep.instances:
        groups[f"{inst.name} web"] = pgid_of(inst.web)
        groups[f"{inst.name} workers"] = [g for proc in inst.workers for g in pgid_of(proc)]
        groups[f"{inst.name} beat"] = pgid_of(inst.beat)
    return groups


def drain_after(dep: Deployment, prefix: str, back: float, timeout: float) -> float:
    """Seconds from ``back`` until every message acknowledged before it is notified."""
    while time.time() - back < timeout:
        try:
            if outstanding(dep, prefix, before=back) == 0:
                return round(time.time() - back, 1)
        except psycopg.Error:
            pass
        time.sleep(0.5)
    return float("nan")


def scenario_faults(dep: Deployment, args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"fault{int(time.time())}"
    count = int(args.rate * args.fault_seconds)
    offsets = {inst.name: access_log_offsets(inst) for inst in dep.instances}
    events: dict[str, Any] = {}
    load_before = time.monotonic(), load()
    result_box: dict[str, Sent] = {}

    def sender() -> None:
        result_box["sent"] = send_messages(
            dep,
            count,
            prefix=prefix,
            recipients=one_recipient(dep),
            rate=args.rate,
            clients=max(args.senders, int(args.rate)),
        )

    thread = threading.Thread(target=sender)
    with Readers(dep, prefix, count=args.readers, share=args.open_share, pause=1.0) as readers:
        thread.start()
        time.sleep(args.fault_seconds * 0.25)
        down = time.time()
        dep.pg.restart()
        back = time.time()
        events["postgres_down_seconds"] = round(back - down, 1)
        events["postgres_drained_seconds_after_back"] = drain_after(dep, prefix, back, args.settle_timeout)
        time.sleep(max(0.0, args.fault_seconds * 0.6 - (time.time() - down) - args.fault_seconds * 0.25))
        for inst in dep.instances:
            cut_vhost(inst.vhost)
        time.sleep(args.outage_seconds)
        for inst in dep.instances:
            grant_vhost(inst.vhost)
        back = time.time()
        events["broker_down_seconds"] = args.outage_seconds
        events["broker_drained_seconds_after_back"] = drain_after(dep, prefix, back, args.settle_timeout)
        thread.join()
        settle = wait_settled(dep, prefix, args.settle_timeout)
        time.sleep(2)
    sent = result_box["sent"]
    result = audit(dep, prefix, sent, per_message=1)
    server_errors = {
        inst.name: _tally(
            [f"{r[2]} {r[0]} {r[1].split('?')[0]}" for r in access_entries(inst, offsets[inst.name]) if r[2] >= 500]
        )
        for inst in dep.instances
    }
    return {
        "scenario": "faults",
        "messages": count,
        "rate": args.rate,
        **events,
        "settled_seconds_after_sending": round(settle, 1),
        "opened": len(readers.opened),
        "reader_errors": _tally(readers.errors),
        "server_errors": server_errors,
        "load_before": load_before[1],
        "load_after": load(),
        **result,
    }


SCENARIOS = {"kill": scenario_kill, "rate": scenario_rate, "faults": scenario_faults}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default="kill,rate,faults", help="comma-separated: kill, rate, faults")
    parser.add_argument("--messages", type=int, default=5000, help="kill: messages, each to all 3 domains")
    parser.add_argument("--kill-every", type=float, default=15.0, help="kill: seconds between worker SIGKILLs")
    parser.add_argument("--open-share", type=float, default=0.2, help="share of the mail readers open")
    parser.add_argument("--notifications", type=int, default=12000, help="rate: single-recipient messages")
    parser.add_argument("--rate", type=float, default=20.0, help="rate and faults: messages per second")
    parser.add_argument("--readers", type=int, default=10, help="readers opening mail")
    parser.add_argument("--senders", type=int, default=4, help="concurrent sending clients")
    parser.add_argument("--fault-seconds", type=float, default=180.0, help="faults: how long messages are sent")
    parser.add_argument("--outage-seconds", type=float, default=15.0, help="faults: how long the broker is cut")
    parser.add_argument("--settle-timeout", type=float, default=600.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs) afterwards")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for name in chosen:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    base = Path(tempfile.mkdtemp(prefix="pushmail-soak-"))
    print(
        f"# soak at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load {load()}, {os.cpu_count()} cores, in {base}",
        flush=True,
    )
    failed = False
    try:
        with deployment(base, readers_per_domain=max(1, -(-args.readers // len(BETA))), senders=args.senders) as dep:
            for name in chosen:
                result = SCENARIOS[name](dep, args)
                print(json.dumps(result), flush=True)
                failed |= bool(result["lost"] or result["duplicated"] or result["not_final"])
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
