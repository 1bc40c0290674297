"""A mail program's listing, ``UID FETCH 1:* (FLAGS ENVELOPE)``, answered from the envelopes kept for it
(mailaccess.imapstore.envelopes, mailaccess.imap): the same bytes as rendering every header block again,
whatever the headers hold, and rendered again when the message changes."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.mail import imap4

from accounts.models import User
from attachments import services as attachment_services
from federation import payloads
from mailaccess import imapstore
from mailaccess.imap import IMAPFactory, PushmailIMAP, _Listed
from mailaccess.models import ImapEnvelope
from mailbox.models import EntryState, FetchState, Folder, InboxEntry, RemoteMessage
from tests.factories import InboxEntryFactory, RemoteMessageFactory

pytestmark = pytest.mark.django_db


def _entry(owner: User, *, sender_name: str = "", subject: str = "Hello", **body: Any) -> InboxEntry:
    """A received message; with ``body`` (to, cc, in_reply_to), its body fetched and stored here."""
    remote = RemoteMessageFactory(local_domain=owner.domain.name, subject=subject, sender_name=sender_name)
    entry: InboxEntry = InboxEntryFactory(owner=owner, remote=remote, subject=subject, sender_name=sender_name)
    if body:
        _fetch(entry, **body)
    return entry


def _fetch(entry: InboxEntry, *, to: list[str], cc: list[str], in_reply_to: str = "", raw: bytes | None = None) -> None:
    remote = entry.remote
    assert remote is not None
    content = payloads.canonical_body(
        global_id=remote.global_id,
        message_id=remote.message_id,
        sender=remote.sender,
        to=to,
        cc=cc,
        subject=remote.subject,
        date=remote.date,
        text="Dear reader,\nthe figures.\n",
        html=None,
        in_reply_to=in_reply_to,
        references=[],
    )
    blob = attachment_services.store_upload(file=io.BytesIO(raw)) if raw is not None else None
    RemoteMessage.objects.filter(pk=remote.pk).update(
        state=FetchState.FETCHED, content=content, fetched_at=timezone.now(), raw=blob
    )
    InboxEntry.objects.filter(pk=entry.pk).update(state=EntryState.FETCHED)


class _Session:
    """An IMAP session on a test transport, its database work done at once in this thread."""

    def __init__(self, user: User, monkeypatch: pytest.MonkeyPatch) -> None:
        def now(self: PushmailIMAP, func: Callable[..., Any], /, **kwargs: Any) -> defer.Deferred[Any]:
            return defer.succeed(func(**kwargs))

        monkeypatch.setattr(PushmailIMAP, "_in_thread", now)
        self.clock = Clock()
        self.server = PushmailIMAP(IMAPFactory(tls=None, clock=self.clock))
        self.server.callLater = self.clock.callLater  # type: ignore[method-assign]
        self.transport = StringTransport()
        self.server.makeConnection(self.transport)
        self.server.user_id, self.server.account, self.server.state = user.pk, True, "auth"
        self.user = user
        self.say(b"s SELECT INBOX")

    def say(self, line: bytes) -> bytes:
        self.transport.clear()
        self.server.dataReceived(line + b"\r\n")
        return bytes(self.transport.value())

    def rendered(self) -> bytes:
        """The listing as the server wrote it before envelopes were kept: each header block rendered and
        its envelope written by Twisted's FETCH items (mailaccess.imap._listing)."""
        selected = self.server.selected
        assert selected is not None
        parser = imap4._FetchParser()
        parser.parseString(b"(FLAGS ENVELOPE UID)")
        refs = [row.ref for row in selected.rows]
        loaded = imapstore.headers(user_id=self.user.pk, box=selected.box, refs=refs)
        return b"".join(
            self.server._listing(number, _Listed(row, loaded[row.ref], False), parser.result)
            for number, row in enumerate(selected.rows, start=1)
        )


