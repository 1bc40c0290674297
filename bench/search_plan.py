"""Search at 100,000 messages on PostgreSQL: the query plans (is the GIN index used?)
and the server time of the search page.

Fills a scratch database with one mailbox of N entries (plus another user's mail,
which must never show), each with a search document like a fetched message's:
subject, sender and ~80 words of body from a 5,000-word vocabulary with a
Zipf-like spread. A rare word sits in 12 messages, a common one in about a third.
Then, for each search, prints ``EXPLAIN (ANALYZE, BUFFERS)`` of the results query
and the page's server time (Django test client, p50/p95 of 30 requests).

    python -m bench.search_plan                      # 100,000 entries
    python -m bench.search_plan --entries 100000 --keep
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/scratch python -m bench.search_plan
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/pushmail_search_bench"
RARE, COMMON = "zanzibar", "report"
SENDER = "dana.okafor@lumen.example"  # one of 400 correspondents


def _vocabulary(rng: random.Random, size: int = 5000) -> list[str]:
    syllables = ["ka", "lo", "mi", "ren", "tas", "vo", "del", "sun", "pra", "gi", "mor", "te", "lin", "qua", "bes"]
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    return sorted(words - {RARE, COMMON})


def _prepare_database(url: str) -> None:
    import psycopg

    server, _, name = url.rpartition("/")
    with psycopg.connect(server + "/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def _drop_database(url: str) -> None:
    import psycopg
    from django.db import connections

    connections.close_all()
    server, _, name = url.rpartition("/")
    with psycopg.connect(server + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def _fill(entries: int) -> tuple[object, object]:
    from django.db import connection

    from accounts.models import User
    from accounts.services import create_domain, create_mailbox
    from mailbox.models import EntryState, Folder, InboxEntry
    from mailbox.search import entry_document

    if User.objects.filter(email="reader@bench.test").exists():
        reader = User.objects.get(email="reader@bench.test")
        if InboxEntry.objects.filter(owner=reader).count() == entries:
            return reader, User.objects.get(email="other@bench.test")
        InboxEntry.objects.all().delete()
    else:
        domain = create_domain(name="bench.test")
        create_mailbox(address="reader@bench.test", password="bench-password-1")  # noqa: S106
        create_mailbox(address="other@bench.test", password="bench-password-1")  # noqa: S106
        del domain
    reader = User.objects.get(email="reader@bench.test")
    other = User.objects.get(email="other@bench.test")
    # Bulk loading is much faster with the GIN index built once afterwards (the model's own index).
    index = next(i for i in InboxEntry._meta.indexes if i.name == "mailbox_entry_search_fts")
    with connection.schema_editor() as editor:
        editor.remove_index(InboxEntry, index)
    rng = random.Random(7)
    vocab = _vocabulary(rng)
    weights = [1 / (rank + 1) for rank in range(len(vocab))]
    domains = [f"{rng.choice(vocab)}.example" for _ in range(40)]
    senders = [f"{rng.choice(vocab)}.{rng.choice(vocab)}@{rng.choice(domains)}" for _ in range(400)]
    senders[0] = SENDER
    folders = [Folder.INBOX] * 6 + [Folder.ARCHIVE] * 3 + [Folder.TRASH]
    rare_at = set(rng.sample(range(entries), 12))
    start = datetime(2024, 1, 1, tzinfo=UTC)
    step = timedelta(days=700) / entries
    batch: list[InboxEntry] = []
    total = entries + entries // 5
    for n in range(total):
        owner = reader if n < entries else other
        words = rng.choices(vocab, weights=weights, k=80)
        if rng.random() < 0.33:
            words[rng.randrange(80)] = COMMON
        if n in rare_at or (owner is other and n % 1000 == 0):
            words[rng.randrange(80)] = RARE
        subject = " ".join(rng.choices(vocab, weights=weights, k=5)).capitalize()
        sender = rng.choice(senders)
        batch.append(
            InboxEntry(
                owner=owner,
                sender=sender,
                subject=subject,
                size=rng.randint(800, 60_000),
                state=EntryState.FETCHED if rng.random() < 0.7 else EntryState.NOTIFIED,
                folder=rng.choice(folders),
                has_attachments=rng.random() < 0.1,
                read=rng.random() < 0.97,  # the unread counts on every page depend on it
                search_document=entry_document(subject=subject, sender=sender, text=" ".join(words)),
            )
        )
        if len(batch) == 5000:
            InboxEntry.objects.bulk_create(batch)
            batch = []
    if batch:
        InboxEntry.objects.bulk_create(batch)
    with connection.schema_editor() as editor:
        editor.add_index(InboxEntry, index)
    with connection.cursor() as cursor:
        # Spread received_at over two years, in id order (as mail arrives).
        cursor.execute(
            "UPDATE mailbox_inboxentry SET received_at = %s + (id - (SELECT min(id) FROM mailbox_inboxentry)) * %s",
            [start, step],
        )
        cursor.execute("VACUUM ANALYZE mailbox_inboxentry")
    return reader, other


def _explain(sql: str, params: object) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database for another run")
    args = parser.parse_args()

    url = os.environ.get("DATABASE_URL", DEFAULT_URL)
    if not url.startswith("postgres"):
        sys.exit("DATABASE_URL must be a PostgreSQL database: the plan is PostgreSQL's")
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DEBUG", "1")
    os.environ.setdefault("CELERY_BROKER_URL", "memory://")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pushmail_site.settings")
    _prepare_database(url)

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.test import Client

    from mailbox import search

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    call_command("migrate", verbosity=0)
    began = time.perf_counter()
    reader, _other = _fill(args.entries)
    filled = time.perf_counter() - began
    print(f"# {args.entries} entries for the reader (+{args.entries // 5} for another user); fill {filled:.0f} s\n")

    client = Client()
    client.force_login(reader)
    cases = [
        ("rare word", {"q": RARE}),
        ("common word", {"q": COMMON}),
        ("rare word, folder=archive", {"q": RARE, "folder": "archive"}),
        ("two words", {"q": f"{COMMON} {RARE}"}),
        ("one correspondent", {"sender": SENDER}),
        ("one correspondent, from: in the box", {"q": f"from:{SENDER} {COMMON}"}),
        ("a whole domain, with attachments", {"sender": "@" + SENDER.partition("@")[2], "has_attachment": "1"}),
    ]
    try:
        for title, params in cases:
            entries = search.search_entries(
                user=reader,
                query=search.parse_query(params.get("q", "")),
                folder=params.get("folder", ""),
                sender=params.get("sender", ""),
                has_attachment=bool(params.get("has_attachment")),
            )
            sql, sql_params = entries[: search.PAGE_SIZE + 1].query.sql_with_params()
            plan = _explain(sql, sql_params)
            timings = []
            for _ in range(args.requests):
                t0 = time.perf_counter()
                response = client.get("/search/", params)
                timings.append((time.perf_counter() - t0) * 1000)
                assert response.status_code == 200
            rows = response.content.decode().count('data-testid="message-row"')
            p95 = statistics.quantiles(timings, n=20)[-1]
            print(f"## {title}: {params}")
            print(f"rows on page: {rows}; page server time p50 {statistics.median(timings):.1f} ms, p95 {p95:.1f} ms")
            print(plan)
            print()
    finally:
        if not args.keep:
            _drop_database(url)


if __name__ == "__main__":
    main()
