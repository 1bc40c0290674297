"""Compose in the webmail: drafts, autosave, reply/forward, attachments, send with undo, bad input."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from attachments.models import Blob
from attachments.services import store_upload
from mailbox.models import EntryState, InboxEntry, ReceivedAttachment
from outbox import services as drafts
from outbox.models import Draft, DraftAttachment, DraftState, Message, MessageAttachment
from outbox.services import send_message
from tests.factories import InboxEntryFactory, PeerMessageFactory, RemoteMessageFactory

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}


def url(name: str, *args: Any) -> str:
    return reverse(f"webmail:{name}", args=args)


@pytest.fixture
def web(alice: User) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def new_draft(owner: User, **fields: Any) -> Draft:
    return drafts.create_draft(owner=owner, signature=False, **fields)


def form(draft: Draft, **overrides: Any) -> dict[str, Any]:
    data = {
        "to": draft.to,
        "cc": draft.cc,
        "bcc": draft.bcc,
        "subject": draft.subject,
        "text": draft.text,
    }
    data.update(overrides)
    return data


def page_text(response: Any) -> str:
    return response.content.decode()


def drafts_list(web: Client) -> str:
    """The Drafts page's own section, without the random CSRF token and the rest of the page."""
    page = page_text(web.get(url("drafts")))
    return page[page.index('class="drafts-page"') : page.index("</section>", page.index('class="drafts-page"'))]


def due(draft: Draft) -> None:
    """Sent, and the undo delay has passed."""
    Draft.objects.filter(pk=draft.pk).update(state=DraftState.SCHEDULED, send_at=timezone.now() - timedelta(seconds=1))


def entry_for(owner: User, message: Message) -> InboxEntry:
    return InboxEntry.objects.get(owner=owner, local=message)


# --- The compose page and drafts ------------------------------------------------------------


def test_compose_opens_a_form_with_labelled_controls_and_the_signature(web: Client, alice: User) -> None:
    alice.signature = "Alice\nAlpha team"
    alice.save(update_fields=["signature"])

    response = web.get(url("compose"))

    assert response.status_code == 200
    assert not Draft.objects.exists()  # stored on its first save only
    page = page_text(response)
    assert ">\n\n-- \nAlice\nAlpha team\n</textarea>" in page
    for label in ("To", "Cc", "Bcc", "Subject", "Message", "Attach files", "Markdown"):
        match = re.search(rf'<label for="([^"]+)">{label}</label>', page)
        assert match, label
        assert f'id="{match.group(1)}"' in page
    assert re.search(r'type="file" multiple', page)
    assert ">Send</button>" in page
    assert "<script>" not in page  # strict CSP: behaviour comes from static files only


def test_autosave_stores_the_fields_and_says_when(web: Client, alice: User) -> None:
    draft = new_draft(alice)

    response = web.post(
        url("draft-save", draft.pk),
        {"to": "bob@alpha.test", "cc": "", "bcc": "", "subject": "Plans", "text": "Half a thought", "markdown": "1"},
        headers=HTMX,
    )

    assert response.status_code == 200
    assert re.fullmatch(r"Saved \d\d:\d\d", page_text(response).strip())
    draft.refresh_from_db()
    assert (draft.to, draft.subject, draft.text, draft.markdown) == ("bob@alpha.test", "Plans", "Half a thought", True)
    listing = page_text(web.get(url("drafts")))
    assert "Plans" in listing and 'data-testid="draft-row"' in listing


def test_drafts_lists_only_unsent_drafts_and_deletes(web: Client, alice: User, bob: User) -> None:
    keep = new_draft(alice, subject="Keep me")
    gone = new_draft(alice, subject="Throw away")
    queued = new_draft(alice, subject="Being sent", to="bob@alpha.test")
    Draft.objects.filter(pk=queued.pk).update(state=DraftState.SCHEDULED, send_at=timezone.now() + timedelta(seconds=5))
    new_draft(bob, subject="Bob's own")

    response = web.post(url("draft-delete", gone.pk))
    assert response.status_code == 302

    listing = page_text(web.get(url("drafts")))
    assert "Keep me" in listing
    assert "Throw away" not in listing
    assert "Being sent" not in listing
    assert "Bob&#x27;s own" not in listing and "Bob's own" not in listing
    assert not Draft.objects.filter(pk=gone.pk).exists()
    assert Draft.objects.filter(pk=keep.pk).exists()


