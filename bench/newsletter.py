"""A newsletter issue to many subscribers over many domains, against Postfix sending the same mail to a sink.

In one run, on the same machine:

1. Postfix: a private Postfix (tests/smtp_support.PostfixServer) is handed SUBSCRIBERS messages of
   about SIZE bytes, one per subscriber (each to one recipient, SUBSCRIBERS / DOMAINS per domain), by
   ``smtp-source`` (one run per domain, PARALLEL at a time); a transport map routes all DOMAINS
   domains to one ``smtp-sink``. Timed from the first connection until Postfix's log shows every
   message ``status=sent`` (the sink answered 250).
2. Pushmail: a sending instance (``list.test``) with a list of SUBSCRIBERS subscribers over DOMAINS
   domains (rows made in bulk in its database, as signed subscription requests would have left them),
   and RECEIVERS real receiving instances, each hosting DOMAINS / RECEIVERS of the domains with the
   subscribers' mailboxes and their side of each subscription (``Subscription`` rows, active). Every
   instance runs its web server and Celery worker, on PostgreSQL and Redis. Each receiving instance
   sits behind a byte-counting proxy (bench/proxy.py) that every one of its domains resolves to
   (``PUSHMAIL_PEERS``): the sender's requests cross it. The list's owner publishes an issue
   (``newsletters.services.publish_issue``); the receivers verify each request's signature and
   deliver it to their own subscribers of record. Measured:

   - notification requests (``POST {api}list-notifications``) counted at the proxies, and the bytes of
     each on the wire (request and answer, headers included);
   - delivery rows of the issue on the sender, and delivery task runs (the worker's log);
   - the time from the call to ``publish_issue`` until every domain's delivery is ``notified`` (the
     domain answered 200), and until every subscriber's entry exists at the receivers.

   A first issue is sent and waited for before the measured one (``--warmup``, on by default): it
   fills the discovery caches (one ``GET /.well-known/pushmail`` per domain, cached for an hour) and
   the receivers' key caches, as for a list that sends regularly.

The receivers are told the list's domain may send them more than a new origin's 60 notifications a
minute (an ``OriginPolicy`` rate, as their admin would set): a list's first issue to an instance that
hosts many of its subscriber domains is otherwise paced by that limit (docs/benchmarks.md).

Run as root (Postfix), under the integration lock:
``python -m bench.newsletter [--subscribers 100000] [--domains 1000] [--receivers 4]``.
Prints JSON lines and a table.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg

from bench.common import PRODUCTION_ENV, emit, log, machine, mean, server_backend, table
from bench.proxy import Connection, Proxies, hold_ports
from tests.smtp_support import PostfixServer, free_port, wait_for_greeting
from tools.cluster import Instance, stop_all

LIST_DOMAIN = "list.test"
LIST_ADDRESS = f"news@{LIST_DOMAIN}"
OWNER = f"editor@{LIST_DOMAIN}"
SINK_HOST = "mail.list.test"


def domain_names(count: int) -> list[str]:
    return [f"d{i:04d}.test" for i in range(count)]


def spread(total: int, domains: list[str]) -> dict[str, int]:
    """``total`` subscribers over ``domains``, as evenly as it goes."""
    base, extra = divmod(total, len(domains))
    return {d: base + (1 if i < extra else 0) for i, d in enumerate(domains)}


def issue_text(size: int) -> str:
    return ("This week's news, item by item, with a link to each story. " * (size // 58 + 1))[:size]


# --- Postfix -----------------------------------------------------------------------------


def postfix_run(sink_port: int, counts: dict[str, int], *, size: int, parallel: int) -> dict[str, object]:
    """Hand Postfix one message per subscriber and time it until the sink has taken them all."""
    total = sum(counts.values())
    domains = "".join(f"{d} OK\n" for d in counts)
    transport = "".join(f"{d} smtp:[127.0.0.1]:{sink_port}\n" for d in counts)
    postfix = PostfixServer(
        [
            "relay_domains = texthash:$config_directory/domains",
            "transport_maps = texthash:$config_directory/transport",
            "smtpd_relay_restrictions = permit_mynetworks, reject",
            "smtp_tls_security_level = none",
        ],
        hostname=SINK_HOST,
        files={"domains": domains, "transport": transport},
    )

    def inject(domain: str) -> None:
        subprocess.run(
            ["smtp-source", "-s", "2", "-m", str(counts[domain]), "-l", str(size)]
            + ["-f", LIST_ADDRESS, "-t", f"reader@{domain}", "-M", SINK_HOST, f"127.0.0.1:{postfix.port}"],
            capture_output=True,
            timeout=3600,
            check=True,
        )

    try:
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            list(pool.map(inject, counts))
        injected = time.monotonic() - start
        log(f"postfix: {total} messages injected in {injected:.1f} s; waiting for the sink")
        sent, offset = 0, 0
        path = postfix.dir / "maillog"
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            cut = chunk.rfind(b"\n") + 1
            sent += len(re.findall(rb"status=sent", chunk[:cut]))
            offset += cut
            if sent >= total:
                break
            time.sleep(0.2)
        seconds = time.monotonic() - start
    finally:
        postfix.stop()
    return {
        "tool": "postfix",
        "messages": total,
        "domains": len(counts),
        "delivered": sent,
        "injected_seconds": round(injected, 3),
        "seconds": round(seconds, 3),
        "messages_per_second": round(sent / seconds, 1),
        "size_bytes": size,
    }


# --- Pushmail ----------------------------------------------------------------------------


def receiver_code(counts: dict[str, int]) -> str:
    """Python for a receiving instance's shell: its domains, its readers, their subscriptions (active)."""
    return (
        "from django.db import transaction\n"
        "from django.utils import timezone\n"
        "from allauth.account.models import EmailAddress\n"
        "from accounts.models import Domain, User\n"
        "from accounts.services import create_domain\n"
        "from newsletters.models import Subscription, SubscriptionState\n"
        "from reputation.models import OriginPolicy\n"
        f"counts = {counts!r}\n"
        "now = timezone.now()\n"
        "with transaction.atomic():\n"
        "    for d in counts:\n"
        "        create_domain(name=d)\n"
        "    by_name = {d.name: d for d in Domain.objects.all()}\n"
        "    users = User.objects.bulk_create([\n"
        "        User(email=f'reader{i}@{d}', local_part=f'reader{i}', domain=by_name[d], password='!bench')\n"
        "        for d, n in counts.items() for i in range(n)], batch_size=5000)\n"
        "    EmailAddress.objects.bulk_create(\n"
        "        [EmailAddress(user=u, email=u.email, verified=True, primary=True) for u in users], batch_size=5000)\n"
        "    Subscription.objects.bulk_create([\n"
        f"        Subscription(owner=u, list_address={LIST_ADDRESS!r}, list_name='Bench News',\n"
        "                     state=SubscriptionState.ACTIVE, requested_at=now, acknowledged_at=now)\n"
        "        for u in users], batch_size=5000)\n"
        f"    OriginPolicy.objects.create(domain={LIST_DOMAIN!r}, rate_per_minute=1000000,\n"
        "                                note='a list our readers subscribed to')\n"
        "print(len(users))\n"
    )


