"""The open inbox's poll: rows that left the folder since the page was drawn (a spam verdict hid
them, they were moved or deleted) are named so the page removes them, withdrawn rows are named so
the page marks them, and the unread count follows; one query more per poll, however many rows."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import Domain, User
from mailbox import folders
from mailbox import services as mailbox_services
from mailbox.models import EntryState, Folder, InboxEntry, RemoteMessage
from mailbox.services import accept_notification, fetch_body
from reputation.models import Read
from tests.conftest import FakePeer, api_as
from tests.factories import InboxEntryFactory, MailboxFactory, PeerMessageFactory, RemoteMessageFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def web(alice: User) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def ids(header: str) -> list[int]:
    return [int(x) for x in header.split(",") if x]


def row_ids(response: Any) -> list[int]:
    return [int(x) for x in re.findall(r'data-testid="message-row" data-entry-id="(\d+)"', response.content.decode())]


def poll(web: Client, shown: list[InboxEntry] | str, after: str = "") -> Any:
    shown_param = shown if isinstance(shown, str) else ",".join(str(e.pk) for e in shown)
    response = web.get("/mail/inbox/updates/", {"after": after, "shown": shown_param})
    assert response.status_code == 200
    return response


def test_a_spam_verdict_removes_the_unopened_copy_from_the_open_inbox_and_its_unread_count(
    web: Client, alice: User, bob: User
) -> None:
    remote = RemoteMessageFactory(subject="Cheap watches")
    spam = InboxEntryFactory(owner=alice, remote=remote)
    InboxEntryFactory(owner=bob, remote=remote)
    keeper = InboxEntryFactory(owner=alice)
    page = web.get("/mail/inbox/")
    assert set(row_ids(page)) == {spam.pk, keeper.pk}
    before = poll(web, [spam, keeper])
    assert before["X-Gone"] == "" and before["X-Unread-Count"] == "2"

    hidden = mailbox_services.hide_as_spam(remote_id=remote.pk, reason="3 people at beta.example reported this")

    assert hidden == 2  # alice's and bob's copies, in one statement
    after = poll(web, [spam, keeper])
    assert ids(after["X-Gone"]) == [spam.pk]
    assert after["X-Unread-Count"] == "1"
    # The Spam folder has it, with the reason.
    in_spam = web.get("/mail/spam/")
    assert row_ids(in_spam) == [spam.pk]
    assert "3 people at beta.example reported this" in in_spam.content.decode()


def test_rows_moved_or_deleted_elsewhere_are_named_gone_and_rows_still_there_are_not(web: Client, alice: User) -> None:
    moved, deleted, kept = (InboxEntryFactory(owner=alice) for _ in range(3))
    folders.move_entries(user=alice, entry_ids=[str(moved.pk)], folder=Folder.ARCHIVE)
    InboxEntry.objects.filter(pk=deleted.pk).delete()
    response = poll(web, [moved, deleted, kept])
    assert sorted(ids(response["X-Gone"])) == sorted([moved.pk, deleted.pk])
    # The archive's own open list would keep the moved row.
    archive = web.get("/mail/archive/updates/", {"after": "", "shown": f"{moved.pk},{kept.pk}"})
    assert ids(archive["X-Gone"]) == [kept.pk]


def test_a_withdrawn_row_stays_and_is_named_withdrawn(web: Client, alice: User) -> None:
    withdrawn, other = InboxEntryFactory(owner=alice), InboxEntryFactory(owner=alice)
    InboxEntry.objects.filter(pk=withdrawn.pk).update(state=EntryState.WITHDRAWN)
    response = poll(web, [withdrawn, other])
    assert response["X-Gone"] == ""
    assert ids(response["X-Withdrawn"]) == [withdrawn.pk]


def test_someone_elses_row_is_only_ever_gone_and_reveals_nothing(web: Client, bob: User) -> None:
    theirs = InboxEntryFactory(owner=bob, subject="Bob's secret")
    response = poll(web, [theirs])
    assert ids(response["X-Gone"]) == [theirs.pk]
    assert b"secret" not in response.content


def test_new_rows_and_gone_rows_come_in_the_same_poll(web: Client, alice: User) -> None:
    old = InboxEntryFactory(owner=alice)
    after = web.get("/mail/inbox/").context["page"].items[0].cursor
    new = InboxEntryFactory(owner=alice)
    InboxEntry.objects.filter(pk=new.pk).update(received_at=old.received_at + timedelta(seconds=1))
    folders.move_entries(user=alice, entry_ids=[str(old.pk)], folder=Folder.TRASH)
    response = poll(web, [old], after=after)
    assert row_ids(response) == [new.pk]
    assert ids(response["X-Gone"]) == [old.pk]


@pytest.mark.parametrize("shown", ["", "abc", "1,,x,-3", "9" * 40, ",".join(["1"] * 5000)])
def test_a_malformed_shown_list_is_ignored_not_an_error(web: Client, alice: User, shown: str) -> None:
    InboxEntryFactory(owner=alice)
    response = poll(web, shown)
    assert response["X-Gone"] in ("", "1")


def test_the_poll_costs_the_same_queries_for_one_shown_row_as_for_a_page(web: Client, alice: User) -> None:
    entries = [InboxEntryFactory(owner=alice) for _ in range(60)]
    InboxEntry.objects.filter(pk__in=[e.pk for e in entries[:30]]).update(folder=Folder.SPAM, read=True)
    poll(web, entries[:1])  # warm the session and caches

    def queries(shown: list[InboxEntry]) -> int:
        with CaptureQueriesContext(connection) as captured:
            response = poll(web, shown)
        assert len(ids(response["X-Gone"])) == sum(1 for e in shown if e in entries[:30])
        return len(captured)

    assert queries(entries[:1]) == queries(entries) == queries([]) + 1


def test_a_spam_run_hidden_while_a_second_user_watches(web: Client, alice: User, local_domain: Domain) -> None:
    """The person's-eye view in one process: the run's row is on alice's open page, three other
    recipients report it through the API, and her next poll removes it and lowers her count."""
    readers = [MailboxFactory(domain=local_domain, local_part=f"reader{n}") for n in range(3)]
    # Established accounts, whose reports count whole (reputation.trust).
    User.objects.filter(pk__in=[r.pk for r in readers]).update(date_joined=timezone.now() - timedelta(days=30))
    remote = RemoteMessageFactory(subject="You have won")
    hers = InboxEntryFactory(owner=alice, remote=remote)
    theirs = [InboxEntryFactory(owner=r, remote=remote) for r in readers]
    assert row_ids(web.get("/mail/inbox/")) == [hers.pk]
    for reader, entry in zip(readers, theirs, strict=True):
        assert api_as(reader).post(f"/api/v1/inbox/{entry.pk}/spam/").status_code in (200, 201)
    response = poll(web, [hers])
    assert ids(response["X-Gone"]) == [hers.pk]
    assert response["X-Unread-Count"] == "0"
    hers.refresh_from_db()
    assert hers.folder == Folder.SPAM and hers.hidden_from == Folder.INBOX


# --- the user API says which folder an entry is in ------------------------------------------------


def test_the_api_lists_each_entrys_folder_and_filters_by_folder(alice: User, bob: User) -> None:
    remote = RemoteMessageFactory(subject="Cheap watches")
    spam = InboxEntryFactory(owner=alice, remote=remote)
    keeper = InboxEntryFactory(owner=alice, subject="Lunch?")
    mailbox_services.hide_as_spam(remote_id=remote.pk, reason="3 people at beta.example reported this")
    client = api_as(alice)
    everything = client.get("/api/v1/inbox/").json()["results"]
    assert {(e["id"], e["folder"]) for e in everything} == {(spam.pk, "spam"), (keeper.pk, "inbox")}
    assert [e["id"] for e in client.get("/api/v1/inbox/", {"folder": "inbox"}).json()["results"]] == [keeper.pk]
    assert [e["id"] for e in client.get("/api/v1/inbox/", {"folder": "spam"}).json()["results"]] == [spam.pk]
    assert client.get(f"/api/v1/inbox/{spam.pk}/").json()["folder"] == "spam"


def test_an_unknown_folder_is_a_400_naming_it(alice: User) -> None:
    response = api_as(alice).get("/api/v1/inbox/", {"folder": "junk"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid"
    assert "junk" in response.json()["fields"]["folder"][0]


def test_a_body_that_arrives_while_the_api_opens_the_entry_counts_as_seen(
    alice: User, peer: FakePeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The body lands between the API's open and its answer: the reader gets it, so the entry is
    opened (a verdict must not hide it as unseen) and the reader counts among the message's readers."""
    message = PeerMessageFactory()
    peer.bodies[str(message.global_id)] = message.content()
    accept_notification(origin=peer.domain, notification=message.notification([alice.email]))
    remote = RemoteMessage.objects.get(global_id=message.global_id)
    entry = InboxEntry.objects.get(owner=alice, remote=remote)
    original = mailbox_services.open_entry

    def open_while_the_fetch_finishes(*, entry: InboxEntry) -> InboxEntry:
        opened = original(entry=entry)
        fetch_body(remote.pk)  # the worker finishes the fetch at this very moment
        return opened

    monkeypatch.setattr(mailbox_services, "open_entry", open_while_the_fetch_finishes)
    response = api_as(alice).get(f"/api/v1/inbox/{entry.pk}/")
    assert response.status_code == 200 and response.json()["body"] is not None
    entry.refresh_from_db()
    assert entry.opened_at is not None
    assert Read.objects.filter(message=remote, reader=alice).exists()