def test_another_users_draft_is_not_found(web: Client, bob: User) -> None:
    theirs = new_draft(bob, subject="private", to="carol@alpha.test")
    attachment = DraftAttachment.objects.create(
        draft=theirs, blob=store_upload(file=SimpleUploadedFile("a.txt", b"x")), name="a.txt",
        content_type="text/plain", size=1,
    )  # fmt: skip

    assert web.get(url("draft", theirs.pk)).status_code == 404
    assert web.get(url("draft-status", theirs.pk)).status_code == 404
    for name in ("draft-save", "draft-send", "draft-undo", "draft-delete", "draft-attach"):
        assert web.post(url(name, theirs.pk), form(theirs, subject="hijacked")).status_code == 404, name
    assert web.post(url("draft-attachment-remove", theirs.pk, attachment.pk)).status_code == 404
    theirs.refresh_from_db()
    assert theirs.subject == "private" and theirs.send_at is None
    assert DraftAttachment.objects.filter(pk=attachment.pk).exists()


# --- Markdown ------------------------------------------------------------------------------------


def test_markdown_is_rendered_and_sanitized() -> None:
    html = drafts.render_markdown(
        "# Title\n\n**bold** [ok](https://example.org) [bad](javascript:alert(1))\n\n"
        "<script>alert(1)</script>\n\n<img src=x onerror=alert(1)>\n\n"
        '<a href="https://x.test" onclick="alert(1)">x</a>\n\n<svg><use href="#x"/></svg>'
    )

    assert "<h1>Title</h1>" in html
    assert "<strong>bold</strong>" in html
    assert 'href="https://example.org"' in html
    for forbidden in ("<script", "onerror", "onclick", "javascript:", "<img", "<svg", "<use"):
        assert forbidden not in html.lower(), forbidden


def test_a_markdown_message_is_sent_as_sanitized_html_and_plain_text(
    web: Client, alice: User, bob: User, queued: list, django_capture_on_commit_callbacks: Any
) -> None:
    draft = new_draft(alice)
    text = "Hello *Bob*\n\n<script>alert('x')</script>"

    with django_capture_on_commit_callbacks(execute=True):
        web.post(url("draft-send", draft.pk), form(draft, to="bob@alpha.test", subject="Hi", text=text, markdown="1"))
    due(draft)
    message = drafts.send_draft(draft.pk)

    assert message is not None
    assert message.text == text
    assert "<em>Bob</em>" in message.html
    assert "<script" not in message.html


# --- Reply, reply all, forward ---------------------------------------------------------------------


def test_reply_quotes_the_message_and_threads_it(web: Client, alice: User, bob: User) -> None:
    original = send_message(sender=bob, to=["alice@alpha.test"], subject="Lunch?", text="Are you free?\nNoon works.")
    entry = entry_for(alice, original)

    response = web.post(url("reply", entry.pk))

    draft = Draft.objects.get(owner=alice)
    assert response["Location"] == url("draft", draft.pk)
    assert draft.to == "bob@alpha.test"
    assert draft.cc == ""
    assert draft.subject == "Re: Lunch?"
    assert draft.in_reply_to == original.message_id
    assert re.search(r"On .+, bob@alpha\.test wrote:\n> Are you free\?\n> Noon works\.", draft.text)

    # Sent after the delay, the reply joins the conversation.
    due(draft)
    reply = drafts.send_draft(draft.pk)
    assert reply is not None
    assert reply.in_reply_to == original.message_id
    assert reply.references[-1] == original.message_id
    assert reply.thread_key == original.thread_key
    assert entry_for(bob, reply).thread_key == original.thread_key  # bob sees it in his conversation