def sender_code(counts: dict[str, int]) -> str:
    """Python for the sending instance's shell: the list and its subscribers of record (active)."""
    return (
        "from django.db import transaction\n"
        "from django.test.utils import override_settings\n"
        "from django.utils import timezone\n"
        "from accounts.services import create_mailbox\n"
        "from newsletters.models import Subscriber, SubscriberState\n"
        "from newsletters.services import create_newsletter\n"
        f"counts = {counts!r}\n"
        "now = timezone.now()\n"
        "with override_settings(PASSWORD_HASHERS=['django.contrib.auth.hashers.MD5PasswordHasher']):\n"
        f"    owner = create_mailbox(address={OWNER!r}, password='bench-pw-1')\n"
        "with transaction.atomic():\n"
        f"    n = create_newsletter(owner=owner, address={LIST_ADDRESS!r}, name='Bench News', slug='bench-news')\n"
        "    Subscriber.objects.bulk_create([\n"
        "        Subscriber(newsletter=n, address=f'reader{i}@{d}', domain=d, state=SubscriberState.ACTIVE,\n"
        "                   requested_at=now)\n"
        "        for d, c in counts.items() for i in range(c)], batch_size=5000)\n"
        "print(n.subscribers.count())\n"
    )


def publish_code(subject: str, size: int) -> str:
    """Python for the sender's shell: publish an issue; print the wall clock before and after, and its id."""
    return (
        "import time\n"
        "from newsletters.models import Newsletter\n"
        "from newsletters.services import publish_issue\n"
        f"n = Newsletter.objects.get(address={LIST_ADDRESS!r})\n"
        f"text = {issue_text(size)!r}\n"
        "t0 = time.time()\n"
        f"issue = publish_issue(newsletter=n, subject={subject!r}, text=text)\n"
        "print(t0, time.time(), issue.message_id)\n"
    )


def _one(url: str, query: str, params: tuple[object, ...]) -> tuple[object, ...]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    return tuple(row) if row else ()


