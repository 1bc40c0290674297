"""Webmail: server time to open a fetched message (GET /mail/entry/<id>/).

One process, PostgreSQL. The script creates its own database
(``pushmail_bench_open`` on the server ``PUSHMAIL_BENCH_POSTGRES`` names),
migrates it, and fills one mailbox with many fetched messages in
conversations of 1 to 12 messages, some with the reader's own sent replies.
It then opens messages through Django's in-process test client with
production settings (DEBUG off, database sessions, the real middleware and
templates), so the time is the server's: URL routing, session and user,
the conversation queries, rendering, CSP. Nothing goes over the network.

Two passes over the same sample of messages:

- first open: the message is fetched but unread, so opening it marks it read
  and records the read (writes);
- repeat open: the same messages again (reads only).

    python -m bench.open_message                      # 20,000 messages, 400 opens
    python -m bench.open_message --messages 100000 --opens 400
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from bench.common import ROOT, emit, log, machine, mean, percentile, table, wait_for_quiet

DB_NAME = "pushmail_bench_open"
READER = "reader@alpha.test"
TARGET_MS = 50.0
THREAD_SIZES = (1, 1, 1, 2, 2, 3, 4, 5, 8, 12)


def _server() -> str:
    return os.environ.get("PUSHMAIL_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432").rstrip("/")


def _recreate_database() -> str:
    import psycopg

    with psycopg.connect(_server() + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}"')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    return f"{_server()}/{DB_NAME}"


def _drop_database() -> None:
    import psycopg
    from django.db import connections

    connections.close_all()
    with psycopg.connect(_server() + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}"')


def _setup_django(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ["DEBUG"] = "0"  # production-like: no query log kept in memory
    os.environ.setdefault("SECRET_KEY", "bench-only-" + uuid.uuid4().hex)
    os.environ.setdefault("PUSHMAIL_KEY_ENCRYPTION_KEY", "bench-only-key-encryption-" + uuid.uuid4().hex)
    os.environ.setdefault("PUSHMAIL_BASE_URL", "https://bench.example")
    os.environ["ALLOWED_HOSTS"] = "testserver"
    os.environ.setdefault("CELERY_BROKER_URL", "memory://")
    # As in production: the shared cache (and so the sessions) in Redis.
    os.environ.setdefault("CACHE_URL", os.environ.get("PUSHMAIL_BENCH_REDIS", "redis://127.0.0.1:6379") + "/13")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["DJANGO_SETTINGS_MODULE"] = "pushmail_site.settings"
    import django

    django.setup()


def _body_text(n: int, size: int) -> str:
    line = f"Message {n}: the quick brown fox jumps over the lazy dog, and then writes back about it.\n"
    return (line * (size // len(line) + 1))[:size]


def populate(*, messages: int, text_bytes: int, seed: int) -> tuple[int, list[int]]:
    """Fill the reader's mailbox; return (reader id, ids of fetched unread entries one could open)."""
    from django.core.management import call_command
    from django.test.utils import override_settings

    from accounts.services import create_domain, create_mailbox
    from federation import payloads
    from mailbox.models import EntryState, FetchState, InboxEntry, RemoteMessage
    from mailbox.threads import thread_key
    from outbox.models import Message

    call_command("migrate", verbosity=0)
    call_command("createcachetable", verbosity=0)
    create_domain(name="alpha.test")
    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        reader = create_mailbox(address=READER, password="bench-pw-1")  # noqa: S106 - benchmark fixture

    rng = random.Random(seed)
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(days=90)
    step = timedelta(days=90) / max(messages, 1)
    remotes: list[RemoteMessage] = []
    entries: list[InboxEntry] = []
    sent: list[Message] = []
    n = 0
    while n < messages:
        size = rng.choice(THREAD_SIZES)
        chain: list[str] = []
        root = ""
        for position in range(size):
            if n >= messages:
                break
            date = start + step * n
            n += 1
            if position % 3 == 1:  # the reader answered
                global_id = uuid.uuid4()
                message_id = f"<{global_id}@alpha.test>"
                references = list(chain)
                key = thread_key(message_id=message_id, in_reply_to=chain[-1], references=references)
                text = _body_text(n, text_bytes // 2)
                sent.append(
                    Message(
                        id=global_id,
                        sender=reader,
                        sender_address=READER,
                        subject="Re: Conversation",
                        text=text,
                        to=["carol@peer.test"],
                        message_id=message_id,
                        in_reply_to=chain[-1],
                        references=references,
                        date=date,
                        size=len(text),
                        digest="sha-256:bench",
                        expires_at=date + timedelta(days=365),
                        thread_key=key,
                    )
                )
                chain.append(message_id)
                continue
            global_id = uuid.uuid4()
            message_id = f"<{global_id}@peer.test>"
            in_reply_to = chain[-1] if chain else ""
            references = list(chain)
            subject = f"Conversation {n}" if not chain else "Re: Conversation"
            content = payloads.canonical_body(
                global_id=global_id,
                message_id=message_id,
                sender="carol@peer.test",
                to=[READER],
                cc=[],
                subject=subject,
                date=date,
                text=_body_text(n, text_bytes),
                html=None,
                in_reply_to=in_reply_to,
                references=references,
            )
            key = thread_key(message_id=message_id, in_reply_to=in_reply_to, references=references)
            root = root or key
            remote = RemoteMessage(
                origin_domain="peer.test",
                global_id=global_id,
                message_id=message_id,
                sender="carol@peer.test",
                subject=subject,
                date=date,
                size=len(content),
                digest=payloads.digest(content),
                in_reply_to=in_reply_to,
                references=references,
                expires_at=date + timedelta(days=365),
                local_domain="alpha.test",
                state=FetchState.FETCHED,
                content=content,
                fetched_at=date + timedelta(minutes=1),
            )
            remotes.append(remote)
            entries.append(
                InboxEntry(
                    owner=reader,
                    remote=remote,
                    sender="carol@peer.test",
                    subject=subject,
                    size=len(content),
                    state=EntryState.FETCHED,
                    thread_key=key,
                    search_document=f"{subject}\ncarol@peer.test",
                )
            )
            chain.append(message_id)
        if len(remotes) >= 2000:
            _flush(remotes, entries, sent)
    _flush(remotes, entries, sent)
    # received_at is auto_now_add: spread it over the 90 days as real mail would be.
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE mailbox_inboxentry e SET received_at = r.date FROM mailbox_remotemessage r WHERE e.remote_id = r.id"
        )
        cursor.execute("ANALYZE")
    ids = list(InboxEntry.objects.filter(owner=reader).values_list("pk", flat=True))
    return reader.pk, ids


