"""The inbox page runs a fixed number of queries, however big the mailbox."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import User
from mailbox import selectors
from mailbox.models import EntryState, Folder, InboxEntry, Label

pytestmark = pytest.mark.django_db

# session, user, inbox page (one row per conversation), labels of the page's rows, the
# page's conversations (received, then sent messages), sender display names,
# unread counts (one grouped query), sidebar labels, and their unread counts.
INBOX_PAGE_QUERIES = 10


def fill(owner: User, count: int) -> None:
    """``count`` entries across folders and states, some unread, starred, labelled."""
    now = timezone.now()
    states = [EntryState.NOTIFIED, EntryState.FETCHED, EntryState.FETCHED, EntryState.WITHDRAWN]
    folders = [Folder.INBOX] * 6 + [Folder.ARCHIVE, Folder.ARCHIVE, Folder.SPAM, Folder.TRASH]
    made = InboxEntry.objects.bulk_create(
        [
            InboxEntry(
                owner=owner,
                sender=f"sender{i % 37}@peer.test",
                subject=f"Message {i}",
                size=1000 + i,
                state=states[i % len(states)],
                folder=folders[i % len(folders)],
                read=i % 3 != 0,
                starred=i % 11 == 0,
                has_attachments=i % 5 == 0,
                # Conversations of one to five messages, spread over the folders.
                thread_key=f"<thread-{i // 5 if i % 3 else i}@peer.test>",
            )
            for i in range(count)
        ],
        batch_size=2000,
    )
    InboxEntry.objects.filter(pk__in=[e.pk for e in made]).update(received_at=now - timedelta(hours=1))
    work, home = Label.objects.create(owner=owner, name="Work"), Label.objects.create(owner=owner, name="Home")
    through = InboxEntry.labels.through
    through.objects.bulk_create(
        [through(inboxentry_id=e.pk, label_id=(work if i % 2 else home).pk) for i, e in enumerate(made) if i % 4 == 0],
        batch_size=2000,
    )


@pytest.mark.parametrize("size", [200, 10_000])
def test_inbox_page_query_count_is_fixed(  # type: ignore[no-untyped-def]
    alice: User, bob: User, size: int, django_assert_num_queries
) -> None:
    bob.display_name = "Bob"
    bob.save(update_fields=["display_name"])
    fill(alice, size)
    client = Client()
    client.force_login(alice)
    client.get("/mail/inbox/")  # warm caches outside the count (content types, templates)
    with django_assert_num_queries(INBOX_PAGE_QUERIES):
        response = client.get("/mail/inbox/")
    assert response.status_code == 200
    # One row per conversation: 50 of them, each standing for one to five messages.
    assert response.content.decode().count('data-testid="message-row"') == 50
    assert sum(row.thread_count for row in response.context["entries"]) > 50
    # The next (older) page costs the same.
    older = response.context["page"].older
    with django_assert_num_queries(INBOX_PAGE_QUERIES):
        assert client.get("/mail/inbox/", {"before": older}).status_code == 200


def test_inbox_page_query_count_does_not_grow_with_labels_on_rows(alice: User) -> None:
    fill(alice, 200)
    client = Client()
    client.force_login(alice)
    client.get("/mail/inbox/")
    with CaptureQueriesContext(connection) as queries:
        client.get("/mail/inbox/")
    assert len(queries.captured_queries) == INBOX_PAGE_QUERIES
    # No query counts the whole folder: every count stops at the cap (the sent messages of the
    # page's conversations are counted by their keys, on the sender's thread index).
    counting = [
        q["sql"].upper()
        for q in queries.captured_queries
        if "COUNT(" in q["sql"].upper() and '"THREAD_KEY" IN' not in q["sql"].upper()
    ]
    caps = (f"LIMIT {selectors.UNREAD_CAP}", f"LIMIT {selectors.LABEL_SCAN_CAP}")
    assert counting and all(any(cap in sql for cap in caps) for sql in counting), counting


@pytest.mark.django_db(transaction=True)  # VACUUM runs outside a transaction
@pytest.mark.django_db(transaction=True)  # VACUUM runs outside a transaction
def test_page_and_unread_counts_use_their_indexes(alice: User, bob: User) -> None:
    # Alice's mail is a small part of the instance's, as it is in real life.
    fill(alice, 5000)
    InboxEntry.objects.bulk_create(
        [InboxEntry(owner=bob, sender="x@peer.test", size=1, state="fetched", read=True) for _ in range(20_000)],
        batch_size=5000,
    )
    with connection.cursor() as cursor:
        # Fresh statistics and visibility map, as autovacuum keeps them on a live instance.
        cursor.execute("VACUUM ANALYZE mailbox_inboxentry" if connection.vendor == "postgresql" else "ANALYZE")
    for folder in (Folder.INBOX, Folder.SPAM):
        plan = InboxEntry.objects.filter(owner=alice, folder=folder).order_by("-received_at", "-pk")[:51].explain()
        # Rows come straight off an index in page order: no sort of the whole folder.
        assert "Sort" not in plan and "TEMP B-TREE" not in plan, plan
        # A big folder may be read off the owner's all-mail index; a small one off the folder's.
        assert "entry_folder_page" in plan or (folder == Folder.INBOX and "entry_all_page" in plan), plan
    # Each part of mailbox.selectors.unread_counts walks the partial unread index, up to the cap.
    with CaptureQueriesContext(connection) as queries:
        counts = selectors.unread_counts(user=alice)
    assert len(queries.captured_queries) == 1
    assert counts[Folder.INBOX] == InboxEntry.objects.filter(owner=alice, read=False, folder=Folder.INBOX).count()
    assert queries.captured_queries[0]["sql"].count(f"LIMIT {selectors.UNREAD_CAP}") == len(Folder.values)
    for folder in (Folder.INBOX, Folder.SPAM):
        part = InboxEntry.objects.filter(owner=alice, read=False, folder=folder).values("folder").order_by()
        plan = part[: selectors.UNREAD_CAP].explain()
        assert "entry_unread_by_folder" in plan, plan
        if connection.vendor == "postgresql":
            assert "Index Only Scan" in plan, plan