def _task_runs(inst: Instance) -> int:
    path = inst.data_dir / "worker.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    return len(re.findall(r"Task outbox\.deliver_notification\[[^\]]+\] (?:succeeded|raised)", text))


DELIVERIES = (
    "SELECT count(*), count(*) FILTER (WHERE state = 'notified'), count(*) FILTER (WHERE state = 'failed'),"
    " coalesce(sum(delivered), 0), extract(epoch FROM max(notified_at)) FROM outbox_delivery WHERE message_id = %s"
)
ENTRIES = (
    "SELECT count(*), extract(epoch FROM max(e.received_at)) FROM mailbox_inboxentry e"
    " JOIN mailbox_remotemessage r ON r.id = e.remote_id WHERE r.global_id = %s"
)


def send_issue(
    sender: Instance,
    receivers: list[Instance],
    proxies: Proxies,
    *,
    subject: str,
    size: int,
    total: int,
    timeout: float,
) -> dict[str, object]:
    """Publish one issue and wait until every domain answered and every subscriber's entry exists."""
    proxies.take()
    runs_before = _task_runs(sender)
    out = sender.shell(publish_code(subject, size)).split()
    t0, t1, message_id = float(out[-3]), float(out[-2]), out[-1]
    deadline = time.monotonic() + timeout
    domains = notified = failed = delivered = 0
    notified_at: float | None = None
    entries, last_entry = 0, 0.0
    while time.monotonic() < deadline:
        domains, notified, failed, delivered, last = _one(sender.database_url, DELIVERIES, (message_id,))  # type: ignore[misc]
        notified_at = float(last) if last is not None else None  # type: ignore[arg-type]
        counts = [_one(r.database_url, ENTRIES, (message_id,)) for r in receivers]
        entries = sum(int(c[0]) for c in counts)  # type: ignore[call-overload]
        last_entry = max((float(c[1]) for c in counts if c[1] is not None), default=0.0)  # type: ignore[arg-type]
        if notified + failed >= domains and entries >= total:  # type: ignore[operator]
            break
        time.sleep(0.5)
    time.sleep(2)  # the last connections close, the last task lines are written
    connections = proxies.take()
    notes = [c for c in connections if _is_list_notification(c)]
    sizes = [c.up + c.down for c in notes]
    return {
        "issue": subject,
        "domains": domains,
        "deliveries_notified": notified,
        "deliveries_failed": failed,
        "delivered_reported": delivered,
        "entries_at_receivers": entries,
        "notification_requests": sum(max(c.requests, 1) for c in notes),
        "statuses": sorted({c.status for c in notes}),
        "other_requests": len(connections) - len(notes),
        "delivery_task_runs": _task_runs(sender) - runs_before,
        "publish_seconds": round(t1 - t0, 3),
        "seconds_to_all_domains_accepted": round(notified_at - t0, 3) if notified_at else None,
        "seconds_to_all_entries": round(last_entry - t0, 3) if last_entry else None,
        "bytes_per_request_mean": round(mean(sizes)) if sizes else None,
        "bytes_per_request_max": max(sizes) if sizes else None,
        "request_bytes_max": max((c.up for c in notes), default=None),
    }


def _is_list_notification(conn: Connection) -> bool:
    method, _, rest = conn.request_line.partition(" ")
    return method == "POST" and rest.startswith("/federation/v1/list-notifications")