def test_reply_all_addresses_everyone_but_me(web: Client, alice: User, bob: User) -> None:
    original = send_message(
        sender=bob,
        to=["alice@alpha.test", "carol@alpha.test"],
        cc=["dave@alpha.test", "Alice@alpha.test"],
        subject="Re: Plans",
        text="Thoughts?",
    )

    web.post(url("reply", entry_for(alice, original).pk), {"all": "1"})

    draft = Draft.objects.get(owner=alice)
    assert draft.to == "bob@alpha.test, carol@alpha.test"
    assert draft.cc == "dave@alpha.test"
    assert draft.subject == "Re: Plans"  # no "Re: Re:"


def test_reply_to_a_message_still_at_the_sender_has_no_quote_and_says_so(web: Client, alice: User) -> None:
    entry = InboxEntryFactory(owner=alice, subject="Big news")

    response = web.post(url("reply", entry.pk), follow=True)

    draft = Draft.objects.get(owner=alice)
    assert draft.to == "carol@peer.test"
    assert draft.text == ""
    assert draft.in_reply_to == entry.remote.message_id
    assert "does not quote it" in page_text(response)


def test_reply_to_a_fetched_remote_message_quotes_its_body(web: Client, alice: User) -> None:
    peer_message = PeerMessageFactory(text="Remote words", cc=["erin@peer.test"])
    remote = RemoteMessageFactory(
        global_id=peer_message.global_id,
        message_id=peer_message.message_id,
        subject=peer_message.subject,
        state="fetched",
        content=peer_message.content(),
    )
    entry = InboxEntryFactory(owner=alice, remote=remote, state=EntryState.FETCHED)

    web.post(url("reply", entry.pk), {"all": "1"})

    draft = Draft.objects.get(owner=alice)
    assert draft.to == "carol@peer.test"
    assert draft.cc == "erin@peer.test"
    assert "carol@peer.test wrote:\n> Remote words" in draft.text


def test_reply_to_my_own_sent_message(web: Client, alice: User) -> None:
    sent = send_message(sender=alice, to=["bob@alpha.test"], cc=["carol@alpha.test"], subject="Report", text="v1")

    web.post(url("reply-sent", sent.pk), {"all": "1"})

    draft = Draft.objects.get(owner=alice)
    assert (draft.to, draft.cc, draft.subject) == ("bob@alpha.test", "carol@alpha.test", "Re: Report")
    assert draft.in_reply_to == sent.message_id
    assert "alice@alpha.test wrote:\n> v1" in draft.text


def test_replying_to_someone_elses_entry_or_sent_message_is_not_found(web: Client, bob: User) -> None:
    theirs = send_message(sender=bob, to=["carol@alpha.test"], subject="x", text="y")
    carol_entry = InboxEntryFactory(subject="not alice's")

    for method in (web.get, web.post):
        assert method(url("reply", carol_entry.pk)).status_code == 404
        assert method(url("forward", carol_entry.pk)).status_code == 404
        assert method(url("reply-sent", theirs.pk)).status_code == 404
    assert not Draft.objects.exists()


def test_forward_carries_the_text_and_the_attachments(web: Client, alice: User, bob: User) -> None:
    original = send_message(sender=bob, to=["alice@alpha.test"], subject="Fwd: Photos", text="See attached")
    blob = store_upload(file=SimpleUploadedFile("cat.png", b"\x89PNG fake"))
    MessageAttachment.objects.create(
        message=original, blob=blob, position=0, name="cat.png", content_type="image/png", size=blob.size
    )

    web.post(url("forward", entry_for(alice, original).pk))

    draft = Draft.objects.get(owner=alice)
    assert draft.subject == "Fwd: Photos"  # no doubling
    assert draft.to == ""
    assert "---------- Forwarded message ----------\nFrom: bob@alpha.test" in draft.text
    assert "See attached" in draft.text
    assert [(a.name, a.blob_id) for a in draft.attachments.all()] == [("cat.png", blob.pk)]


