"""Webmail folders, labels and actions, as a signed-in user sees them."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from mailbox import folders, selectors
from mailbox.models import EntryState, Folder, InboxEntry, Label
from mailbox.tasks import empty_trash as empty_trash_task
from outbox.models import Delivery, DeliveryState, Message, SenderFolder
from tests.factories import InboxEntryFactory, MailboxFactory, SentMessageFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def web(alice: User) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def entry(owner: User, **kwargs: object) -> InboxEntry:
    return InboxEntryFactory(owner=owner, **kwargs)


def row_ids(response) -> list[int]:  # type: ignore[no-untyped-def]
    html = response.content.decode()
    return [int(x) for x in re.findall(r'data-testid="message-row" data-entry-id="(\d+)"', html)]


def flash(response) -> list[str]:  # type: ignore[no-untyped-def]
    """What the page says happened: its messages, and the text of its Undo notice."""
    if not response.context:
        return []
    notice = response.context.get("undo_notice")
    return [str(m) for m in response.context["messages"]] + ([notice.text] if notice else [])


def page_title(response) -> str:  # type: ignore[no-untyped-def]
    match = re.search(r"<title>(.*?)</title>", response.content.decode(), re.S)
    assert match
    return match.group(1).strip()


# --- "/" and the shell -----------------------------------------------------------------


def test_root_sends_signed_in_users_to_the_inbox_and_others_to_login(web: Client) -> None:
    assert web.get("/").url == "/mail/inbox/"
    anonymous = Client().get("/")
    assert anonymous.status_code == 302
    assert anonymous.url == reverse("account_login")


def test_folder_pages_need_a_login() -> None:
    response = Client().get("/mail/inbox/")
    assert response.status_code == 302
    assert reverse("account_login") in response.url


def test_inbox_lists_the_users_own_entries_newest_first(web: Client, alice: User, bob: User) -> None:
    old = entry(alice)
    InboxEntry.objects.filter(pk=old.pk).update(received_at=timezone.now() - timedelta(days=1))
    new = entry(alice)
    entry(bob)  # not alice's
    archived = entry(alice, folder=Folder.ARCHIVE)
    response = web.get("/mail/inbox/")
    assert response.status_code == 200
    assert row_ids(response) == [new.pk, old.pk]
    assert row_ids(web.get("/mail/archive/")) == [archived.pk]


def test_shell_has_sidebar_compose_search_and_unread_counts(web: Client, alice: User) -> None:
    entry(alice)
    entry(alice)
    entry(alice, read=True)
    entry(alice, folder=Folder.SPAM)
    entry(alice, starred=True, folder=Folder.ARCHIVE)
    html = web.get("/mail/inbox/").content.decode()
    for name in ("Inbox", "Newsletters", "Starred", "Drafts", "Sent", "Archive", "Spam", "Trash"):
        assert f'<span class="name">{name}</span>' in html
    assert 'href="/compose/"' in html and ">Compose</a>" in html
    assert 'href="/drafts/"' in html
    assert re.search(r'<label for="search-q"[^>]*>Search mail</label>', html)
    assert 'name="q"' in html and 'action="/search/"' in html
    counts = selectors.unread_counts(user=alice)
    assert counts == {"inbox": 2, "news": 0, "archive": 1, "spam": 1, "trash": 0}
    assert 'data-unread-count="inbox"' in html
    # No inline scripts, styles or handlers (strict CSP).
    assert "<script>" not in html and ' style="' not in html and " onclick=" not in html


def test_title_carries_the_inbox_unread_count(web: Client, alice: User) -> None:
    assert page_title(web.get("/mail/inbox/")) == "Inbox — Pushmail"
    entry(alice)
    entry(alice)
    entry(alice, read=True)
    assert page_title(web.get("/mail/inbox/")) == "(2) Inbox — Pushmail"


def test_row_shows_sender_name_subject_size_at_senders_withdrawn_and_paperclip(
    web: Client, alice: User, bob: User
) -> None:
    bob.display_name = "Bob Builder"
    bob.save(update_fields=["display_name"])
    # 12 KiB of body and 2 MiB of attachments: the row says what opening everything would pull.
    unfetched = entry(alice, size=12 * 1024, has_attachments=True, attachments_size=2 * 1024**2, subject="Plans")
    fetched = entry(alice, state=EntryState.FETCHED, sender=bob.email, subject="Lunch", read=True)
    withdrawn = entry(alice, state=EntryState.WITHDRAWN, subject="Oops")
    html = web.get("/mail/inbox/").content.decode()
    row_re = r'<tr data-testid="message-row" data-entry-id="(\d+)".*?</tr>'
    rows = {int(m.group(1)): m.group(0) for m in re.finditer(row_re, html, re.S)}
    assert 'data-state="notified"' in rows[unfetched.pk]
    assert "at sender's" in rows[unfetched.pk]
    # One size per row, in binary units: body and attachments together.
    assert rows[unfetched.pk].count("MiB") == 1 and '<td class="size">2.0 MiB</td>' in rows[unfetched.pk]
    assert "Has attachments" in rows[unfetched.pk]
    assert "unread" in rows[unfetched.pk].split(">")[0]
    assert "Bob Builder" in rows[fetched.pk] and "at sender's" not in rows[fetched.pk]
    assert "unread" not in rows[fetched.pk].split(">")[0]
    assert "Withdrawn" in rows[withdrawn.pk]
    assert f'href="/mail/entry/{fetched.pk}/"' in rows[fetched.pk]


def test_unknown_folder_is_404(web: Client) -> None:
    assert web.get("/mail/nowhere/").status_code == 404


# --- keyset pagination ------------------------------------------------------------------


def _many(owner: User, n: int, folder: str = Folder.INBOX) -> list[InboxEntry]:
    now = timezone.now()
    made = InboxEntry.objects.bulk_create(
        [
            InboxEntry(owner=owner, sender="carol@peer.test", subject=f"m{i}", size=10, state="fetched", folder=folder)
            for i in range(n)
        ]
    )
    # Several entries share a timestamp: the id breaks ties.
    for i, e in enumerate(made):
        e.received_at = now - timedelta(minutes=i // 3)
    InboxEntry.objects.bulk_update(made, ["received_at"])
    return sorted(made, key=lambda e: (e.received_at, e.pk), reverse=True)


def test_keyset_pagination_walks_older_and_newer_without_gaps_or_repeats(web: Client, alice: User) -> None:
    expected = [e.pk for e in _many(alice, 120)]
    seen: list[int] = []
    response = web.get("/mail/inbox/")
    pages = 0
    while True:
        ids = row_ids(response)
        assert len(ids) <= 50
        seen += ids
        pages += 1
        older = response.context["page"].older
        if not older:
            break
        assert "Older" in response.content.decode()
        response = web.get("/mail/inbox/", {"before": older})
    assert seen == expected
    assert pages == 3
    # From the last page, "Newer" goes back one page.
    newer = response.context["page"].newer
    assert newer and "Newer" in response.content.decode()
    back = web.get("/mail/inbox/", {"after": newer})
    assert row_ids(back) == expected[50:100]
    assert row_ids(web.get("/mail/inbox/", {"after": back.context["page"].newer})) == expected[:50]
    assert web.get("/mail/inbox/", {"after": back.context["page"].newer}).context["page"].newer is None


def test_malformed_cursor_shows_the_first_page(web: Client, alice: User) -> None:
    expected = [e.pk for e in _many(alice, 3)]
    for junk in ("x", "1~x", "~", "99999999999999999999~1", "-5~2"):
        assert row_ids(web.get("/mail/inbox/", {"before": junk})) == expected


# --- single-entry actions ----------------------------------------------------------------


def act(web: Client, entry_id: int, action: str, **extra: str):  # type: ignore[no-untyped-def]
    return web.post(reverse("webmail:entry-action", args=[entry_id]), {"action": action, **extra}, follow=True)


def test_entry_actions_archive_spam_inbox_read_unread_star(web: Client, alice: User) -> None:
    e = entry(alice)
    response = act(web, e.pk, "archive")
    assert "1 message archived." in flash(response)
    e.refresh_from_db()
    assert e.folder == Folder.ARCHIVE
    assert row_ids(web.get("/mail/inbox/")) == []
    act(web, e.pk, "spam")
    e.refresh_from_db()
    assert e.folder == Folder.SPAM
    act(web, e.pk, "inbox")
    act(web, e.pk, "read")
    act(web, e.pk, "star")
    e.refresh_from_db()
    assert (e.folder, e.read, e.starred) == (Folder.INBOX, True, True)
    assert row_ids(web.get("/mail/starred/")) == [e.pk]
    act(web, e.pk, "unstar")  # back on the message: opening it marks it read
    act(web, e.pk, "unread")  # back to the list
    e.refresh_from_db()
    assert (e.read, e.starred) == (False, False)


def test_entry_action_redirects_to_next_only_when_it_is_local(web: Client, alice: User) -> None:
    e = entry(alice)
    url = reverse("webmail:entry-action", args=[e.pk])
    assert web.post(url, {"action": "read", "next": "/mail/archive/"}).url == "/mail/archive/"
    assert web.post(url, {"action": "read", "next": "https://evil.example/"}).url != "https://evil.example/"
    assert web.post(url, {"action": "read", "next": "//evil.example/"}).url != "//evil.example/"


def test_delete_moves_to_trash_then_deletes_forever(web: Client, alice: User) -> None:
    e = entry(alice)
    assert "1 message moved to Trash." in flash(act(web, e.pk, "delete"))
    e.refresh_from_db()
    assert e.folder == Folder.TRASH and e.trashed_at is not None
    assert row_ids(web.get("/mail/trash/")) == [e.pk]
    assert "1 message deleted forever." in flash(act(web, e.pk, "delete"))
    assert not InboxEntry.objects.filter(pk=e.pk).exists()


def test_unknown_action_changes_nothing_and_says_so(web: Client, alice: User) -> None:
    e = entry(alice)
    response = act(web, e.pk, "explode")
    assert "That action is not available. Nothing was changed." in flash(response)
    e.refresh_from_db()
    assert e.folder == Folder.INBOX and not e.read


def test_another_users_entry_is_404_for_actions(web: Client, bob: User) -> None:
    theirs = entry(bob)
    assert web.post(reverse("webmail:entry-action", args=[theirs.pk]), {"action": "archive"}).status_code == 404
    theirs.refresh_from_db()
    assert theirs.folder == Folder.INBOX


def test_actions_need_post(web: Client, alice: User) -> None:
    e = entry(alice)
    assert web.get(reverse("webmail:entry-action", args=[e.pk]), {"action": "archive"}).status_code == 405


# --- bulk -------------------------------------------------------------------------------


def bulk(web: Client, ids: list[object], action: str, **extra: str):  # type: ignore[no-untyped-def]
    return web.post(reverse("webmail:bulk-action"), {"ids": ids, "action": action, **extra}, follow=True)


def test_bulk_archive_read_and_move(web: Client, alice: User) -> None:
    a, b, c = entry(alice), entry(alice), entry(alice)
    response = bulk(web, [a.pk, b.pk], "archive", next="/mail/inbox/")
    assert "2 messages archived." in flash(response)
    assert row_ids(response) == [c.pk]
    bulk(web, [a.pk, b.pk, c.pk], "read")
    assert InboxEntry.objects.filter(owner=alice, read=True).count() == 3
    bulk(web, [c.pk], "move", folder="spam")
    c.refresh_from_db()
    assert c.folder == Folder.SPAM


def test_bulk_with_a_foreign_id_changes_nothing(web: Client, alice: User, bob: User) -> None:
    mine, theirs = entry(alice), entry(bob)
    response = bulk(web, [mine.pk, theirs.pk], "archive")
    assert any("not found" in m and "Nothing was changed" in m for m in flash(response))
    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert mine.folder == Folder.INBOX and theirs.folder == Folder.INBOX


def test_bulk_empty_selection_and_junk_ids(web: Client, alice: User) -> None:
    e = entry(alice)
    assert any("Select at least one message" in m for m in flash(bulk(web, [], "archive")))
    assert any("not found" in m for m in flash(bulk(web, ["abc", e.pk], "archive")))
    assert any("not available" in m for m in flash(bulk(web, [e.pk], "move", folder="nowhere")))
    e.refresh_from_db()
    assert e.folder == Folder.INBOX


# --- labels -------------------------------------------------------------------------------


def test_labels_create_apply_list_rename_remove_delete(web: Client, alice: User) -> None:
    response = web.post(reverse("webmail:labels"), {"name": "  Work   stuff "}, follow=True)
    assert "Label “Work stuff” created." in flash(response)
    label = Label.objects.get(owner=alice)
    assert label.name == "Work stuff"
    again = web.post(reverse("webmail:labels"), {"name": "Work stuff"}, follow=True)
    assert "You already have a label called “Work stuff”." in flash(again)
    assert "A label needs a name." in flash(web.post(reverse("webmail:labels"), {"name": "  "}, follow=True))
    a, b, other = entry(alice), entry(alice), entry(alice)
    bulk(web, [a.pk, b.pk], "label", label=str(label.pk))
    listed = web.get(reverse("webmail:label", args=[label.pk]))
    assert sorted(row_ids(listed)) == sorted([a.pk, b.pk])
    assert "Work stuff" in listed.content.decode()
    assert [lab.unread for lab in selectors.labels_with_unread(user=alice)] == [2]
    act(web, a.pk, f"unlabel:{label.pk}")
    assert row_ids(web.get(reverse("webmail:label", args=[label.pk]))) == [b.pk]
    act(web, other.pk, f"label:{label.pk}")
    web.post(reverse("webmail:label-rename", args=[label.pk]), {"name": "Projects"})
    label.refresh_from_db()
    assert label.name == "Projects"
    web.post(reverse("webmail:label-delete", args=[label.pk]))
    assert not Label.objects.filter(pk=label.pk).exists()
    assert InboxEntry.objects.filter(pk__in=[a.pk, b.pk, other.pk]).count() == 3


def test_another_users_label_is_404_and_cannot_be_applied(web: Client, alice: User, bob: User) -> None:
    theirs = Label.objects.create(owner=bob, name="Bob's")
    assert web.get(reverse("webmail:label", args=[theirs.pk])).status_code == 404
    assert web.post(reverse("webmail:label-rename", args=[theirs.pk]), {"name": "x"}).status_code == 404
    assert web.post(reverse("webmail:label-delete", args=[theirs.pk])).status_code == 404
    mine = entry(alice)
    response = act(web, mine.pk, f"label:{theirs.pk}")
    assert any("label was not found" in m for m in flash(response))
    assert not mine.labels.exists()


# --- Sent ------------------------------------------------------------------------------------


def test_sent_lists_recipients_and_delivery_summary_then_trash_hides_it(web: Client, alice: User) -> None:
    message = SentMessageFactory(sender=alice, to=["carol@peer.test", "dave@other.test"], subject="Quarterly figures")
    Delivery.objects.filter(message=message, domain="peer.test").update(state=DeliveryState.NOTIFIED)
    Delivery.objects.filter(message=message, domain="other.test").update(state=DeliveryState.FAILED)
    html = web.get(reverse("webmail:sent")).content.decode()
    assert "Quarterly figures" in html and "carol@peer.test, dave@other.test" in html
    assert "1 notified, 1 failed" in html
    response = web.post(reverse("webmail:sent-action", args=[message.pk]), {"action": "trash"}, follow=True)
    assert "1 message moved to Trash." in flash(response)
    assert "Quarterly figures" not in web.get(reverse("webmail:sent")).content.decode()
    assert "Quarterly figures" in web.get(reverse("webmail:sent"), {"in": "trash"}).content.decode()
    web.post(reverse("webmail:sent-action", args=[message.pk]), {"action": "star"})
    message.refresh_from_db()
    assert message.sender_starred and message.sender_folder == SenderFolder.TRASH


def test_another_users_sent_message_is_404(web: Client, bob: User) -> None:
    theirs = SentMessageFactory(sender=bob)
    assert web.post(reverse("webmail:sent-action", args=[theirs.pk]), {"action": "trash"}).status_code == 404
    theirs.refresh_from_db()
    assert theirs.sender_folder == SenderFolder.SENT


# --- Trash expiry --------------------------------------------------------------------------------


def test_trash_is_emptied_after_the_trash_period(alice: User, settings) -> None:  # type: ignore[no-untyped-def]
    settings.PUSHMAIL_TRASH_DAYS = 30
    old = entry(alice, folder=Folder.TRASH, trashed_at=timezone.now() - timedelta(days=31))
    recent = entry(alice, folder=Folder.TRASH, trashed_at=timezone.now() - timedelta(days=29))
    inbox = entry(alice)
    result = empty_trash_task()
    assert result["entries"] == 1
    assert not InboxEntry.objects.filter(pk=old.pk).exists()
    assert InboxEntry.objects.filter(pk__in=[recent.pk, inbox.pk]).count() == 2


def test_sender_copies_in_trash_are_deleted_only_when_nobody_needs_them(alice: User, bob: User) -> None:
    long_ago = timezone.now() - timedelta(days=31)
    # Body gone (withdrawn), deliveries done, no local recipient: deleted.
    done = SentMessageFactory(sender=alice, to=["carol@peer.test"])
    Delivery.objects.filter(message=done).update(state=DeliveryState.NOTIFIED)
    # Delivery still pending: hidden, kept.
    pending = SentMessageFactory(sender=alice, to=["carol@peer.test"])
    # A local recipient still has it: hidden, kept (deleting would take bob's copy).
    local = SentMessageFactory(sender=alice, to=[bob.email])
    Message.objects.filter(pk__in=[done.pk, pending.pk, local.pk]).update(
        sender_folder=SenderFolder.TRASH, sender_trashed_at=long_ago, withdrawn_at=long_ago
    )
    Delivery.objects.filter(message=pending).update(state=DeliveryState.PENDING)
    result = folders.empty_trash()
    assert result == {"entries": 0, "sent_deleted": 1, "sent_hidden": 2}
    assert not Message.objects.filter(pk=done.pk).exists()
    assert InboxEntry.objects.filter(owner=bob, local=local).exists()
    for kept in (pending, local):
        kept.refresh_from_db()
        assert kept.sender_folder == SenderFolder.TRASH and kept.sender_trashed_at is None
    client = Client()
    client.force_login(alice)
    trash_html = client.get(reverse("webmail:sent"), {"in": "trash"}).content.decode()
    assert pending.subject not in trash_html and local.subject not in trash_html
    # Once the delivery is done, a later sweep deletes the hidden copy.
    Delivery.objects.filter(message=pending).update(state=DeliveryState.NOTIFIED)
    assert folders.empty_trash()["sent_deleted"] == 1
    assert not Message.objects.filter(pk=pending.pk).exists()


def test_empty_trash_now_button(web: Client, alice: User, bob: User) -> None:
    mine = entry(alice, folder=Folder.TRASH, trashed_at=timezone.now())
    theirs = entry(bob, folder=Folder.TRASH, trashed_at=timezone.now() - timedelta(days=100))
    response = web.post(reverse("webmail:empty-trash"), follow=True)
    assert "Trash emptied: 1 message deleted forever." in flash(response)
    assert not InboxEntry.objects.filter(pk=mine.pk).exists()
    assert InboxEntry.objects.filter(pk=theirs.pk).exists()


def test_beat_schedule_empties_trash() -> None:
    from django.conf import settings

    assert any(job["task"] == "mailbox.empty_trash" for job in settings.CELERY_BEAT_SCHEDULE.values())


# --- live new mail ----------------------------------------------------------------------------


def test_inbox_polls_for_rows_newer_than_its_newest(web: Client, alice: User) -> None:
    first = entry(alice)
    response = web.get("/mail/inbox/")
    html = response.content.decode()
    poll_url = re.search(r'data-poll-url="([^"]+)"', html).group(1)  # type: ignore[union-attr]
    after = re.search(r'data-poll-after="([^"]+)"', html).group(1)  # type: ignore[union-attr]
    quiet = web.get(poll_url, {"after": after})
    assert quiet.status_code == 200 and row_ids(quiet) == []
    assert quiet["X-Unread-Count"] == "1"
    new = entry(alice)
    InboxEntry.objects.filter(pk=new.pk).update(received_at=first.received_at + timedelta(seconds=1))
    update = web.get(poll_url, {"after": after})
    assert row_ids(update) == [new.pk]
    assert update["X-Unread-Count"] == "2"
    # Older pages do not poll (new rows would not belong there).
    _many(alice, 60)
    older = web.get("/mail/inbox/").context["page"].older
    assert "data-poll-url" not in web.get("/mail/inbox/", {"before": older}).content.decode()


def test_empty_inbox_polls_from_the_beginning(web: Client, alice: User) -> None:
    html = web.get("/mail/inbox/").content.decode()
    assert 'data-poll-after="0~0"' in html
    new = entry(alice)
    assert row_ids(web.get("/mail/inbox/updates/", {"after": "0~0"})) == [new.pk]


def test_other_users_mail_never_appears_in_updates(web: Client, bob: User) -> None:
    entry(bob)
    assert row_ids(web.get("/mail/inbox/updates/", {"after": "0~0"})) == []


def test_factories_make_distinct_mailboxes() -> None:
    assert MailboxFactory().pk != MailboxFactory().pk


def test_sent_pages_older_and_newer(web: Client, alice: User) -> None:
    sent = [SentMessageFactory(sender=alice, subject=f"Batch {i}") for i in range(53)]
    base = timezone.now()
    for i, message in enumerate(sent):
        Message.objects.filter(pk=message.pk).update(date=base - timedelta(minutes=i))
    first = web.get(reverse("webmail:sent"))
    ids = re.findall(r'data-testid="sent-row" data-message-id="([^"]+)"', first.content.decode())
    assert ids == [str(m.pk) for m in sent[:50]]
    older = web.get(reverse("webmail:sent"), {"before": first.context["page"].older})
    older_ids = re.findall(r'data-testid="sent-row" data-message-id="([^"]+)"', older.content.decode())
    assert older_ids == [str(m.pk) for m in sent[50:]]
    assert older.context["page"].older is None and older.context["page"].newer


def test_label_and_starred_lists_leave_out_spam_and_trash(web: Client, alice: User) -> None:
    label = Label.objects.create(owner=alice, name="Receipts")
    shown = entry(alice, starred=True)
    archived = entry(alice, starred=True, folder=Folder.ARCHIVE)
    spam = entry(alice, starred=True, folder=Folder.SPAM)
    trashed = entry(alice, starred=True, folder=Folder.TRASH, trashed_at=timezone.now())
    for e in (shown, archived, spam, trashed):
        e.labels.add(label)
    assert sorted(row_ids(web.get("/mail/starred/"))) == sorted([shown.pk, archived.pk])
    assert sorted(row_ids(web.get(reverse("webmail:label", args=[label.pk])))) == sorted([shown.pk, archived.pk])


def test_unread_counts_stop_at_the_cap_and_show_999_plus(alice: User) -> None:
    from mailbox.selectors import UNREAD_CAP

    InboxEntry.objects.bulk_create(
        [
            InboxEntry(owner=alice, sender="news@peer.test", subject="n", size=1, state="notified")
            for _ in range(UNREAD_CAP + 5)
        ]
    )
    assert selectors.unread_counts(user=alice)["inbox"] == UNREAD_CAP
    client = Client()
    client.force_login(alice)
    page = client.get("/mail/inbox/").content.decode()
    assert "<title>(999+) Inbox — Pushmail</title>" in page