def pushmail_run(args: argparse.Namespace, counts: dict[str, int], base_dir: Path) -> list[dict[str, object]]:
    backend = server_backend()
    # One Redis database per instance, within Redis's default 16 (the last ones, as the other benchmarks).
    backend._redis_db = min(backend._redis_db, 15 - (args.receivers + 1))
    proxies = Proxies()
    sender = Instance(
        name="bench_nl_sender",
        domains=[LIST_DOMAIN],
        data_dir=base_dir / "sender",
        backend=backend,
        web_workers=2,
        worker_concurrency=args.workers,
        extra_env=dict(PRODUCTION_ENV),
    )
    names = list(counts)
    shares = [names[k :: args.receivers] for k in range(args.receivers)]
    receivers = [
        Instance(
            name=f"bench_nl_recv{k}",
            domains=[],
            data_dir=base_dir / f"recv{k}",
            backend=backend,
            web_workers=args.web_workers,
            worker_concurrency=1,
            # Their DKIM keys (made with each domain) sign no mail here: smaller ones make the set-up quicker.
            extra_env={**PRODUCTION_ENV, "PUSHMAIL_DKIM_KEY_BITS": "1024"},
        )
        for k in range(args.receivers)
    ]
    held = hold_ports(len(receivers))
    for inst, sock in zip(receivers, held, strict=True):
        inst.port = int(sock.getsockname()[1])
    fronts = {inst.name: f"http://127.0.0.1:{proxies.add(inst.name, inst.port)}" for inst in receivers}
    for sock in held:
        sock.close()
    # Every domain of a receiver resolves to its one base URL, behind its proxy.
    sender.peers = {d: fronts[inst.name] for inst, share in zip(receivers, shares, strict=True) for d in share}
    for inst in receivers:
        inst.peers = {LIST_DOMAIN: sender.base_url}
        inst.extra_env["PUSHMAIL_BASE_URL"] = fronts[inst.name]
    instances = [sender, *receivers]
    records: list[dict[str, object]] = []
    total = sum(counts.values())
    try:
        log(f"setting up the sender and {len(receivers)} receivers ({total} subscribers, {len(counts)} domains)")
        started = time.monotonic()

        def setup(inst: Instance) -> None:
            inst.setup([])
            if inst is sender:
                inst.shell(sender_code(counts))
            else:
                share = shares[receivers.index(inst)]
                inst.domains = share
                inst.shell(receiver_code({d: counts[d] for d in share}))

        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(setup, instances))
        log(f"set up in {time.monotonic() - started:.0f} s; starting {len(instances)} instances")
        for inst in instances:
            inst.start()
        issues = ["Warm-up issue", "Issue 1"] if args.warmup else ["Issue 1"]
        for subject in issues:
            log(f"publishing {subject!r}")
            record = send_issue(
                sender, receivers, proxies, subject=subject, size=args.size, total=total, timeout=args.timeout
            )
            record.update(
                tool="pushmail",
                subscribers=total,
                receivers=len(receivers),
                sender_worker_processes=args.workers,
                receiver_web_workers=args.web_workers,
                warm=subject != issues[0] or not args.warmup,
            )
            log(record)
            records.append(record)
    finally:
        stop_all(instances)
        proxies.close()
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--domains", type=int, default=1000)
    parser.add_argument("--receivers", type=int, default=4, help="receiving instances; each hosts its share")
    parser.add_argument("--workers", type=int, default=4, help="the sender's Celery worker processes")
    parser.add_argument("--web-workers", type=int, default=2, help="each receiver's gunicorn workers")
    parser.add_argument("--size", type=int, default=4000, help="bytes of the issue's text (and of each SMTP message)")
    parser.add_argument("--parallel", type=int, default=8, help="smtp-source runs into Postfix at once")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--no-warmup", dest="warmup", action="store_false")
    parser.add_argument("--skip-postfix", action="store_true")
    args = parser.parse_args()
    if shutil.which("smtp-sink") is None:
        raise SystemExit("smtp-sink is missing: apt-get install postfix")
    counts = spread(args.subscribers, domain_names(args.domains))
    before = machine()
    log(f"machine: {before}")
    records: list[dict[str, object]] = []
    base_dir = Path(tempfile.mkdtemp(prefix="pushmail-bench-newsletter-"))
    try:
        records += pushmail_run(args, counts, base_dir)
        if not args.skip_postfix:
            sink_port = free_port()
            sink = subprocess.Popen(
                ["smtp-sink", "-u", "postfix", f"127.0.0.1:{sink_port}", "512"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                wait_for_greeting(sink_port, "smtp-sink", sink)
                log(
                    f"postfix: {args.subscribers} messages of {args.size} bytes over {args.domains} domains to the sink"
                )
                records.append(postfix_run(sink_port, counts, size=args.size, parallel=args.parallel))
            finally:
                sink.terminate()
                sink.wait(timeout=30)
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)
    emit({"machine": before, "after": machine()})
    for record in records:
        emit(record)
    measured = [r for r in records if r["tool"] == "pushmail" and r["warm"]]
    postfix = next((r for r in records if r["tool"] == "postfix"), None)
    rows = [
        [
            "pushmail",
            r["subscribers"],
            r["notification_requests"],
            r["delivery_task_runs"],
            r["seconds_to_all_domains_accepted"],
            r["seconds_to_all_entries"],
        ]
        for r in measured
    ]
    if postfix:
        rows.append(["postfix", postfix["messages"], "-", "-", postfix["seconds"], postfix["seconds"]])
    print(table(["sender", "subscribers", "requests", "tasks", "s to all domains", "s to all entries"], rows))
    if postfix and measured and measured[-1]["seconds_to_all_entries"]:
        ratio = float(measured[-1]["seconds_to_all_entries"]) / float(postfix["seconds"])  # type: ignore[arg-type]
        print(f"pushmail / postfix time: {ratio:.3f}")


if __name__ == "__main__":
    main()