_TRICKY_SMTP = (
    b'From: "O\'Neil, \\"Pat\\"" <pat@peer.test>\r\n'
    b"To: undisclosed-recipients:;\r\n"
    b'Cc: Team: a@x.test, "B \\\\ C" <b@y.test>;, d@z.test\r\n'
    b'Subject: Caf\xc3\xa9 "au lait" \\ 100%\r\n'
    b"Reply-To: <replies@peer.test>\r\n"
    b"Message-ID: <smtp-1@peer.test>\r\n"
    b"\r\n"
    b"Hello\r\n"
)


def test_the_listing_gives_the_bytes_of_rendering_every_header_block_first_and_from_the_kept_envelopes(
    bob: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    _entry(bob)  # still at the sender's: the notification's headers
    _entry(bob, subject='Quotes "here" and a back\\slash', sender_name='Carol "CJ" Peer', to=[bob.email], cc=[])
    _entry(bob, subject="Ünïcödé ✓ — and a very long subject " * 4, sender_name="Zoë, Ltd.", to=[bob.email], cc=[])
    _entry(bob, subject="", to=["a@x.test", "b@y.test"], cc=["c@z.test"], in_reply_to="<parent@peer.test>")
    _entry(bob, subject="By SMTP", to=[bob.email], cc=[], raw=_TRICKY_SMTP)
    session = _Session(bob, monkeypatch)
    expected = session.rendered() + b"a OK FETCH completed\r\n"

    first = session.say(b"a UID FETCH 1:* (FLAGS ENVELOPE)")
    # Kept on PostgreSQL; the SQLite demo renders them on each listing, the same bytes.
    assert ImapEnvelope.objects.filter(entry__owner=bob).count() == (5 if connection.vendor == "postgresql" else 0)
    again = session.say(b"a UID FETCH 1:* (FLAGS ENVELOPE)")

    assert first == expected
    assert again == expected
    assert b'"Carol \\"CJ\\" Peer"' in first and b"back\\\\slash" in first
    # 8-bit header bytes of a message received by SMTP: replaced, as Twisted's path always wrote them.
    assert b'"Caf?? \\"au lait\\" \\\\ 100%"' in first and b'("B \\\\ C" NIL "b" "y.test")' in first
    # Another order of items, a sequence range and the flags: as Twisted's FETCH writes them.
    session.say(b"s STORE 2 +FLAGS.SILENT (\\Flagged \\Deleted)")
    lines = session.say(b"b FETCH 2:3 (ENVELOPE UID FLAGS)").split(b"\r\n")
    assert lines[0].startswith(b"* 2 FETCH (ENVELOPE (") and lines[0].endswith(b" UID 2 FLAGS (\\Flagged \\Deleted))")
    assert lines[1].startswith(b"* 3 FETCH (ENVELOPE (") and lines[1].endswith(b" UID 3 FLAGS ())")


def test_an_envelope_is_rendered_again_when_the_body_comes_and_a_copy_a_verdict_may_hide_is_never_kept(
    bob: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("envelopes are kept on PostgreSQL only")
    entry = _entry(bob)
    session = _Session(bob, monkeypatch)
    before = session.say(b"a UID FETCH 1:* (FLAGS ENVELOPE)")
    assert b'((NIL NIL "bob" "alpha.test"))' in before and b"carla" not in before

    _fetch(entry, to=["carla@x.test"], cc=["dan@y.test"])
    after = session.say(b"a UID FETCH 1:* (FLAGS ENVELOPE)")

    assert after == session.rendered() + b"a OK FETCH completed\r\n"
    assert b'((NIL NIL "carla" "x.test")) ((NIL NIL "dan" "y.test"))' in after

    kept = ImapEnvelope.objects.get(entry=entry).key
    InboxEntry.objects.filter(pk=entry.pk).update(folder=Folder.SPAM)
    RemoteMessage.objects.filter(pk=entry.remote_id).update(spam_verdict="Reported by many readers")
    session.say(b"s SELECT Spam")
    listed = session.say(b"a UID FETCH 1:* (FLAGS ENVELOPE)")

    # Hidden from bob by the verdict (he never wrote to carol): the note standing in for it, not kept.
    assert listed == session.rendered() + b"a OK FETCH completed\r\n"
    assert b'"[Not available] Hello"' in listed
    assert ImapEnvelope.objects.get(entry=entry).key == kept
