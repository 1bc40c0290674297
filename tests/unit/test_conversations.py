"""Conversations: how messages are grouped, one row per conversation in the lists, opening one,
and actions on the whole of it (or one message of it)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import User
from mailbox.models import EntryState, Folder, InboxEntry, Label
from mailbox.services import accept_notification
from outbox.models import Message
from outbox.services import send_message
from outbox.threads import normalized_subject, reply_prefixed
from tests.conftest import FakePeer, Queued, ago, api_as
from tests.factories import InboxEntryFactory, PeerMessage, PeerMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]


def _client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _receive(peer: FakePeer, message: PeerMessage, owner: str = "alice@alpha.test") -> InboxEntry:
    peer.bodies[str(message.global_id)] = message.content()
    results = accept_notification(origin=peer.domain, notification=message.notification())
    assert any(r.status == "accepted" for r in results), results
    return InboxEntry.objects.get(remote__global_id=message.global_id, owner__email=owner)


def _rows(html: str) -> list[str]:
    return re.findall(r'<tr data-testid="message-row"[^>]*>.*?</tr>', html, flags=re.S)


def _row_ids(html: str) -> list[int]:
    return [int(pk) for pk in re.findall(r'data-testid="message-row" data-entry-id="(\d+)"', html)]


def _row_of(html: str, entry: InboxEntry) -> str:
    found = [row for row in _rows(html) if f'data-entry-id="{entry.pk}"' in row]
    assert len(found) == 1, _rows(html)
    return found[0]


def _count(row: str) -> int:
    match = re.search(r'data-testid="thread-count"[^>]*>(\d+)<', row)
    return int(match.group(1)) if match else 1


def _entry(owner: User, key: str, *, at: datetime, folder: str = Folder.INBOX, read: bool = True, **kw) -> InboxEntry:  # type: ignore[no-untyped-def]
    entry = InboxEntryFactory(owner=owner, thread_key=key, folder=folder, read=read, **kw)
    InboxEntry.objects.filter(pk=entry.pk).update(received_at=at)
    entry.refresh_from_db()
    return entry


# --- grouping ----------------------------------------------------------------------------


def test_subject_normalization() -> None:
    assert reply_prefixed("Re: Budget") and reply_prefixed("FWD: Budget") and reply_prefixed("AW: Budget")
    assert reply_prefixed("Re[2]: Budget") and not reply_prefixed("Budget") and not reply_prefixed("Rebates")
    assert normalized_subject("Re: RE: Fwd:  The  Budget") == normalized_subject("the budget") == "the budget"


def test_replies_follow_references_and_in_reply_to(alice: User, peer: FakePeer) -> None:
    first = PeerMessageFactory(subject="Lunch?", date=ago(hours=3))
    first_entry = _receive(peer, first)
    # Alice answers from here; the answer to her answer names only her message (In-Reply-To alone).
    mine = send_message(
        sender=alice, to=["carol@peer.test"], subject="Re: Lunch?", text="Friday.", in_reply_to=first.message_id
    )
    answer = _receive(peer, PeerMessageFactory(subject="Re: Lunch?", in_reply_to=mine.message_id))
    # A later reply with the whole chain.
    chained = _receive(
        peer,
        PeerMessageFactory(subject="Re: Lunch?", in_reply_to=answer.remote.message_id, references=[first.message_id]),
    )
    other = _receive(peer, PeerMessageFactory(subject="Something else"))

    assert first_entry.thread_key == answer.thread_key == chained.thread_key == mine.thread_key == first.message_id
    html = _client(alice).get("/mail/inbox/").content.decode()
    assert _row_ids(html) == [other.pk, chained.pk]  # one row for the conversation, its newest message
    row = _row_of(html, chained)
    assert _count(row) == 4  # three received, one sent
    assert "carol" in row and "me" in row


def test_reply_naming_only_a_received_parent_joins_its_conversation(alice: User, peer: FakePeer) -> None:
    root = PeerMessageFactory(subject="Venue")
    root_entry = _receive(peer, root)
    middle = PeerMessageFactory(subject="Re: Venue", in_reply_to=root.message_id, references=[root.message_id])
    _receive(peer, middle)
    # A client that keeps In-Reply-To but drops References.
    last = _receive(
        peer, PeerMessageFactory(subject="Re: Venue", sender="dave@peer.test", in_reply_to=middle.message_id)
    )

    assert last.thread_key == root_entry.thread_key == root.message_id


def test_reply_without_headers_joins_by_subject_and_participant(alice: User, peer: FakePeer) -> None:
    budget = _receive(peer, PeerMessageFactory(subject="Budget 2027"))
    # Same sender, reply subject, no In-Reply-To or References: the same conversation.
    reply = _receive(peer, PeerMessageFactory(subject="RE: budget  2027"))
    # Another sender with the same subject shares no participant: a conversation of its own.
    stranger = _receive(peer, PeerMessageFactory(subject="Re: Budget 2027", sender="dave@peer.test"))
    # No reply prefix: a new conversation, whatever the subject.
    fresh = _receive(peer, PeerMessageFactory(subject="Budget 2027"))

    assert reply.thread_key == budget.thread_key
    assert stranger.thread_key != budget.thread_key
    assert fresh.thread_key != budget.thread_key


def test_reply_without_headers_joins_the_conversation_the_user_started(alice: User, peer: FakePeer) -> None:
    sent = send_message(sender=alice, to=["dave@peer.test"], subject="Plans", text="Shall we?")
    reply = _receive(peer, PeerMessageFactory(subject="Re: Plans", sender="dave@peer.test"))

    assert reply.thread_key == sent.thread_key
    html = _client(alice).get(f"/mail/entry/{reply.pk}/").content.decode()
    assert f'data-key="sent-{sent.pk}"' in html


def test_subject_fallback_stops_after_the_window(alice: User, peer: FakePeer) -> None:
    old = _receive(peer, PeerMessageFactory(subject="Report"))
    InboxEntry.objects.filter(pk=old.pk).update(received_at=timezone.now() - timedelta(days=45))

    reply = _receive(peer, PeerMessageFactory(subject="Re: Report"))

    assert reply.thread_key != old.thread_key


# --- lists -------------------------------------------------------------------------------


def test_list_row_stands_for_the_conversation(alice: User) -> None:
    now = timezone.now()
    _entry(alice, "<t@x>", at=now - timedelta(hours=3), sender="ann@peer.test", read=False, state=EntryState.NOTIFIED)
    _entry(alice, "<t@x>", at=now - timedelta(hours=2), sender="bob@peer.test", folder=Folder.ARCHIVE)
    _entry(alice, "<t@x>", at=now - timedelta(hours=2), sender="eve@peer.test", folder=Folder.TRASH)
    newest = _entry(alice, "<t@x>", at=now - timedelta(hours=1), sender="ann@peer.test", state=EntryState.FETCHED)
    single = _entry(alice, "", at=now - timedelta(minutes=5), sender="zed@peer.test", state=EntryState.FETCHED)

    html = _client(alice).get("/mail/inbox/").content.decode()

    assert _row_ids(html) == [single.pk, newest.pk]
    row = _row_of(html, newest)
    # Inbox and Archive count, Trash does not; one message unread and at the sender's: the row says so.
    assert _count(row) == 3
    assert 'class="message-row unread"' in row and "at sender" in row
    assert "ann, bob" in row and "eve" not in row
    single_row = _row_of(html, single)
    assert "thread-count" not in single_row and "unread" not in single_row and "at sender" not in single_row
    # Seen from Archive, the conversation is its archived message's row; from Trash, its trashed one's.
    archive = _client(alice).get("/mail/archive/").content.decode()
    assert len(_rows(archive)) == 1 and _count(_rows(archive)[0]) == 3
    trash = _client(alice).get("/mail/trash/").content.decode()
    assert len(_rows(trash)) == 1 and _count(_rows(trash)[0]) == 1


def test_a_conversation_is_on_one_page_only(alice: User) -> None:
    now = timezone.now()
    newest = _entry(alice, "<long@x>", at=now)
    oldest = _entry(alice, "<long@x>", at=now - timedelta(days=10))
    singles = [_entry(alice, f"<s{i}@x>", at=now - timedelta(hours=i + 1)) for i in range(55)]

    client = _client(alice)
    first = client.get("/mail/inbox/")
    second = client.get("/mail/inbox/", {"before": first.context["page"].older})

    first_ids, second_ids = _row_ids(first.content.decode()), _row_ids(second.content.decode())
    assert first_ids[0] == newest.pk and len(first_ids) == 50
    assert oldest.pk not in first_ids + second_ids
    assert sorted(first_ids[1:] + second_ids) == sorted(s.pk for s in singles)


def test_label_list_shows_one_row_per_conversation(alice: User) -> None:
    label = Label.objects.create(owner=alice, name="Work")
    now = timezone.now()
    a = _entry(alice, "<w@x>", at=now - timedelta(hours=2))
    b = _entry(alice, "<w@x>", at=now - timedelta(hours=1))
    a.labels.add(label)
    b.labels.add(label)

    html = _client(alice).get(f"/mail/label/{label.pk}/").content.decode()

    assert _row_ids(html) == [b.pk] and _count(_row_of(html, b)) == 2


def test_live_inbox_replaces_the_row_of_a_conversation(alice: User) -> None:
    now = timezone.now()
    old = _entry(alice, "<live@x>", at=now - timedelta(hours=1))
    client = _client(alice)
    page = client.get("/mail/inbox/")
    cursor = page.context["page"].items[0].cursor
    reply = _entry(alice, "<live@x>", at=now, read=False)

    response = client.get("/mail/inbox/updates/", {"after": cursor, "shown": str(old.pk)})

    html = response.content.decode()
    assert _row_ids(html) == [reply.pk]
    assert 'data-conversation="&lt;live@x&gt;"' in html and _count(_row_of(html, reply)) == 2


# --- opening a conversation --------------------------------------------------------------


def test_opening_expands_and_fetches_every_unread_message(
    alice: User, peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    first = PeerMessageFactory(subject="Trip", text="First body")
    entries = [_receive(peer, first)]
    for i in range(3):
        entries.append(
            _receive(peer, PeerMessageFactory(subject="Re: Trip", text=f"Reply {i}", references=[first.message_id]))
        )
    read_before = entries[1]
    InboxEntry.objects.filter(pk=read_before.pk).update(read=True)

    with django_capture_on_commit_callbacks(execute=True):
        html = _client(alice).get(f"/mail/entry/{entries[-1].pk}/").content.decode()

    # Every unread one is marked read and expanded, its fetch asked for; the read one stays folded.
    assert not InboxEntry.objects.filter(owner=alice, read=False).exists()
    fetched = sorted(task.args[0] for task in queued if task.name.endswith("fetch_body"))
    unread = [e for e in entries if e.pk != read_before.pk]
    assert fetched == sorted(e.remote_id for e in unread)
    for entry in unread:
        details = re.search(rf'data-key="entry-{entry.pk}"[^>]*>', html)
        assert details and " open" in details.group(0), details
        assert f'hx-get="/mail/entry/{entry.pk}/body/' in html
    folded = re.search(rf'data-key="entry-{read_before.pk}"[^>]*>', html)
    assert folded and " open" not in folded.group(0)
    # The sidebar's unread count follows.
    inbox = _client(alice).get("/mail/inbox/").content.decode()
    assert "unread" not in _row_of(inbox, entries[-1])


# --- actions -----------------------------------------------------------------------------


def _post(client: Client, url: str, **data: object) -> None:
    response = client.post(url, data)
    assert response.status_code == 302, response.status_code


def test_row_actions_act_on_the_whole_conversation(alice: User, bob: User) -> None:
    now = timezone.now()
    archived = _entry(alice, "<c@x>", at=now - timedelta(hours=3), folder=Folder.ARCHIVE)
    older = _entry(alice, "<c@x>", at=now - timedelta(hours=2), read=False)
    newest = _entry(alice, "<c@x>", at=now - timedelta(hours=1), read=False)
    in_trash = _entry(alice, "<c@x>", at=now - timedelta(hours=1), folder=Folder.TRASH)
    bystander = _entry(alice, "<other@x>", at=now, read=False)
    not_hers = _entry(bob, "<c@x>", at=now, read=False)
    client = _client(alice)

    _post(client, "/mail/bulk/", action="read", ids=[newest.pk])
    assert not InboxEntry.objects.filter(pk__in=[older.pk, newest.pk], read=False).exists()

    _post(client, "/mail/bulk/", action="star", ids=[newest.pk])
    assert set(InboxEntry.objects.filter(starred=True).values_list("pk", flat=True)) == {
        archived.pk,
        older.pk,
        newest.pk,
    }

    label = Label.objects.create(owner=alice, name="Trips")
    _post(client, "/mail/bulk/", action="label", label=label.pk, ids=[newest.pk])
    assert set(label.entries.values_list("pk", flat=True)) == {archived.pk, older.pk, newest.pk}

    # `e` on a row posts "archive" to the row's own action URL: the whole conversation goes.
    _post(client, f"/mail/entry/{newest.pk}/action/", action="archive")
    folders = dict(InboxEntry.objects.values_list("pk", "folder"))
    assert folders[older.pk] == folders[newest.pk] == folders[archived.pk] == Folder.ARCHIVE
    assert folders[in_trash.pk] == Folder.TRASH and folders[bystander.pk] == Folder.INBOX
    assert (
        InboxEntry.objects.get(pk=not_hers.pk).folder == Folder.INBOX
        and not InboxEntry.objects.get(pk=not_hers.pk).read
    )

    _post(client, "/mail/bulk/", action="delete", ids=[archived.pk])
    assert set(InboxEntry.objects.filter(owner=alice, folder=Folder.TRASH).values_list("pk", flat=True)) == {
        archived.pk,
        older.pk,
        newest.pk,
        in_trash.pk,
    }
    assert InboxEntry.objects.get(pk=bystander.pk).folder == Folder.INBOX


def test_message_menu_acts_on_one_message(alice: User) -> None:
    now = timezone.now()
    older = _entry(alice, "<m@x>", at=now - timedelta(hours=2), state=EntryState.FETCHED)
    newest = _entry(alice, "<m@x>", at=now - timedelta(hours=1), state=EntryState.FETCHED)
    client = _client(alice)
    html = client.get(f"/mail/entry/{newest.pk}/").content.decode()
    assert html.count('data-testid="message-menu"') == 2

    _post(
        client, f"/mail/entry/{older.pk}/action/", action="archive", scope="message", next=f"/mail/entry/{newest.pk}/"
    )

    assert InboxEntry.objects.get(pk=older.pk).folder == Folder.ARCHIVE
    assert InboxEntry.objects.get(pk=newest.pk).folder == Folder.INBOX


def test_a_foreign_id_still_refuses_the_whole_selection(alice: User, bob: User) -> None:
    now = timezone.now()
    mine = _entry(alice, "<f@x>", at=now)
    theirs = _entry(bob, "<f@x>", at=now)

    _post(_client(alice), "/mail/bulk/", action="archive", ids=[mine.pk, theirs.pk])

    assert InboxEntry.objects.get(pk=mine.pk).folder == Folder.INBOX
    assert InboxEntry.objects.get(pk=theirs.pk).folder == Folder.INBOX


def test_sent_only_conversation_counts_sent_messages(alice: User, bob: User) -> None:
    sent = send_message(sender=alice, to=["bob@alpha.test"], subject="Hi Bob", text="Hello")
    entry = InboxEntry.objects.get(owner=bob, local=sent)
    Message.objects.filter(pk=sent.pk).update(date=ago(minutes=5))

    html = _client(bob).get("/mail/inbox/").content.decode()

    assert _row_ids(html) == [entry.pk] and _count(_row_of(html, entry)) == 1


# --- the user API ------------------------------------------------------------------------


def test_api_gives_and_filters_by_conversation(alice: User, bob: User) -> None:
    now = timezone.now()
    a = _entry(alice, "<api@x>", at=now - timedelta(hours=1))
    b = _entry(alice, "<api@x>", at=now)
    _entry(alice, "<other@x>", at=now)
    _entry(bob, "<api@x>", at=now)
    client = api_as(alice)

    listed = client.get("/api/v1/inbox/", {"conversation": "<api@x>"}).json()
    assert sorted(row["id"] for row in listed["results"]) == sorted([a.pk, b.pk])
    assert {row["conversation"] for row in listed["results"]} == {"<api@x>"}
    assert client.get(f"/api/v1/inbox/{a.pk}/").json()["conversation"] == "<api@x>"
    refused = client.get("/api/v1/inbox/", {"conversation": "x" * 401})
    assert refused.status_code == 400 and "conversation" in refused.json()["fields"]


def test_opening_a_conversation_still_at_the_senders_costs_the_same_however_many_are_unread(
    alice: User, peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks, settings
) -> None:  # type: ignore[no-untyped-def]
    # Each fetch queued leaves a mark in the shared cache (pushmail_site.jobs): Redis in production,
    # in memory here, so that what is counted is the database's work. (The fallback database cache
    # writes each mark as a row.)
    settings.CACHES = {
        **settings.CACHES,
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "conversation-marks"},
    }
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = _client(alice)
    client.get("/mail/inbox/")  # the session and the per-process caches, out of the count
    counts = {}
    for unread in (2, 6):
        first = PeerMessageFactory(subject=f"Party {unread}")
        entries = [_receive(peer, first)]
        for i in range(unread - 1):
            reply = PeerMessageFactory(subject=f"Re: Party {unread}", text=f"Reply {i}", references=[first.message_id])
            entries.append(_receive(peer, reply))
        queued.clear()
        with CaptureQueriesContext(connection) as queries, django_capture_on_commit_callbacks(execute=True):
            html = client.get(f"/mail/entry/{entries[0].pk}/").content.decode()
        counts[unread] = len(queries)
        # Each is read, on its way (one fetch queued per message), and shown as being fetched.
        fetched = sorted(task.args[0] for task in queued if task.name.endswith("fetch_body"))
        assert fetched == sorted(e.remote_id for e in entries)
        for entry in entries:
            entry.refresh_from_db()
            assert entry.read and entry.state == EntryState.FETCHING
        assert html.count('data-testid="fetch-indicator"') == unread
    assert counts[2] == counts[6], counts
