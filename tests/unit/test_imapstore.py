"""IMAP's mailboxes, UIDs and flags over the user's mail (mailaccess.imapstore)."""

from __future__ import annotations

from typing import Any

import pytest

from accounts.models import User
from federation import payloads
from mailaccess import imapstore
from mailbox import folders
from mailbox.models import EntryState, FetchState, Folder, InboxEntry, Label, ReceivedAttachment
from outbox.models import Draft
from tests.conftest import Queued, ago
from tests.factories import InboxEntryFactory, RemoteMessageFactory, SentMessageFactory

pytestmark = pytest.mark.django_db


def _entry(owner: User, **remote: Any) -> InboxEntry:
    message = RemoteMessageFactory(local_domain=owner.domain.name, **remote)
    entry: InboxEntry = InboxEntryFactory(owner=owner, remote=message, state=message.state)
    return entry


def _box(user: User, name: str) -> imapstore.Box:
    box = imapstore.find_box(user_id=user.pk, name=name)
    assert box is not None, name
    return box


def test_uids_ascend_stay_put_and_a_moved_message_gets_a_higher_uid_in_its_new_mailbox(bob: User) -> None:
    older, newer = _entry(bob), _entry(bob)
    InboxEntry.objects.filter(pk=older.pk).update(received_at=ago(hours=1))
    inbox, archive = _box(bob, "inbox"), _box(bob, "Archive")

    first = imapstore.sync(user_id=bob.pk, box=inbox)
    assert [(r.uid, r.ref) for r in first.rows] == [(1, str(older.pk)), (2, str(newer.pk))]
    archived = _entry(bob)
    folders.move_entries(user=bob, entry_ids=[archived.pk], folder=Folder.ARCHIVE)
    assert [r.uid for r in imapstore.sync(user_id=bob.pk, box=archive).rows] == [1]

    # Moved in the webmail: gone from INBOX, the next UID in Archive; moved back: a new UID in INBOX.
    folders.move_entries(user=bob, entry_ids=[older.pk], folder=Folder.ARCHIVE)
    assert [(r.uid, r.ref) for r in imapstore.sync(user_id=bob.pk, box=inbox).rows] == [(2, str(newer.pk))]
    assert [(r.uid, r.ref) for r in imapstore.sync(user_id=bob.pk, box=archive).rows] == [
        (1, str(archived.pk)),
        (2, str(older.pk)),
    ]
    folders.move_entries(user=bob, entry_ids=[older.pk], folder=Folder.INBOX)
    again = imapstore.sync(user_id=bob.pk, box=inbox)
    assert [(r.uid, r.ref) for r in again.rows] == [(2, str(newer.pk)), (3, str(older.pk))]
    assert again.uid_validity == first.uid_validity and again.uid_next == 4


def test_flags_map_to_read_and_starred_both_ways(bob: User) -> None:
    entry = _entry(bob)
    inbox = _box(bob, "INBOX")
    imapstore.set_flags(user_id=bob.pk, box=inbox, refs=[str(entry.pk)], seen=True, flagged=True)
    entry.refresh_from_db()
    assert (entry.read, entry.starred) == (True, True)

    folders.star(user=bob, entry_ids=[entry.pk], starred=False)
    (row,) = imapstore.sync(user_id=bob.pk, box=inbox).rows
    assert (row.seen, row.flagged) == (True, False)


def test_expunge_moves_to_trash_deletes_from_trash_and_takes_a_label_off(bob: User) -> None:
    kept, trashed = _entry(bob), _entry(bob)
    label = folders.create_label(user=bob, name="Work")
    folders.apply_label(user=bob, entry_ids=[kept.pk], label_id=label.pk)

    imapstore.expunge(user_id=bob.pk, box=_box(bob, "Work"), refs=[str(kept.pk)])
    kept.refresh_from_db()
    assert kept.folder == Folder.INBOX and not kept.labels.exists()

    imapstore.expunge(user_id=bob.pk, box=_box(bob, "INBOX"), refs=[str(trashed.pk)])
    trashed.refresh_from_db()
    assert trashed.folder == Folder.TRASH
    imapstore.expunge(user_id=bob.pk, box=_box(bob, "Trash"), refs=[str(trashed.pk)])
    assert not InboxEntry.objects.filter(pk=trashed.pk).exists()


def test_listing_headers_comes_from_the_notification_and_fetches_nothing(bob: User, queued: list[Queued]) -> None:
    entry = _entry(bob, subject="Quarterly figures", sender="carol@peer.test", size=300)
    InboxEntry.objects.filter(pk=entry.pk).update(attachments_size=700)

    loaded = imapstore.headers(user_id=bob.pk, box=_box(bob, "INBOX"), refs=[str(entry.pk)])

    head = loaded[str(entry.pk)]
    assert b"Subject: Quarterly figures\r\n" in head.data and head.size == 1000
    assert queued == []
    entry.refresh_from_db()
    assert (entry.state, entry.read) == (EntryState.NOTIFIED, False)


