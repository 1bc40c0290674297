"""Undo notices: after Send the person is back where they were, and archive, delete, move,
spam and label changes can be taken back while the notice lasts."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import User
from mailbox import folders
from mailbox.models import Folder, InboxEntry
from outbox import services as drafts
from outbox.models import Draft, DraftState
from reputation.models import SpamReport
from tests.factories import InboxEntryFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def web(alice: User) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def notice(response: Any) -> dict[str, str] | None:
    """The Undo notice a page shows: its test id, text and token; None when it shows none."""
    html = response.content.decode()
    found = re.search(r'<div class="undo-notice"[^>]*data-testid="([\w-]+)".*?</div>', html, re.S)
    if found is None:
        return None
    block = found.group(0)
    token = re.search(r'name="token" value="([^"]+)"', block)
    text = re.sub(r"<[^>]+>", " ", block.split("<form")[0])
    return {"kind": found.group(1), "text": " ".join(text.split()), "token": token.group(1) if token else ""}


def bulk(web: Client, ids: list[int], action: str, **extra: str) -> Any:
    fields = {"ids": ids, "action": action, "next": "/mail/inbox/", **extra}
    return web.post(reverse("webmail:bulk-action"), fields, follow=True)


def undo(web: Client, token: str, next_url: str = "/mail/inbox/") -> Any:
    return web.post(reverse("webmail:undo"), {"token": token, "next": next_url}, follow=True)


def folder_of(entry: InboxEntry) -> str:
    entry.refresh_from_db()
    return str(entry.folder)


def test_archive_says_so_with_undo_and_undo_puts_the_messages_back(web: Client, alice: User) -> None:
    a, b = InboxEntryFactory(owner=alice), InboxEntryFactory(owner=alice)

    shown = notice(bulk(web, [a.pk, b.pk], "archive"))

    assert shown is not None and shown["kind"] == "undo-notice"
    assert "2 messages archived." in shown["text"]
    assert folder_of(a) == folder_of(b) == Folder.ARCHIVE
    back = undo(web, shown["token"])
    assert folder_of(a) == folder_of(b) == Folder.INBOX
    assert "Undone." in back.content.decode()
    assert notice(back) is None  # used up


def test_undo_of_delete_takes_messages_out_of_trash_to_where_each_was(web: Client, alice: User) -> None:
    inbox, archived = InboxEntryFactory(owner=alice), InboxEntryFactory(owner=alice, folder=Folder.ARCHIVE)

    shown = notice(bulk(web, [inbox.pk, archived.pk], "delete"))
    assert shown is not None and "moved to Trash" in shown["text"]
    undo(web, shown["token"])

    assert (folder_of(inbox), folder_of(archived)) == (Folder.INBOX, Folder.ARCHIVE)
    assert inbox.trashed_at is None and archived.trashed_at is None


def test_delete_forever_from_trash_offers_no_undo(web: Client, alice: User) -> None:
    trashed = InboxEntryFactory(owner=alice)
    folders.move_entries(user=alice, entry_ids=[trashed.pk], folder=Folder.TRASH)

    response = bulk(web, [trashed.pk], "delete", next="/mail/trash/")

    assert notice(response) is None
    assert "1 message deleted forever." in response.content.decode()


def test_undo_of_move_and_of_report_spam(web: Client, alice: User) -> None:
    moved = InboxEntryFactory(owner=alice, folder=Folder.ARCHIVE)
    shown = notice(bulk(web, [moved.pk], "move", folder=Folder.INBOX))
    assert shown is not None and "moved to the Inbox" in shown["text"]
    undo(web, shown["token"])
    assert folder_of(moved) == Folder.ARCHIVE

    shown = notice(bulk(web, [moved.pk], "report_spam"))
    assert shown is not None and folder_of(moved) == Folder.SPAM
    undo(web, shown["token"])
    assert folder_of(moved) == Folder.ARCHIVE
    # The report is taken back: this reader now says it is not spam.
    assert list(SpamReport.objects.filter(reporter=alice).values_list("spam", flat=True)) == [False]


def test_undo_of_a_label_removes_it_only_where_it_was_added(web: Client, alice: User) -> None:
    work = folders.create_label(user=alice, name="Work")
    had, new = InboxEntryFactory(owner=alice), InboxEntryFactory(owner=alice)
    folders.apply_label(user=alice, entry_ids=[had.pk], label_id=work.pk)

    shown = notice(bulk(web, [had.pk, new.pk], "label", label=str(work.pk)))
    assert shown is not None and "Label added to 2 messages." in shown["text"]
    undo(web, shown["token"])

    assert list(had.labels.all()) == [work]
    assert list(new.labels.all()) == []


def test_an_old_or_foreign_token_undoes_nothing(web: Client, alice: User) -> None:
    entry = InboxEntryFactory(owner=alice)
    first = notice(bulk(web, [entry.pk], "archive"))
    second = notice(bulk(web, [entry.pk], "inbox"))
    assert first is not None and second is not None

    response = undo(web, first["token"])

    assert "Too late to undo" in response.content.decode()
    assert folder_of(entry) == Folder.INBOX  # the later move stands


def test_the_notice_ends_with_its_window(web: Client, alice: User, settings: Any) -> None:
    settings.PUSHMAIL_UNDO_SECONDS = 0
    entry = InboxEntryFactory(owner=alice)

    response = bulk(web, [entry.pk], "archive")

    assert notice(response) is None
    assert notice(web.get("/mail/inbox/")) is None


def test_send_goes_back_where_compose_was_opened_with_an_undo_that_reopens_the_draft(
    web: Client, alice: User, bob: User
) -> None:
    entry = InboxEntryFactory(owner=alice, folder=Folder.ARCHIVE)
    origin = f"/mail/entry/{entry.pk}/"
    page = web.get(reverse("webmail:compose") + f"?to={bob.email}", HTTP_REFERER=f"http://testserver{origin}")
    assert f'name="next" value="{origin}"' in page.content.decode()
    send_url = re.search(r'action="(/compose/new/[^"]+/send/)"', page.content.decode())
    assert send_url is not None

    sent = web.post(send_url.group(1), {"to": bob.email, "subject": "Hi", "text": "Hello", "next": origin})

    assert sent.status_code == 302 and sent["Location"] == origin
    draft = Draft.objects.get(owner=alice)
    assert draft.state == DraftState.SCHEDULED
    shown = notice(web.get(origin))
    assert shown is not None and shown["kind"] == "undo-send" and "Sending in" in shown["text"]

    reopened = web.post(reverse("webmail:undo"), {"token": shown["token"], "next": origin})

    draft.refresh_from_db()
    assert draft.state == DraftState.DRAFT and draft.send_at is None
    assert reopened["Location"].startswith(f"/compose/{draft.pk}/?next=")
    page = web.get(reopened["Location"]).content.decode()
    assert "Sending cancelled" in page and f'name="next" value="{origin}"' in page


def test_undo_after_the_send_went_out_says_so(web: Client, alice: User, bob: User) -> None:
    draft = drafts.create_draft(owner=alice, signature=False, to=bob.email, subject="Gone", text="x")
    web.post(reverse("webmail:draft-send", args=[draft.pk]), {"to": bob.email, "subject": "Gone", "text": "x"})
    shown = notice(web.get("/mail/inbox/"))
    assert shown is not None
    Draft.objects.filter(pk=draft.pk).update(state=DraftState.SENT)

    response = undo(web, shown["token"])

    assert "Too late to undo: the message has already been sent." in response.content.decode()
