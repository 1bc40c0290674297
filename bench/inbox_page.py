"""Webmail inbox page: server time with 100,000 messages in the mailbox against 100.

One process, PostgreSQL on loopback. The script creates its own database
(``pushmail_bench_inbox`` by default; dropped at the end unless ``--keep``),
migrates it, and fills two mailboxes on one domain:

- big@bench.test: 100,000 entries over three years (70 % Inbox, 20 % Archive,
  5 % Spam, 5 % Trash; 2 % unread; a third still at the sender's; one in ten
  labelled; fetched ones carry 2 KB of body text in their search document;
  half the messages alone, the others in conversations of 2 to 12, whose
  messages are spread over the three years and the folders like the rest);
- small@bench.test: 100 entries with the same mix.

It then times ``GET /mail/inbox/`` through Django's test client in-process
(middleware, session, the view's queries, template rendering: everything the
server does for the page except the socket), alternating the two mailboxes,
after a warm-up. It also times a page deep in the big inbox (keyset cursor at
row 50,000) and prints the PostgreSQL plans of the page and unread-count
queries, so the indexes used are on record.

    python -m bench.inbox_page                       # 300 requests per mailbox
    python -m bench.inbox_page --requests 500 --entries 100000 --keep

DATABASE_URL (a PostgreSQL URL; else PUSHMAIL_BENCH_POSTGRES + /pushmail_bench_inbox;
default postgres://postgres@127.0.0.1:5432/pushmail_bench_inbox) names the database;
the script connects to the server's ``postgres`` database to create and drop it.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from urllib.parse import urlsplit, urlunsplit

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/pushmail_bench_inbox"


def admin_execute(database_url: str, *statements: str) -> None:
    """Run statements on the server's maintenance database (CREATE/DROP DATABASE)."""
    import psycopg

    parts = urlsplit(database_url)
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def configure(database_url: str) -> None:
    # Production-like: DEBUG off (Django does not record queries), warnings-only logs.
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "pushmail_site.settings",
            "DATABASE_URL": database_url,
            "DEBUG": "0",
            "LOG_LEVEL": "WARNING",
            "SECRET_KEY": "bench-only-secret-key-not-for-production",
            "PUSHMAIL_KEY_ENCRYPTION_KEY": "bench-only-key-encryption-key-not-for-production",
            "PUSHMAIL_BASE_URL": "https://bench.example",
            "ALLOWED_HOSTS": "testserver",
            "CELERY_BROKER_URL": "memory://",
        }
    )
    import django

    django.setup()


BODY = (
    "Hello, here are the notes from this week's meeting. We talked about the roadmap, "
    "the budget for next quarter and who takes over the release duties. "
) * 14  # about 2 KB


def fill(owner, count: int, labels: list, *, seed: int) -> None:  # type: ignore[no-untyped-def]
    """``count`` entries for ``owner`` over three years, inserted in batches."""
    from django.db import connection
    from django.utils import timezone

    from mailbox.models import EntryState, Folder, InboxEntry

    rng = random.Random(seed)
    now = timezone.now()
    span = 3 * 365 * 86400
    folders = [Folder.INBOX] * 14 + [Folder.ARCHIVE] * 4 + [Folder.SPAM, Folder.TRASH]
    through = InboxEntry.labels.through
    batch = 5000
    # Conversations: half the messages alone, the rest in conversations of 2 to 12.
    sizes = [1] * 10 + [2, 2, 3, 3, 4, 5, 6, 8, 10, 12]
    thread, left = 0, 0
    for start in range(0, count, batch):
        rows = []
        for i in range(start, min(count, start + batch)):
            if left == 0:
                thread, left = thread + 1, rng.choice(sizes)
            left -= 1
            at_sender = rng.random() < 1 / 3
            folder = rng.choice(folders)
            rows.append(
                InboxEntry(
                    owner=owner,
                    sender=f"correspondent{rng.randrange(500)}@peer{rng.randrange(40)}.test",
                    subject=f"Re: project update number {i} about the quarterly plans",
                    size=rng.randrange(2_000, 400_000),
                    state=EntryState.NOTIFIED if at_sender else EntryState.FETCHED,
                    folder=folder,
                    read=rng.random() >= 0.02,
                    starred=rng.random() < 0.03,
                    has_attachments=rng.random() < 0.15,
                    trashed_at=now if folder == Folder.TRASH else None,
                    search_document="" if at_sender else BODY,
                    thread_key=f"<thread-{seed}-{thread}@bench.test>",
                )
            )
        made = InboxEntry.objects.bulk_create(rows)
        # received_at is auto_now_add: spread it over three years after the insert, in one statement.
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE mailbox_inboxentry"
                " SET received_at = %s - (abs(hashint4(id::int + %s::int)::bigint) %% %s) * interval '1 second'"
                " WHERE owner_id = %s AND id BETWEEN %s AND %s",
                [now, seed, span, owner.pk, made[0].pk, made[-1].pk],
            )
        links = [
            through(inboxentry_id=entry.pk, label_id=rng.choice(labels).pk)
            for entry in made
            if rng.random() < 0.1  # type: ignore[misc]
        ]
        through.objects.bulk_create(links, ignore_conflicts=True)