def test_forward_names_the_attachments_not_yet_fetched(web: Client, alice: User) -> None:
    held = store_upload(file=SimpleUploadedFile("held.pdf", b"%PDF-1.4 held"))
    remote = RemoteMessageFactory(
        subject="Docs",
        attachments=[
            {"name": "held.pdf", "type": "application/pdf", "size": held.size, "digest": held.digest},
            {"name": "far.zip", "type": "application/zip", "size": 10, "digest": "sha-256:" + "0" * 64},
        ],
    )
    entry = InboxEntryFactory(owner=alice, remote=remote)
    # This message's fetch brought it.
    ReceivedAttachment.objects.create(remote=remote, position=0, blob=held, state="fetched")

    response = web.post(url("forward", entry.pk), follow=True)

    draft = Draft.objects.get(owner=alice)
    assert draft.subject == "Fwd: Docs"
    assert [a.name for a in draft.attachments.all()] == ["held.pdf"]
    page = page_text(response)
    assert "far.zip" in page and "not been downloaded" in page


# --- Send with undo -----------------------------------------------------------------------------------


def test_send_queues_after_the_undo_delay_and_shows_undo(
    web: Client, alice: User, bob: User, queued: list, django_capture_on_commit_callbacks: Any, settings: Any
) -> None:
    draft = new_draft(alice)

    with django_capture_on_commit_callbacks(execute=True):
        response = web.post(url("draft-send", draft.pk), form(draft, to="bob@alpha.test", subject="Hi", text="Hello"))

    assert response.status_code == 302
    draft.refresh_from_db()
    assert draft.send_at is not None
    assert [(q.name, q.args, q.countdown) for q in queued] == [
        ("outbox.send_draft", (draft.pk,), settings.PUSHMAIL_UNDO_SEND_SECONDS)
    ]
    page = page_text(web.get(response["Location"]))
    assert 'data-testid="undo-send"' in page
    assert re.search(r"Sending in <span[^>]*>\d+ s</span>…", page)
    assert ">Undo</button>" in page
    assert not Message.objects.exists()
    assert "Hi" not in drafts_list(web)


def test_undo_before_the_task_runs_sends_nothing(
    web: Client, alice: User, bob: User, queued: list, django_capture_on_commit_callbacks: Any
) -> None:
    draft = new_draft(alice)
    with django_capture_on_commit_callbacks(execute=True):
        web.post(url("draft-send", draft.pk), form(draft, to="bob@alpha.test", subject="Oops", text="Wrong person"))

    response = web.post(url("draft-undo", draft.pk), follow=True)
    drafts.send_draft(draft.pk)  # the queued task still fires after the delay

    assert "Sending cancelled" in page_text(response)
    assert 'id="compose-form"' in page_text(response)  # the draft is open again
    assert not Message.objects.exists()
    draft.refresh_from_db()
    assert draft.send_at is None and draft.sent_message is None
    assert "Oops" in drafts_list(web)


def test_the_task_sends_once_after_the_delay_even_when_run_twice(
    web: Client, alice: User, bob: User, queued: list, django_capture_on_commit_callbacks: Any
) -> None:
    draft = new_draft(alice)
    with django_capture_on_commit_callbacks(execute=True):
        web.post(url("draft-send", draft.pk), form(draft, to="bob@alpha.test", subject="Once", text="Only once"))

    assert drafts.send_draft(draft.pk) is None  # too early: the undo window is still open
    assert not Message.objects.exists()

    due(draft)
    first = drafts.send_draft(draft.pk)
    second = drafts.send_draft(draft.pk)

    assert first is not None and second is None
    message = Message.objects.get()
    assert (message.sender, message.subject, message.to) == (alice, "Once", ["bob@alpha.test"])
    assert InboxEntry.objects.filter(owner=bob, local=message).count() == 1
    assert "Once" not in drafts_list(web)
    status = page_text(web.get(url("draft-status", draft.pk)))
    assert "Sent." in status
    response = web.post(url("draft-undo", draft.pk), follow=True)
    assert "Too late to undo" in page_text(response)
    assert Message.objects.count() == 1


def test_the_sweep_queues_a_send_whose_task_was_lost(
    alice: User, queued: list, django_capture_on_commit_callbacks: Any
) -> None:
    lost = new_draft(alice, to="bob@alpha.test", subject="Lost")
    Draft.objects.filter(pk=lost.pk).update(state=DraftState.SCHEDULED, send_at=timezone.now() - timedelta(minutes=5))
    waiting = new_draft(alice, to="bob@alpha.test", subject="Waiting")
    Draft.objects.filter(pk=waiting.pk).update(
        state=DraftState.SCHEDULED, send_at=timezone.now() + timedelta(seconds=5)
    )
    new_draft(alice, subject="Just a draft")

    with django_capture_on_commit_callbacks(execute=True):
        assert drafts.send_due_drafts() == 1

    assert [(q.name, q.args) for q in queued] == [("outbox.send_draft", (lost.pk,))]


