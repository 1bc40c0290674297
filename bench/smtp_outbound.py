"""Outbound SMTP: messages a second delivered to a Postfix ``smtp-sink``, against Postfix relaying the same load.

In one run, on the same machine, both senders deliver to the same ``smtp-sink``
(Debian's postfix package: it answers 250 to everything and stores nothing):

1. Pushmail: one instance (PostgreSQL, Redis, a Celery worker with CONCURRENCY
   processes), N messages of about SIZE bytes from one mailbox, each to one
   recipient at a domain without Pushmail whose MX (from a DNS server on loopback)
   is the sink. The messages are stored first with their deliveries held back;
   the clock starts when they are all made due at once, and stops when every
   delivery is ``notified`` (the sink answered 250 to the message; the database's
   clock, from the commit that made them due to the last ``notified_at``). Each one is
   discovered (cached), built as MIME, DKIM-signed (RSA 2048), and sent over its
   own SMTP session, as in production.
2. Postfix: ``smtp-source`` hands the same number of messages of SIZE bytes to a
   private Postfix (tests/smtp_support.PostfixServer) over SESSIONS sessions;
   Postfix relays them to the sink (``transport_maps``, its default concurrency of
   20 sessions per destination). Timed from the first connection until Postfix's
   log shows every message ``status=sent``.

Run as root (Postfix): ``python -m bench.smtp_outbound [--messages 1000] [--concurrency 8]``.
Prints JSON lines and a table.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import time

import psycopg

from bench.common import PRODUCTION_ENV, ROOT, emit, log, machine, server_backend, table
from tests.smtp_support import PostfixServer, dns_server, free_port, wait_for_greeting
from tools.cluster import Instance

HOSTED = "alpha.test"
SENDER = f"alice@{HOSTED}"
SINK_DOMAIN = "sink.test"
RECIPIENT = f"bob@{SINK_DOMAIN}"


def _count(inst: Instance, query: str) -> int:
    with psycopg.connect(inst.database_url, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def _store_held_messages(inst: Instance, *, messages: int, size: int) -> None:
    """N messages, each with its delivery held back a day (so the worker leaves it alone)."""
    inst.shell(
        "from datetime import timedelta\n"
        "from django.db import transaction\n"
        "from django.utils import timezone\n"
        "from accounts.models import User\n"
        "from outbox.models import Delivery\n"
        "from outbox.services import send_message\n"
        f"alice = User.objects.get(email={SENDER!r})\n"
        f"text = ('All the figures for this quarter, line by line. ' * {size // 48 + 1})[:{size}]\n"
        f"for i in range({messages}):\n"
        "    with transaction.atomic():\n"
        f"        m = send_message(sender=alice, to=[{RECIPIENT!r}], subject=f'Figures {{i}}', text=text)\n"
        "        Delivery.objects.filter(message=m).update(next_attempt_at=timezone.now() + timedelta(days=1))\n"
    )


def _delivery_task_runs(inst: Instance) -> int:
    """How many times a worker has run the delivery task so far (its log line per run)."""
    log_file = inst.data_dir / "worker.log"
    if not log_file.exists():
        return 0
    text = log_file.read_text(errors="replace")
    return len(re.findall(r"Task outbox\.deliver_notification\[[^\]]+\] (?:succeeded|raised)", text))


def pushmail_run(inst: Instance, *, messages: int, size: int, concurrency: int) -> dict[str, object]:
    _store_held_messages(inst, messages=messages, size=size)
    runs_before = _delivery_task_runs(inst)
    # Made due and queued in one go; timed by the database's clock from then until the last
    # delivery's notified_at (the start-up of this shell is not counted).
    started = inst.shell(
        "from django.utils import timezone\n"
        "from outbox.models import Delivery\n"
        "from outbox.delivery import queue_deliveries\n"
        "now = timezone.now()\n"
        "held = Delivery.objects.filter(state='pending', next_attempt_at__gt=now)\n"
        "ids = list(held.values_list('pk', flat=True))\n"
        "Delivery.objects.filter(pk__in=ids).update(next_attempt_at=now)\n"
        "queue_deliveries(ids)\n"
        "print(now.timestamp(), ','.join(map(str, ids)))\n"
    ).split()
    start, ids = float(started[0]), started[1]
    deadline = time.monotonic() + 1800
    delivered = 0
    query = f"FROM outbox_delivery WHERE id IN ({ids})"
    while time.monotonic() < deadline:
        delivered = _count(inst, f"SELECT count(*) {query} AND state = 'notified' AND transport = 'smtp'")
        if delivered >= messages or _count(inst, f"SELECT count(*) {query} AND state = 'failed'"):
            break
        time.sleep(0.5)
    end = _count(inst, f"SELECT extract(epoch FROM max(notified_at)) * 1000 {query}") / 1000
    seconds = end - start
    time.sleep(2)  # the last runs' log lines
    # Each delivery needs one run; more means the sweep queued rows the broker still held.
    task_runs = _delivery_task_runs(inst) - runs_before
    return {
        "tool": "pushmail",
        "messages": messages,
        "delivered": delivered,
        "seconds": round(seconds, 3),
        "messages_per_second": round(delivered / seconds, 1),
        "size_bytes": size,
        "worker_processes": concurrency,
        "delivery_task_runs": task_runs,
    }


def postfix_run(sink_port: int, *, messages: int, size: int, sessions: int) -> dict[str, object]:
    postfix = PostfixServer(
        [
            f"relay_domains = {SINK_DOMAIN}",
            "transport_maps = texthash:$config_directory/transport",
            "smtpd_relay_restrictions = permit_mynetworks, reject",
            "smtp_tls_security_level = none",
        ],
        hostname="mail.alpha.test",
        files={"transport": f"{SINK_DOMAIN} smtp:[127.0.0.1]:{sink_port}\n"},
    )
    try:
        start = time.monotonic()
        subprocess.run(
            ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size)]
            + ["-f", SENDER, "-t", RECIPIENT, "-M", "mail.alpha.test", f"127.0.0.1:{postfix.port}"],
            capture_output=True,
            timeout=1800,
            check=True,
        )
        deadline = time.monotonic() + 1800
        sent = 0
        while time.monotonic() < deadline:
            sent = len(re.findall(r"status=sent", postfix.log()))
            if sent >= messages:
                break
            time.sleep(0.05)
        seconds = time.monotonic() - start
    finally:
        postfix.stop()
    return {
        "tool": "postfix",
        "messages": messages,
        "delivered": sent,
        "seconds": round(seconds, 3),
        "messages_per_second": round(sent / seconds, 1),
        "size_bytes": size,
        "sessions_in": sessions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument("--concurrency", type=int, default=8, help="Celery worker processes")
    parser.add_argument("--sessions", type=int, default=10, help="smtp-source sessions into Postfix")
    args = parser.parse_args()
    if shutil.which("smtp-sink") is None:
        raise SystemExit("smtp-sink is missing: apt-get install postfix")

    sink_port = free_port()
    sink = subprocess.Popen(
        ["smtp-sink", "-u", "postfix", f"127.0.0.1:{sink_port}", "256"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    records: list[dict[str, object]] = []
    try:
        wait_for_greeting(sink_port, "smtp-sink", sink)
        with dns_server() as (zone, resolver):
            zone.add(SINK_DOMAIN, "MX", "10 mx.sink.test.")
            zone.add("mx.sink.test", "A", "127.0.0.1")
            data = ROOT / "var" / "bench-smtp-out"
            inst = Instance(name="smtpoutbench", domains=[HOSTED], data_dir=data, backend=server_backend())
            inst.worker_concurrency = args.concurrency
            inst.extra_env = {
                **PRODUCTION_ENV,
                "PUSHMAIL_DNS_RESOLVER": resolver,
                "PUSHMAIL_SMTP_OUTBOUND_PORT": str(sink_port),
                "PUSHMAIL_SMTP_ALLOW_PRIVATE_DOMAINS": SINK_DOMAIN,
                "PUSHMAIL_SMTP_HOSTNAME": "mail.alpha.test",
            }
            log("setting up the instance")
            inst.setup(mailboxes=[SENDER])
            inst.start_worker()
            try:
                log("warm-up: 20 messages")
                pushmail_run(inst, messages=20, size=args.size, concurrency=args.concurrency)
                log(f"pushmail: {args.messages} messages of about {args.size} bytes, {args.concurrency} workers")
                records.append(pushmail_run(inst, messages=args.messages, size=args.size, concurrency=args.concurrency))
            finally:
                inst.stop()
        log("postfix: the same load relayed to the sink")
        records.append(postfix_run(sink_port, messages=args.messages, size=args.size, sessions=args.sessions))
    finally:
        sink.terminate()
        sink.wait(timeout=30)
    emit({"machine": machine()})
    for record in records:
        emit(record)
    rates = {str(r["tool"]): r.get("messages_per_second") for r in records}
    print(table(["sender", "messages/s"], [[name, rate] for name, rate in rates.items()]))
    ours, theirs = rates.get("pushmail"), rates.get("postfix")
    if isinstance(ours, float) and isinstance(theirs, float) and theirs:
        print(f"pushmail / postfix: {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
