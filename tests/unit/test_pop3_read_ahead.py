"""A mail program downloading the maildrop in order finds its next messages made already: half-way through
a batch the POP3 server makes the next one (mailaccess.pop3), and every download is still exactly the
message's bytes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from accounts.models import User
from federation import payloads
from mailaccess import maildrop, pop3
from mailaccess.pop3 import POP3Factory, PushmailPOP3
from mailbox.models import EntryState, FetchState, InboxEntry, RemoteMessage
from tests.factories import InboxEntryFactory, RemoteMessageFactory

pytestmark = pytest.mark.django_db


def _fetched(owner: User, n: int) -> InboxEntry:
    remote = RemoteMessageFactory(local_domain=owner.domain.name, state=FetchState.FETCHED)
    content = payloads.canonical_body(
        global_id=remote.global_id,
        message_id=remote.message_id,
        sender=remote.sender,
        to=[owner.email],
        cc=[],
        subject=remote.subject,
        date=remote.date,
        text=f"Message {n}\n.\n..a dot-stuffed line\n",
        html=None,
        in_reply_to="",
        references=[],
    )
    RemoteMessage.objects.filter(pk=remote.pk).update(content=content)
    entry: InboxEntry = InboxEntryFactory(owner=owner, remote=remote, state=EntryState.FETCHED)
    return entry


def test_the_next_batch_is_made_half_way_through_this_one_and_every_download_is_the_message(
    bob: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pop3, "_PREPARE_MESSAGES", 4)
    entries = [_fetched(bob, n) for n in range(10)]
    made: list[tuple[int, list[int]]] = []  # (the RETR being answered, the entries made together)
    asked = [0]

    def now(self: PushmailPOP3, func: Callable[..., Any], /, **kwargs: Any) -> defer.Deferred[Any]:
        if func is maildrop.prepare_downloads:
            made.append((asked[0], [item.entry_id for item in kwargs["items"]]))
        return defer.succeed(func(**kwargs))

    monkeypatch.setattr(PushmailPOP3, "_in_thread", now)
    clock = Clock()
    server = PushmailPOP3()
    server.factory = POP3Factory(tls=None, clock=clock)
    server.callLater = clock.callLater  # type: ignore[method-assign]
    transport = StringTransport()
    server.makeConnection(transport)
    server.session = pop3._Session(bob.pk, maildrop.list_maildrop(user_id=bob.pk))
    server.mbox = True
    expected = [
        maildrop.on_the_wire(maildrop.readable_eml(user_id=bob.pk, entry_id=e.pk, mark_read=False)) for e in entries
    ]

    for number in range(1, 11):
        asked[0] = number
        transport.clear()
        server.dataReceived(b"RETR %d\r\n" % number)
        eml = expected[number - 1]
        stuffed = (b"\r\n" + eml).replace(b"\r\n.", b"\r\n..")[2:]
        assert transport.value() == b"+OK %d octets\r\n" % len(eml) + stuffed + b".\r\n"

    ids = [e.pk for e in entries]
    # Batches of 4: the second is made while the third message of the first is answered, and so on.
    assert made == [(1, ids[0:4]), (3, ids[4:8]), (7, ids[8:10])]
    server._write_read_marks()
    assert InboxEntry.objects.filter(pk__in=ids, read=True).count() == 10