def test_sending_with_attachments_carries_them_to_the_message(
    web: Client, alice: User, bob: User, queued: list, django_capture_on_commit_callbacks: Any
) -> None:
    draft = new_draft(alice)
    upload = SimpleUploadedFile("notes.txt", b"meeting notes", content_type="text/plain")

    with django_capture_on_commit_callbacks(execute=True):
        response = web.post(
            url("draft-send", draft.pk),
            {**form(draft, to="bob@alpha.test", subject="Notes", text="Attached"), "files": [upload]},
        )
    assert response.status_code == 302
    due(draft)
    message = drafts.send_draft(draft.pk)

    assert message is not None
    assert [(a.name, a.size) for a in message.attachments.all()] == [("notes.txt", 13)]


# --- Attachments in compose ---------------------------------------------------------------------------------


def test_attach_lists_the_file_and_remove_takes_it_off(web: Client, alice: User) -> None:
    draft = new_draft(alice)
    upload = SimpleUploadedFile("plan.pdf", b"%PDF-1.4 plan", content_type="application/pdf")

    response = web.post(url("draft-attach", draft.pk), {**form(draft, subject="Plan"), "files": [upload]}, follow=True)

    attachment = DraftAttachment.objects.get(draft=draft)
    assert (attachment.name, attachment.content_type, attachment.size) == ("plan.pdf", "application/pdf", 13)
    page = page_text(response)
    assert "plan.pdf" in page and "13\xa0bytes" in page
    assert 'aria-label="Remove plan.pdf"' in page

    web.post(url("draft-attachment-remove", draft.pk, attachment.pk), form(draft, subject="Plan"))
    assert not DraftAttachment.objects.filter(draft=draft).exists()


def test_the_same_file_is_stored_once(web: Client, alice: User) -> None:
    for _ in range(2):
        draft = new_draft(alice)
        web.post(
            url("draft-attach", draft.pk), {**form(draft), "files": [SimpleUploadedFile("same.txt", b"same bytes")]}
        )

    assert DraftAttachment.objects.count() == 2
    assert Blob.objects.count() == 1


@pytest.mark.parametrize(
    ("setting", "value", "files", "status", "expected"),
    [
        (
            "PUSHMAIL_MAX_ATTACHMENT_BYTES",
            10,
            [("big.bin", b"x" * 11)],
            413,
            "big.bin is larger than the 10 bytes limit for one attachment",
        ),
        (
            "PUSHMAIL_MAX_MESSAGE_ATTACHMENTS_BYTES",
            15,
            [("a.txt", b"x" * 8), ("b.txt", b"y" * 8)],
            413,
            "The attachments add up to more than the 15 bytes limit for one message.",
        ),
        (
            None,
            None,
            [("ok.txt", b"fine"), ("setup.EXE", b"MZ")],
            400,
            "setup.EXE: files of type .exe cannot be attached",
        ),
    ],
)
def test_attachments_over_a_limit_or_of_a_blocked_type_store_nothing(
    web: Client, alice: User, settings: Any, setting: str | None, value: Any, files: list, status: int, expected: str
) -> None:
    if setting:
        setattr(settings, setting, value)
    draft = new_draft(alice)
    uploads = [SimpleUploadedFile(name, content) for name, content in files]

    response = web.post(
        url("draft-send", draft.pk), {**form(draft, to="bob@alpha.test", subject="s"), "files": uploads}
    )

    assert response.status_code == status
    assert expected.replace("\xa0", " ") in page_text(response).replace("\xa0", " ")
    assert not DraftAttachment.objects.exists()
    assert not Blob.objects.exists()
    assert not Message.objects.exists()
    draft.refresh_from_db()
    assert draft.send_at is None


