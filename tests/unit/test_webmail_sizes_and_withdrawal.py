"""One size per message, written one way and the same for sender and recipient; a withdrawn
message is not unread."""

from __future__ import annotations

import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from accounts.models import User
from attachments.services import AttachmentInput, store_upload
from mailbox import selectors
from mailbox.models import EntryState, FetchState, Folder, InboxEntry
from mailbox.states import FETCH
from outbox.services import send_message, withdraw_message
from pushmail_site.sizes import human_size
from pushmail_site.states import transition
from tests.factories import InboxEntryFactory

pytestmark = pytest.mark.django_db


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def size_cells(html: str) -> list[str]:
    return re.findall(r'<td class="size">([^<]*)</td>', html)


@pytest.mark.parametrize(
    ("size", "shown"),
    [(1, "1 byte"), (820, "820 bytes"), (4096, "4.0 KiB"), (12 * 1024, "12 KiB"), (int(3.4 * 1024**2), "3.4 MiB")],
)
def test_sizes_are_binary_and_say_so(size: int, shown: str) -> None:
    assert human_size(size) == shown


def test_sent_and_the_recipient_show_one_and_the_same_size(alice: User, bob: User) -> None:
    blob = store_upload(file=SimpleUploadedFile("notes.txt", b"n" * 3000))
    message = send_message(
        sender=bob,
        to=[alice.email],
        subject="Notes",
        text="Attached.",
        attachments=[AttachmentInput(blob=blob, name="notes.txt", content_type="text/plain")],
    )

    sent = client_for(bob).get("/mail/sent/").content.decode()
    inbox = client_for(alice).get("/mail/inbox/").content.decode()

    expected = human_size(message.size + 3000).replace(" ", "\xa0")
    assert size_cells(sent) == [expected]
    assert [cell.replace(" ", "\xa0") for cell in size_cells(inbox)] == [expected]
    assert expected.endswith("KiB")


def test_an_unopened_message_withdrawn_by_a_sender_here_is_no_longer_unread(alice: User, bob: User) -> None:
    message = send_message(sender=bob, to=[alice.email], subject="Oops", text="Ignore me")
    assert selectors.unread_counts(user=alice)[Folder.INBOX] == 1

    withdraw_message(message=message)

    entry = InboxEntry.objects.get(owner=alice)
    assert (entry.state, entry.read) == (EntryState.WITHDRAWN, True)
    assert selectors.unread_counts(user=alice)[Folder.INBOX] == 0
    row = client_for(alice).get("/mail/inbox/").content.decode()
    assert 'class="message-row"' in row and "message-row unread" not in row


def test_an_unopened_message_withdrawn_by_another_instance_is_no_longer_unread(alice: User) -> None:
    entry = InboxEntryFactory(owner=alice)
    assert selectors.unread_counts(user=alice)[Folder.INBOX] == 1

    assert entry.remote is not None
    transition(entry.remote, FETCH, FetchState.WITHDRAWN)

    entry.refresh_from_db()
    assert (entry.state, entry.read) == (EntryState.WITHDRAWN, True)
    assert selectors.unread_counts(user=alice)[Folder.INBOX] == 0