def plans(owner) -> dict[str, str]:  # type: ignore[no-untyped-def]
    from django.db import connection

    from mailbox import selectors
    from mailbox.models import Folder, InboxEntry

    # The statement folder_page runs: the Inbox, one row per conversation (its newest entry).
    inbox = selectors._latest_of_conversation(InboxEntry.objects.owned_by(owner).filter(folder=Folder.INBOX))
    page = inbox.order_by("-received_at", "-pk")[:51]

    def explain(sql: str, params: list[object]) -> str:
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN ANALYZE " + sql, params)
            return "\n".join(row[0] for row in cursor.fetchall())

    # The statements mailbox.selectors runs for the sidebar, for the inbox part and the labels.
    inbox_part = f"SELECT COUNT(*) FROM ({selectors._FOLDER_UNREAD} LIMIT {selectors.UNREAD_CAP}) AS part"  # noqa: S608
    return {
        "page": page.explain(analyze=True),
        "unread_counts": explain(inbox_part, [owner.pk, Folder.INBOX]),
        "label_unread_counts": explain(selectors._LABEL_UNREAD, [owner.pk, Folder.INBOX, Folder.ARCHIVE]),
    }


def time_requests(client_for, paths: dict[str, str], requests: int, warmup: int) -> dict[str, list[float]]:  # type: ignore[no-untyped-def]
    """Alternate the mailboxes so both see the same machine conditions; ms per request."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    for round_ in range(warmup + requests):
        for name, path in paths.items():
            client = client_for[name]
            started = time.perf_counter()
            response = client.get(path)
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code != 200:
                raise RuntimeError(f"{path} answered {response.status_code}")
            if round_ >= warmup:
                times[name].append(elapsed)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument(
        "--quiet", type=float, default=25.0, help="wait (up to 3 min) until the machine is below this %% busy"
    )
    parser.add_argument("--keep", action="store_true", help="keep the database (and reuse it if already filled)")
    args = parser.parse_args()

    database_url = os.environ.get("DATABASE_URL", "")
    if not database_url.startswith("postgres"):
        server = os.environ.get("PUSHMAIL_BENCH_POSTGRES")  # as the other benchmarks (bench/run_all.sh)
        database_url = f"{server.rstrip('/')}/pushmail_bench_inbox" if server else DEFAULT_URL
    dbname = urlsplit(database_url).path.lstrip("/")
    if not dbname.replace("_", "").isalnum():
        raise SystemExit(f"unexpected database name {dbname!r}")

    from bench.common import cpu_report, cpu_sample, emit, log, machine, mean, percentile, table, wait_for_quiet

    reuse = False
    if args.keep:
        import psycopg

        try:
            with psycopg.connect(database_url) as conn:
                reuse = bool(conn.execute("SELECT to_regclass('mailbox_inboxentry')").fetchone()[0])  # type: ignore[index]
        except psycopg.OperationalError:
            reuse = False
    if not reuse:
        admin_execute(database_url, f'DROP DATABASE IF EXISTS "{dbname}"', f'CREATE DATABASE "{dbname}"')
    configure(database_url)

    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import override_settings

    from accounts.models import Domain, User
    from accounts.services import create_domain, create_mailbox
    from mailbox.models import InboxEntry, Label

    try:
        if not reuse:
            log("migrating")
            call_command("migrate", verbosity=0, interactive=False)
        with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
            if not Domain.objects.filter(name="bench.test").exists():
                create_domain(name="bench.test")
            users = {}
            for name in ("big", "small"):
                address = f"{name}@bench.test"
                users[name] = User.objects.filter(email=address).first() or create_mailbox(
                    address=address, password="bench-pw-1"
                )
        for name, count, seed in (("big", args.entries, 1), ("small", args.small, 2)):
            user = users[name]
            have = InboxEntry.objects.filter(owner=user).count()
            if have != count:
                InboxEntry.objects.filter(owner=user).delete()
                labels = [Label.objects.get_or_create(owner=user, name=f"Label {i}")[0] for i in range(5)]
                log(f"filling {name}@bench.test with {count} entries")
                started = time.monotonic()
                fill(user, count, labels, seed=seed)
                log(f"  {time.monotonic() - started:.0f} s")
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")

        clients = {}
        for name, user in users.items():
            clients[name] = Client()
            clients[name].force_login(user)
        big_inbox = InboxEntry.objects.filter(owner=users["big"], folder="inbox").order_by("-received_at", "-pk")
        middle = big_inbox[big_inbox.count() // 2]
        from mailbox.selectors import Cursor

        paths = {
            "big": "/mail/inbox/",
            "small": "/mail/inbox/",
            "big_deep": f"/mail/inbox/?before={Cursor.of(middle).encode()}",
        }
        client_for = {"big": clients["big"], "small": clients["small"], "big_deep": clients["big"]}
        page_html = clients["big"].get("/mail/inbox/").content.decode()
        rows = page_html.count('data-testid="message-row"')
        if rows != 50:
            raise RuntimeError(f"the big inbox page shows {rows} rows, not 50")

        busy = wait_for_quiet(args.quiet, 180)
        before = cpu_sample()
        times = time_requests(client_for, paths, args.requests, args.warmup)
        cpu = cpu_report(before, {})
        query_plans = plans(users["big"])
    finally:
        connection.close()
        if not args.keep:
            admin_execute(database_url, f'DROP DATABASE IF EXISTS "{dbname}"')

    results = {}
    for name, values in times.items():
        results[name] = {
            "requests": len(values),
            "p50_ms": round(percentile(values, 50), 2),
            "p95_ms": round(percentile(values, 95), 2),
            "p99_ms": round(percentile(values, 99), 2),
            "mean_ms": round(mean(values), 2),
        }
    ratio = results["big"]["p95_ms"] / results["small"]["p95_ms"]
    verdict = {
        "p95_under_100ms": results["big"]["p95_ms"] < 100,
        "ratio_p95_big_over_small": round(ratio, 2),
        "ratio_at_most_1_5": ratio <= 1.5,
    }
    used = {
        name: sorted({word for word in plan.replace("(", " ").split() if word.startswith(("entry_", "mailbox_"))})
        for name, plan in query_plans.items()
    }
    emit(
        {
            "benchmark": "inbox_page",
            "entries": {"big": args.entries, "small": args.small},
            "results": results,
            "verdict": verdict,
            "indexes": used,
            "machine_busy_before_pct": round(busy, 1),
            "cpu": cpu.to_json(),
            "machine": machine(),
        }
    )
    print(
        table(
            ["mailbox", "entries", "requests", "p50 ms", "p95 ms", "p99 ms", "mean ms"],
            [
                [
                    name,
                    args.entries if name.startswith("big") else args.small,
                    r["requests"],
                    r["p50_ms"],
                    r["p95_ms"],
                    r["p99_ms"],
                    r["mean_ms"],
                ]
                for name, r in results.items()
            ],
        )
    )
    print(f"\np95 big / small = {ratio:.2f} (target ≤ 1.5); big p95 {results['big']['p95_ms']} ms (target < 100 ms)")
    for name, plan in query_plans.items():
        print(f"\n-- plan: {name}\n{plan}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