def test_an_upload_over_the_mailbox_quota_stores_nothing(web: Client, alice: User) -> None:
    alice.quota_bytes = 20
    alice.save(update_fields=["quota_bytes"])
    draft = new_draft(alice)

    response = web.post(
        url("draft-attach", draft.pk), {**form(draft), "files": [SimpleUploadedFile("big.txt", b"z" * 30)]}
    )

    assert response.status_code == 413
    assert "Your mailbox is full: it uses 0 bytes of its 20 bytes quota" in page_text(response)
    assert not Blob.objects.exists()


# --- Bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"to": "bob@alpha.test, not an address"}, "To: &#x27;not an address&#x27; is not a valid address"),
        ({"cc": "carol@"}, "Cc: &#x27;carol@&#x27; is not a valid address"),
        ({"to": "bob@alpha.test\r\nBcc: eve@evil.test"}, "To contains a line break (CR or LF)"),
        ({"bcc": "x@alpha.test\nBcc: y@alpha.test"}, "Bcc contains a line break (CR or LF)"),
        ({"subject": "Hi\r\nBcc: eve@evil.test"}, "The subject contains a line break (CR or LF)"),
        ({"to": "", "cc": " , ", "bcc": ""}, "Add at least one recipient in To, Cc or Bcc."),
        (
            {"to": ", ".join(f"u{i}@alpha.test" for i in range(11))},
            "Too many recipients: 11; a message can have at most 10.",
        ),
    ],
)
def test_bad_input_is_explained_and_nothing_is_sent(
    web: Client, alice: User, settings: Any, queued: list, django_capture_on_commit_callbacks: Any,
    fields: dict, expected: str,
) -> None:  # fmt: skip
    settings.PUSHMAIL_MAX_RECIPIENTS = 1  # ten per message
    draft = new_draft(alice)

    with django_capture_on_commit_callbacks(execute=True):
        response = web.post(
            url("draft-send", draft.pk), form(draft, **{"to": "bob@alpha.test", "subject": "s", **fields})
        )

    assert response.status_code == 400
    page = page_text(response)
    assert 'data-testid="compose-errors"' in page
    assert expected in page
    assert not Message.objects.exists()
    assert queued == []
    draft.refresh_from_db()
    assert draft.send_at is None
    assert 'id="compose-form"' in page  # still editable, with what was typed


def test_a_post_after_the_session_expired_goes_to_login_and_says_nothing_was_sent(alice: User) -> None:
    draft = new_draft(alice)
    anonymous = Client()

    response = anonymous.post(url("draft-send", draft.pk), form(draft, to="bob@alpha.test", subject="Late"))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login") + "?next=")
    login_page = anonymous.get(response["Location"])
    assert "Your session has expired, so nothing was sent or saved" in page_text(login_page)
    draft.refresh_from_db()
    assert draft.subject == "" and draft.send_at is None
    assert not Message.objects.exists()


def test_autosave_after_the_session_expired_sends_the_page_to_login(alice: User) -> None:
    draft = new_draft(alice)

    response = Client().post(
        url("draft-save", draft.pk),
        form(draft, subject="typed"),
        headers={**HTMX, "HX-Current-URL": f"http://testserver{url('draft', draft.pk)}"},
    )

    assert response["HX-Redirect"] == reverse("account_login") + "?next=" + url("draft", draft.pk).replace("/", "%2F")
    draft.refresh_from_db()
    assert draft.subject == ""


# --- Autocomplete -------------------------------------------------------------------------------------------------


def test_contacts_suggests_past_correspondents_most_recent_first(web: Client, alice: User, bob: User) -> None:
    send_message(sender=alice, to=["carol@peer.test"], subject="1", text="x")
    InboxEntryFactory(owner=alice, remote=RemoteMessageFactory(sender="cara@peer.test"), sender="cara@peer.test")
    InboxEntryFactory(owner=bob, remote=RemoteMessageFactory(sender="casper@peer.test"), sender="casper@peer.test")
    send_message(sender=bob, to=["carlos@peer.test"], subject="2", text="y")

    data = web.get(url("contacts"), {"q": "ca"}).json()

    assert data["contacts"] == ["cara@peer.test", "carol@peer.test"]  # bob's correspondents never show

    options = page_text(web.get(url("contacts"), {"to": "dan@x.test, car"}, headers=HTMX))
    assert '<option value="dan@x.test, cara@peer.test">' in options
    assert '<option value="dan@x.test, carol@peer.test">' in options


