"""The POP3 maildrop's reads and writes (mailaccess.maildrop) and the sign-in checks it shares with submission."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection

from accounts.mail_logins import check_mail_login
from accounts.models import User
from accounts.services import issue_api_token
from federation import payloads
from gateway import submission
from mailaccess import maildrop
from mailbox.models import EntryState, FetchState, Folder, InboxEntry, RemoteMessage
from tests.conftest import Queued, ago
from tests.factories import InboxEntryFactory, RemoteMessageFactory

pytestmark = pytest.mark.django_db


def _entry(owner: User, **remote: Any) -> InboxEntry:
    message = RemoteMessageFactory(local_domain=owner.domain.name, **remote)
    entry: InboxEntry = InboxEntryFactory(owner=owner, remote=message, state=message.state)
    return entry


def test_the_maildrop_is_the_inbox_oldest_first_listed_without_fetching(bob: User, queued: list[Queued]) -> None:
    older, newer = _entry(bob, size=300), _entry(bob, size=500)
    InboxEntry.objects.filter(pk=older.pk).update(received_at=ago(hours=1))
    InboxEntry.objects.filter(pk=_entry(bob).pk).update(folder=Folder.ARCHIVE)
    _entry(InboxEntryFactory().owner)  # someone else's

    items = maildrop.list_maildrop(user_id=bob.pk)

    assert [(i.entry_id, i.size, i.uid) for i in items] == [
        (older.pk, 300, f"pm{older.pk}"),
        (newer.pk, 500, f"pm{newer.pk}"),
    ]
    assert queued == []


def _fetched(owner: User, text: str) -> InboxEntry:
    message = RemoteMessageFactory(local_domain=owner.domain.name, state=FetchState.FETCHED)
    content = payloads.canonical_body(
        global_id=message.global_id,
        message_id=message.message_id,
        sender=message.sender,
        to=[owner.email],
        cc=[],
        subject=message.subject,
        date=message.date,
        text=text,
        html=None,
        in_reply_to="",
        references=[],
    )
    RemoteMessage.objects.filter(pk=message.pk).update(content=content, size=len(content))
    entry: InboxEntry = InboxEntryFactory(owner=owner, remote=message, state=EntryState.FETCHED, size=len(content))
    return entry


def test_once_downloaded_a_message_is_listed_with_the_exact_size_of_its_download(bob: User) -> None:
    entry = _fetched(bob, "Dear Bob,\nthe figures are in.\n" * 40)
    # Before any download the listing can only give the size the notification announced.
    (before,) = maildrop.list_maildrop(user_id=bob.pk)
    assert before.size == entry.size

    eml = maildrop.download(user_id=bob.pk, entry_id=entry.pk, listed_size=before.size)

    assert eml.endswith(b"\r\n") and b"\n" not in eml.replace(b"\r\n", b"")
    assert before.size != len(eml)  # the MIME rendering differs from the notified body...
    (after,) = maildrop.list_maildrop(user_id=bob.pk)
    assert after.size == len(eml)  # ...and the next listing says what the download sends
    assert maildrop.download(user_id=bob.pk, entry_id=entry.pk, listed_size=after.size) == eml


def test_a_download_has_crlf_line_ends_whatever_the_source_used() -> None:
    assert maildrop.on_the_wire(b"Subject: x\n\nline\r\n.dot") == b"Subject: x\r\n\r\nline\r\n.dot\r\n"


def test_top_0_headers_come_from_the_notification_alone(bob: User, queued: list[Queued]) -> None:
    entry = _entry(bob, subject="Quarterly figures", sender="carol@peer.test")

    head = maildrop.headers_only(user_id=bob.pk, entry_id=entry.pk)

    assert b"Subject: Quarterly figures\r\n" in head and b"From: carol@peer.test\r\n" in head
    assert head.endswith(b"\r\n\r\n")
    assert queued == []
    entry.refresh_from_db()
    assert (entry.state, entry.read) == (EntryState.NOTIFIED, False)


def test_a_download_the_sender_does_not_answer_asks_one_fetch_and_hands_out_no_body(
    bob: User, settings: Any, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    settings.PUSHMAIL_LEGACY_FETCH_WAIT = 0
    entry = _entry(bob)

    with django_capture_on_commit_callbacks(execute=True), pytest.raises(maildrop.BodyNotHereYet):
        maildrop.download(user_id=bob.pk, entry_id=entry.pk)

    assert [q.name for q in queued] == ["mailbox.fetch_body"]
    entry.refresh_from_db()
    assert entry.state == EntryState.FETCHING and entry.read


@pytest.mark.parametrize(
    ("state", "says"),
    [(FetchState.WITHDRAWN, b"withdrew this message"), (FetchState.EXPIRED, b"expired at the sender")],
)
def test_a_message_that_cannot_be_read_is_a_short_system_message(bob: User, state: str, says: bytes) -> None:
    entry = _entry(bob, state=state, subject="Lunch?")

    eml = maildrop.download(user_id=bob.pk, entry_id=entry.pk)

    assert b"Subject: [Not available] Lunch?" in eml and says in eml
    assert f"From: Pushmail <postmaster@{bob.domain.name}>".encode() in eml


def test_deleted_messages_move_to_trash_and_ones_moved_meanwhile_are_left_alone(bob: User) -> None:
    first, second, third = _entry(bob), _entry(bob), _entry(bob)
    InboxEntry.objects.filter(pk=second.pk).update(folder=Folder.ARCHIVE)  # moved in the webmail meanwhile

    assert maildrop.trash(user_id=bob.pk, entry_ids=[first.pk, second.pk]) == 1

    folders = dict(InboxEntry.objects.filter(owner=bob).values_list("pk", "folder"))
    assert folders == {first.pk: Folder.TRASH, second.pk: Folder.ARCHIVE, third.pk: Folder.INBOX}


def test_failed_pop3_sign_ins_count_against_submission_too(alice: User, settings: Any) -> None:
    settings.PUSHMAIL_SUBMISSION_AUTH_FAILURES_PER_ACCOUNT = 2
    token = issue_api_token(user=alice)
    for _ in range(2):
        assert check_mail_login(login=alice.email, password="wrong", client_ip="192.0.2.1").user is None

    user, reply = submission.check_login(login=alice.email, password=token, client_ip="192.0.2.7")
    assert user is None and reply.code == 454
    assert check_mail_login(login=alice.email, password=token, client_ip="192.0.2.7").throttled


def test_downloads_made_ahead_leave_bodies_at_the_sender_alone_and_mark_nothing_read(
    bob: User, queued: list[Queued]
) -> None:
    here, away = _fetched(bob, "Here already.\n"), _entry(bob)
    items = maildrop.list_maildrop(user_id=bob.pk)

    prepared = maildrop.prepare_downloads(user_id=bob.pk, items=items)

    assert set(prepared) == {here.pk}  # the other one takes the usual fetch, when it is asked for
    assert prepared[here.pk].unread and prepared[here.pk].eml.endswith(b"Here already.\r\n")
    assert queued == []
    assert not InboxEntry.objects.filter(owner=bob, read=True).exists()
    # The next listing gives the size of what was made.
    assert {i.entry_id: i.size for i in maildrop.list_maildrop(user_id=bob.pk)}[here.pk] == len(prepared[here.pk].eml)

    maildrop.mark_downloaded(user_id=bob.pk, entry_ids=[here.pk])

    assert set(InboxEntry.objects.filter(owner=bob, read=True).values_list("pk", flat=True)) == {here.pk}
    assert InboxEntry.objects.get(pk=away.pk).state == EntryState.NOTIFIED


def test_a_download_once_made_is_sent_again_without_rendering_until_its_message_changes(
    bob: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("downloads are kept on PostgreSQL only")
    entry = _fetched(bob, "The figures, once.\n")
    first = maildrop.prepare_downloads(user_id=bob.pk, items=maildrop.list_maildrop(user_id=bob.pk))
    maildrop.mark_downloaded(user_id=bob.pk, entry_ids=[entry.pk])
    rendered: list[int] = []
    render = maildrop._eml_of

    def counted(one: InboxEntry) -> bytes:
        rendered.append(one.pk)
        return render(one)

    monkeypatch.setattr(maildrop, "_eml_of", counted)

    again = maildrop.prepare_downloads(user_id=bob.pk, items=maildrop.list_maildrop(user_id=bob.pk))
    assert again[entry.pk].eml == first[entry.pk].eml == maildrop.download(user_id=bob.pk, entry_id=entry.pk)
    assert not again[entry.pk].unread
    assert rendered == [entry.pk]  # the single download above, never the batch

    # Withdrawn by its sender: the kept download no longer stands; the note that replaces it is made.
    RemoteMessage.objects.filter(pk=entry.remote_id).update(state=FetchState.WITHDRAWN)
    InboxEntry.objects.filter(pk=entry.pk).update(state=EntryState.WITHDRAWN)
    rendered.clear()
    withdrawn = maildrop.prepare_downloads(user_id=bob.pk, items=maildrop.list_maildrop(user_id=bob.pk))
    assert rendered == [entry.pk]
    assert withdrawn[entry.pk].eml == maildrop.on_the_wire(maildrop._eml_of(InboxEntry.objects.get(pk=entry.pk)))
    assert b"The figures, once." in withdrawn[entry.pk].eml  # opened before the withdrawal: still readable
    InboxEntry.objects.filter(pk=entry.pk).update(opened_at=None, read=False)
    unopened = maildrop.prepare_downloads(user_id=bob.pk, items=maildrop.list_maildrop(user_id=bob.pk))
    assert b"The sender withdrew this message" in unopened[entry.pk].eml