def _flush(remotes: list, entries: list, sent: list) -> None:  # type: ignore[type-arg]
    from mailbox.models import InboxEntry, RemoteMessage
    from outbox.models import Message

    RemoteMessage.objects.bulk_create(remotes)
    InboxEntry.objects.bulk_create(entries)
    Message.objects.bulk_create(sent)
    remotes.clear()
    entries.clear()
    sent.clear()


def time_opens(client, ids: list[int]) -> tuple[list[float], list[int]]:  # type: ignore[no-untyped-def]
    """Server time of each open (seconds) and the thread size each page showed."""
    times: list[float] = []
    sizes: list[int] = []
    for entry_id in ids:
        started = time.perf_counter()
        response = client.get(f"/mail/entry/{entry_id}/")
        elapsed = time.perf_counter() - started
        body = response.content
        if response.status_code != 200 or b'data-testid="message-body"' not in body:
            raise RuntimeError(f"entry {entry_id}: {response.status_code}, no message body in the page")
        times.append(elapsed)
        sizes.append(body.count(b'data-testid="thread-message"'))
    return times, sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000, help="messages in the mailbox")
    parser.add_argument("--opens", type=int, default=400, help="messages opened (each twice)")
    parser.add_argument("--size", type=int, default=4096, help="text bytes per received message")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--profile", action="store_true", help="print a CPU profile of the repeat opens")
    parser.add_argument(
        "--quiet", type=float, default=25.0, help="wait (up to 3 min) until the machine is below this %% busy"
    )
    args = parser.parse_args()

    info = machine()
    log(f"machine: {info}")
    database_url = _recreate_database()
    _setup_django(database_url)
    try:
        log(f"filling {urlsplit(database_url).path[1:]} with {args.messages} messages")
        started = time.monotonic()
        reader_id, ids = populate(messages=args.messages, text_bytes=args.size, seed=args.seed)
        log(f"filled in {time.monotonic() - started:.0f}s")

        from django.db import connection
        from django.test import Client
        from django.test.utils import CaptureQueriesContext

        from accounts.models import User

        client = Client()
        client.force_login(User.objects.get(pk=reader_id))
        rng = random.Random(args.seed)
        sample = rng.sample(ids, min(args.opens, len(ids)))
        warmup = [i for i in ids if i not in set(sample)][:20]
        time_opens(client, warmup)

        busy_before = wait_for_quiet(args.quiet, 180)
        log(f"opening {len(sample)} fetched, unread messages")
        cpu_started = time.process_time()
        first, sizes = time_opens(client, sample)
        log("opening them again")
        repeat, _ = time_opens(client, sample)
        cpu_per_open = (time.process_time() - cpu_started) / (2 * len(sample))
        if args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.runcall(time_opens, client, sample)
            pstats.Stats(profiler, stream=sys.stderr).sort_stats(
                os.environ.get("BENCH_PROFILE_SORT", "cumulative")
            ).print_stats(os.environ.get("BENCH_PROFILE_FILTER", ""), 40)
        # The queries of a first open that marks read: the largest conversation no open has
        # touched yet, all of whose unread messages the open marks read and shows.
        from django.db.models import Count

        from mailbox.models import InboxEntry

        unread = InboxEntry.objects.filter(owner_id=reader_id, read=False).exclude(pk__in=[*sample, *warmup])
        biggest = unread.values("thread_key").annotate(n=Count("pk")).order_by("-n", "thread_key").first()
        if biggest is None:
            raise RuntimeError("no unread message left to count a first open's queries")
        untouched = unread.filter(thread_key=biggest["thread_key"]).order_by("pk").first()
        assert untouched is not None
        unread_in_thread = biggest["n"]
        with CaptureQueriesContext(connection) as first_queries:
            time_opens(client, [untouched.pk])
        with CaptureQueriesContext(connection) as repeat_queries:
            time_opens(client, sample[:1])
    finally:
        if args.keep:
            log(f"kept {database_url}")
        else:
            _drop_database()

    def ms(values: list[float], pct: float) -> float:
        return round(1000 * percentile(values, pct), 1)

    record = {
        "benchmark": "open_message",
        "machine": info,
        "database": "postgresql",
        "messages_in_mailbox": args.messages,
        "opens": len(sample),
        "thread_size": {"mean": round(mean([float(s) for s in sizes]), 1), "max": max(sizes) if sizes else 0},
        "queries_per_open": {"first": len(first_queries), "repeat": len(repeat_queries)},
        "unread_opened_by_the_counted_first_open": unread_in_thread,
        "first_open_ms": {
            "p50": ms(first, 50),
            "p95": ms(first, 95),
            "p99": ms(first, 99),
            "mean": round(1000 * mean(first), 1),
        },
        "repeat_open_ms": {
            "p50": ms(repeat, 50),
            "p95": ms(repeat, 95),
            "p99": ms(repeat, 99),
            "mean": round(1000 * mean(repeat), 1),
        },
        # CPU time of this (the server's) process per open, mean: what the page costs
        # apart from waiting for PostgreSQL and for the CPU on a busy machine.
        "server_cpu_ms_per_open": round(1000 * cpu_per_open, 1),
        "machine_busy_pct_before": round(busy_before, 1),
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "target": f"p95 < {TARGET_MS:.0f} ms",
        "met": ms(first, 95) < TARGET_MS and ms(repeat, 95) < TARGET_MS,
    }
    emit(record)
    print(
        table(
            ["open", "messages", "opens", "queries", "p50 ms", "p95 ms", "p99 ms", "target", "met"],
            [
                [
                    name,
                    args.messages,
                    len(sample),
                    record["queries_per_open"][key],  # type: ignore[index]
                    values["p50"],
                    values["p95"],
                    values["p99"],
                    record["target"],
                    values["p95"] < TARGET_MS,
                ]
                for name, key, values in (
                    ("first (marks read)", "first", record["first_open_ms"]),
                    ("repeat", "repeat", record["repeat_open_ms"]),
                )
            ],
        )
    )
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