def test_files_on_a_draft_count_once_against_the_quota_when_sent(
    web: Client, alice: User, bob: User, queued: list, django_capture_on_commit_callbacks: Any
) -> None:
    alice.quota_bytes = 5000
    alice.save(update_fields=["quota_bytes"])
    draft = new_draft(alice)
    upload = SimpleUploadedFile("half.bin", b"h" * 3000)

    with django_capture_on_commit_callbacks(execute=True):
        response = web.post(
            url("draft-send", draft.pk), {**form(draft, to="bob@alpha.test", subject="Q", text="q"), "files": [upload]}
        )
    assert response.status_code == 302
    due(draft)
    message = drafts.send_draft(draft.pk)

    assert message is not None
    assert [a.name for a in message.attachments.all()] == ["half.bin"]


def test_a_send_refused_at_the_last_moment_reopens_the_draft_with_its_files_and_says_why(
    web: Client, alice: User, bob: User, queued: list, django_capture_on_commit_callbacks: Any, settings: Any
) -> None:
    draft = new_draft(alice)
    with django_capture_on_commit_callbacks(execute=True):
        web.post(
            url("draft-send", draft.pk),
            {
                **form(draft, to="bob@alpha.test", subject="Big", text="q"),
                "files": [SimpleUploadedFile("f.bin", b"f" * 50)],
            },
        )
    settings.PUSHMAIL_MAX_MESSAGE_ATTACHMENTS_BYTES = 10  # lowered by the admin during the undo window
    due(draft)

    assert drafts.send_draft(draft.pk) is None

    assert not Message.objects.exists()
    draft.refresh_from_db()
    assert draft.send_at is None
    assert [a.name for a in draft.attachments.all()] == ["f.bin"]
    notice = InboxEntry.objects.get(owner=alice, state=EntryState.NOTICE)
    assert notice.subject == "Not sent: Big"
    assert "over the 10 bytes limit for one message" in notice.notice_text


def test_autosave_while_the_message_is_being_sent_changes_nothing_and_says_so(web: Client, alice: User) -> None:
    draft = new_draft(alice, to="bob@alpha.test", subject="Going out")
    Draft.objects.filter(pk=draft.pk).update(state=DraftState.SCHEDULED, send_at=timezone.now() + timedelta(seconds=8))

    response = web.post(url("draft-save", draft.pk), form(draft, subject="Changed"), headers=HTMX)

    assert "Not saved. This message is being sent: press Undo to change it." in page_text(response)
    draft.refresh_from_db()
    assert draft.subject == "Going out"


@pytest.mark.parametrize("action", ["reply", "forward"])
def test_a_withdrawn_message_offers_no_reply_or_forward(web: Client, alice: User, action: str) -> None:
    entry = InboxEntryFactory(owner=alice, subject="Oops", state=EntryState.WITHDRAWN)

    page = web.get(f"/mail/entry/{entry.pk}/").content.decode()
    response = web.post(url(action, entry.pk), follow=True)

    assert url("reply", entry.pk) not in page and url("forward", entry.pk) not in page
    assert "The sender withdrew this message: there is nothing to reply to or forward." in page_text(response)
    assert not Draft.objects.exists()


def test_the_sweep_forgets_drafts_sent_more_than_an_hour_ago(alice: User, bob: User) -> None:
    old, recent = new_draft(alice, to="bob@alpha.test"), new_draft(alice, to="bob@alpha.test")
    for draft in (old, recent):
        due(draft)
        assert drafts.send_draft(draft.pk) is not None
    Draft.objects.filter(pk=old.pk).update(updated_at=timezone.now() - timedelta(hours=2))

    drafts.send_due_drafts()

    assert list(Draft.objects.values_list("pk", flat=True)) == [recent.pk]
    assert Message.objects.count() == 2  # the messages themselves stay in Sent