def test_a_peek_at_a_body_at_the_sender_asks_one_fetch_and_leaves_it_unread(
    bob: User, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    entry = _entry(bob)
    inbox = _box(bob, "INBOX")
    with django_capture_on_commit_callbacks(execute=True):
        asked = imapstore.ask_bodies(user_id=bob.pk, box=inbox, refs=[str(entry.pk)], peek=True)

    assert [q.name for q in queued] == ["mailbox.fetch_body"] and len(asked.fetches) == 1
    assert imapstore.messages(user_id=bob.pk, box=inbox, refs=[str(entry.pk)], peek=True) == {str(entry.pk): None}
    entry.refresh_from_db()
    assert not entry.read


def test_labels_are_mailboxes_and_a_label_named_like_a_folder_is_kept_apart(bob: User) -> None:
    Label.objects.create(owner=bob, name="Trips")
    Label.objects.create(owner=bob, name="Archive")
    names = [box.name for box in imapstore.list_boxes(user_id=bob.pk)]
    assert names == ["INBOX", "Archive", "Sent", "Drafts", "Spam", "Trash", "Labels/Archive", "Trips"]
    with pytest.raises(imapstore.CannotDo):
        imapstore.delete_label(user_id=bob.pk, name="Trash")


def test_append_makes_a_draft_and_sent_takes_only_what_pushmail_sent(bob: User) -> None:
    data = b"To: carol@peer.test\r\nSubject: Plan\r\n\r\nHalf written\r\n"
    uid = imapstore.append(user_id=bob.pk, box=_box(bob, "Drafts"), data=data)
    draft = Draft.objects.get(owner=bob)
    assert (draft.to, draft.subject, draft.text.strip()) == ("carol@peer.test", "Plan", "Half written")
    assert uid == 1
    with pytest.raises(imapstore.CannotDo):
        imapstore.append(user_id=bob.pk, box=_box(bob, "Sent"), data=b"Message-ID: <x@y>\r\n\r\nhi\r\n")
    with pytest.raises(imapstore.CannotDo):
        imapstore.append(user_id=bob.pk, box=_box(bob, "INBOX"), data=data)


def test_a_sent_message_reads_in_the_sent_mailbox_as_its_download_does_with_the_name_it_went_out_with(
    bob: User, client: Any, queued: list[Queued]
) -> None:
    User.objects.filter(pk=bob.pk).update(display_name="Bob Builder")
    bob.refresh_from_db()
    message = SentMessageFactory(sender=bob, to=["carol@peer.test"], subject="Plan", text="See you")
    sent = _box(bob, "Sent")
    ref = str(message.pk)
    assert [r.ref for r in imapstore.sync(user_id=bob.pk, box=sent).rows] == [ref]

    loaded = imapstore.messages(user_id=bob.pk, box=sent, refs=[ref], peek=True)[ref]
    assert loaded is not None
    assert b"From: Bob Builder <bob@alpha.test>" in loaded.data
    client.force_login(bob)
    download = client.get(f"/mail/sent/{message.pk}/eml/")
    assert download.status_code == 200 and download.content == loaded.data


def test_the_token_page_tells_which_imap_server_and_ports_to_type_in(client: Any, alice: User, settings: Any) -> None:
    settings.PUSHMAIL_SMTP_HOSTNAME = "mail.alpha.test"
    settings.PUSHMAIL_IMAP_LISTEN = "0.0.0.0:143"
    settings.PUSHMAIL_IMAP_TLS_LISTEN = "0.0.0.0:993"
    settings.PUSHMAIL_MAILACCESS_TLS_CERT, settings.PUSHMAIL_MAILACCESS_TLS_KEY = "cert.pem", "key.pem"
    client.force_login(alice)
    page = client.get("/settings/tokens/").content.decode()
    assert "Incoming server (IMAP)" in page
    assert "<code>143</code> with STARTTLS, or <code>993</code> with SSL/TLS" in page


def test_reading_a_fetched_message_leaves_its_attachments_at_the_sender(bob: User, queued: list[Queued]) -> None:
    remote = RemoteMessageFactory(local_domain=bob.domain.name, state=FetchState.FETCHED, subject="Report")
    remote.content = payloads.canonical_body(
        global_id=remote.global_id,
        message_id=remote.message_id,
        sender=remote.sender,
        to=[bob.email],
        cc=[],
        subject="Report",
        date=remote.date,
        text="See the attached report.",
        html=None,
        in_reply_to="",
        references=[],
    )
    remote.attachments = [
        {"name": "report.pdf", "type": "application/pdf", "size": 5000, "digest": payloads.digest(b"x" * 5000)}
    ]
    remote.save(update_fields=["content", "attachments"])
    entry = InboxEntryFactory(owner=bob, remote=remote, state=EntryState.FETCHED, has_attachments=True)

    loaded = imapstore.messages(user_id=bob.pk, box=_box(bob, "INBOX"), refs=[str(entry.pk)], peek=True)

    eml = loaded[str(entry.pk)]
    assert eml is not None and b"See the attached report." in eml.data and b"report.pdf" in eml.data
    assert not ReceivedAttachment.objects.exists() and queued == []
