"""Settings people expect: filters on new mail, the vacation reply, contacts, import of mbox and .eml files."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import User
from attachments import services as attachment_services
from federation import http, payloads
from gateway import mime
from mailbox import attachment_fetching
from mailbox.content import readable_content_for
from mailbox.folders import create_label
from mailbox.models import EntryState, FetchState, Folder, InboxEntry, ReceivedAttachment, RemoteMessage
from mailbox.services import SmtpAttachment, SmtpDelivery, accept_notification, accept_smtp_message, fetch_body
from mailsettings import forwarding, services, vacation
from mailsettings.filters import FilterInput
from mailsettings.models import AutoSendState, Filter, Forward, VacationReply
from outbox.models import Message
from tests.conftest import Call, FakePeer, Queued
from tests.factories import MailboxFactory, PeerMessage, PeerMessageFactory, SentMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]


def _client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _notify(peer: FakePeer, message: PeerMessage) -> InboxEntry:
    peer.bodies[str(message.global_id)] = message.content()
    accept_notification(origin=peer.domain, notification=message.notification())
    return InboxEntry.objects.select_related("remote").get(remote__global_id=message.global_id)


def _smtp(user: User, raw: bytes) -> InboxEntry:
    """A message received by SMTP, stored by the mailbox as the gateway stores it (its headers read by gateway.mime)."""
    parsed = mime.parse_message(raw)
    blob = attachment_services.store_upload(file=io.BytesIO(raw))
    remote = accept_smtp_message(
        delivery=SmtpDelivery(
            origin_domain=parsed.sender.partition("@")[2],
            message_id=parsed.message_id,
            sender=parsed.sender,
            to=parsed.to,
            cc=parsed.cc,
            subject=parsed.subject,
            date=parsed.date or timezone.now(),
            text=parsed.text,
            html=parsed.html,
            in_reply_to="",
            references=[],
            raw=blob,
            authentication_results="",
            list_id=parsed.list_id,
            automated=parsed.automated,
            attachments=[
                SmtpAttachment(
                    name=part.name,
                    content_type=part.content_type,
                    blob=attachment_services.store_upload(file=_named(part.content, part.name)),
                )
                for part in parsed.attachments
            ],
        ),
        users=[user],
    )
    return InboxEntry.objects.get(remote=remote, owner=user)


def _mail(sender: str, to: str, subject: str, *extra: str, mid: str = "") -> bytes:
    mid = mid or f"<{abs(hash((sender, subject, extra)))}@example.org>"
    head = [f"From: {sender}", f"To: {to}", f"Subject: {subject}", f"Message-ID: {mid}", *extra]
    return ("\r\n".join(head) + "\r\n\r\nHello there.\r\n").encode()


# --- Filters ----------------------------------------------------------------------------------


def test_a_filter_files_mail_from_another_instance_as_it_arrives(alice: User, peer: FakePeer) -> None:
    label = create_label(user=alice, name="Carol")
    services.create_filter(
        user=alice, data=FilterInput(from_contains="CAROL@peer", label_id=label.pk, mark_read=True, move_to="archive")
    )
    services.create_filter(user=alice, data=FilterInput(subject_contains="urgent", star=True))

    entry = _notify(peer, PeerMessageFactory(sender="carol@peer.test", subject="Weekly notes"))
    other = _notify(peer, PeerMessageFactory(sender="dave@peer.test", subject="URGENT: call me"))

    entry.refresh_from_db()
    assert (entry.folder, entry.read, entry.starred) == (Folder.ARCHIVE, True, False)
    assert list(entry.labels.values_list("name", flat=True)) == ["Carol"]
    other.refresh_from_db()
    assert (other.folder, other.read, other.starred) == (Folder.INBOX, False, True)
    # Filters are not a way to read mail: the body is still at the sender's.
    assert RemoteMessage.objects.get(pk=entry.remote_id).state == FetchState.NOTIFIED


def test_filters_run_in_order_and_a_repeated_notification_is_not_filed_again(alice: User, peer: FakePeer) -> None:
    services.create_filter(user=alice, data=FilterInput(from_contains="carol", move_to="trash"))
    services.create_filter(user=alice, data=FilterInput(from_contains="carol", move_to="archive"))
    message = PeerMessageFactory(sender="carol@peer.test")
    entry = _notify(peer, message)
    entry.refresh_from_db()
    assert entry.folder == Folder.ARCHIVE  # the later filter's move wins

    InboxEntry.objects.filter(pk=entry.pk).update(folder=Folder.INBOX)  # the user puts it back
    accept_notification(origin=peer.domain, notification=message.notification())
    entry.refresh_from_db()
    assert entry.folder == Folder.INBOX


def test_a_filter_on_the_list_id_and_the_recipient_acts_on_smtp_mail(alice: User) -> None:
    services.create_filter(user=alice, data=FilterInput(list_id_contains="announce.example.org", move_to="archive"))
    services.create_filter(user=alice, data=FilterInput(to_contains="team@", mark_read=True))

    list_id = "List-Id: Announcements <announce.example.org>"
    listed = _smtp(alice, _mail("news@example.org", alice.email, "News", list_id))
    to_team = _smtp(alice, _mail("ann@example.org", "team@example.org", "Team lunch", f"Cc: {alice.email}"))
    plain = _smtp(alice, _mail("ann@example.org", alice.email, "Hello"))

    assert (listed.folder, listed.read) == (Folder.ARCHIVE, False)
    assert (to_team.folder, to_team.read) == (Folder.INBOX, True)
    assert (plain.folder, plain.read) == (Folder.INBOX, False)


def test_mail_judged_spam_is_not_filtered(alice: User) -> None:
    services.create_filter(user=alice, data=FilterInput(from_contains="ann", move_to="archive"))
    raw = _mail("ann@example.org", alice.email, "Hi")
    parsed = mime.parse_message(raw)
    blob = attachment_services.store_upload(file=io.BytesIO(raw))
    remote = accept_smtp_message(
        delivery=SmtpDelivery(
            origin_domain="example.org",
            message_id=parsed.message_id,
            sender=parsed.sender,
            to=parsed.to,
            cc=[],
            subject="Hi",
            date=timezone.now(),
            text="x",
            html=None,
            in_reply_to="",
            references=[],
            raw=blob,
            authentication_results="",
            spam_reason="it failed DMARC",
        ),
        users=[alice],
    )
    assert InboxEntry.objects.get(remote=remote).folder == Folder.SPAM


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"move_to": "archive"}, "Give at least one condition"),
        ({"from_contains": "ann"}, "Choose at least one action"),
        ({"from_contains": "ann", "forward_to": "not an address"}, "is not an email address"),
        ({"from_contains": "ann", "forward_to": "ALICE@alpha.test"}, "your own address"),
        ({"from_contains": "ann", "forward_to": "nobody@alpha.test"}, "no mailbox nobody@alpha.test"),
    ],
)
def test_a_bad_filter_gets_a_clear_form_error_and_nothing_is_saved(
    alice: User, fields: dict[str, str], error: str
) -> None:
    response = _client(alice).post("/settings/filters/", fields)
    assert response.status_code == 400
    assert error in response.content.decode()
    assert not Filter.objects.exists()


def test_a_forward_that_would_loop_between_mailboxes_is_refused(alice: User, bob: User) -> None:
    services.create_filter(user=bob, data=FilterInput(subject_contains="x", forward_to=alice.email))
    response = _client(alice).post("/settings/filters/", {"subject_contains": "x", "forward_to": bob.email})
    assert response.status_code == 400
    assert "forward mail in a loop" in response.content.decode()
    assert not Filter.objects.filter(owner=alice).exists()


def test_filters_are_listed_edited_reordered_and_deleted_in_settings(alice: User) -> None:
    client = _client(alice)
    assert client.post("/settings/filters/", {"from_contains": "ann", "star": "on"}).status_code == 302
    assert client.post("/settings/filters/", {"subject_contains": "bill", "mark_read": "on"}).status_code == 302
    first, second = Filter.objects.filter(owner=alice).order_by("position")
    client.post(f"/settings/filters/{second.pk}/move/", {"direction": "up"})
    assert list(Filter.objects.filter(owner=alice).order_by("position").values_list("pk", flat=True)) == [
        second.pk,
        first.pk,
    ]
    response = client.post(f"/settings/filters/{first.pk}/", {"from_contains": "anna", "move_to": "trash"})
    assert response.status_code == 302
    first.refresh_from_db()
    assert (first.from_contains, first.move_to, first.star) == ("anna", "trash", False)
    page = client.get("/settings/filters/").content.decode()
    assert "from contains “anna”" in page and "move to Trash" in page
    client.post(f"/settings/filters/{first.pk}/delete/")
    assert list(Filter.objects.filter(owner=alice)) == [second]
    # Someone else's filter is a 404.
    bob_client = _client(MailboxFactory(domain=alice.domain, local_part="eve"))
    assert bob_client.post(f"/settings/filters/{second.pk}/delete/").status_code == 404


# --- Forwarding -------------------------------------------------------------------------------


def test_a_filter_forwards_local_mail_once_marked_auto_forwarded(
    alice: User, bob: User, queued: list[Queued], django_capture_on_commit_callbacks
) -> None:
    services.create_filter(user=alice, data=FilterInput(subject_contains="invoice", forward_to=bob.email))
    carol = MailboxFactory(domain=alice.domain, local_part="carol")
    with django_capture_on_commit_callbacks(execute=True):
        SentMessageFactory(sender=carol, to=[alice.email], subject="Invoice 42", text="Pay by Friday.")
    (forward,) = Forward.objects.all()
    assert [q.name for q in queued] == ["mailsettings.forward_message"]
    forwarding.forward_message(forward.pk)

    forward.refresh_from_db()
    assert forward.state == AutoSendState.SENT
    received = InboxEntry.objects.select_related("local").get(owner=bob)
    assert received.subject == "Fwd: Invoice 42"
    assert "Pay by Friday." in received.local.text and "From: carol@alpha.test" in received.local.text
    assert received.local.auto_submitted == "auto-forwarded"
    forwarding.forward_message(forward.pk)  # a repeated task sends nothing twice
    assert InboxEntry.objects.filter(owner=bob).count() == 1


def test_forwarding_mail_from_another_instance_fetches_its_body_first(
    alice: User, bob: User, peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks
) -> None:
    services.create_filter(user=alice, data=FilterInput(from_contains="carol", forward_to=bob.email))
    message = PeerMessageFactory(sender="carol@peer.test", subject="Plans", text="See you at noon.")
    with django_capture_on_commit_callbacks(execute=True):
        entry = _notify(peer, message)
    (forward,) = Forward.objects.all()
    remote = RemoteMessage.objects.get(pk=entry.remote_id)
    assert remote.state == FetchState.FETCHING  # asked for at once
    forwarding.forward_message(forward.pk)
    forward.refresh_from_db()
    assert forward.state == AutoSendState.WAITING  # no body yet: nothing sent
    assert not InboxEntry.objects.filter(owner=bob).exists()

    queued.clear()
    with django_capture_on_commit_callbacks(execute=True):
        fetch_body(remote.pk)
    assert Queued("mailsettings.forward_message", (forward.pk,), None) in queued
    forwarding.forward_message(forward.pk)
    forward.refresh_from_db()
    assert forward.state == AutoSendState.SENT
    assert "See you at noon." in InboxEntry.objects.select_related("local").get(owner=bob).local.text


def test_a_forward_whose_body_was_withdrawn_fails_with_a_notice(
    alice: User, bob: User, peer: FakePeer, queued: list[Queued]
) -> None:
    services.create_filter(user=alice, data=FilterInput(from_contains="carol", forward_to=bob.email))
    entry = _notify(peer, PeerMessageFactory(sender="carol@peer.test", subject="Oops"))
    RemoteMessage.objects.filter(pk=entry.remote_id).update(state=FetchState.WITHDRAWN)
    InboxEntry.objects.filter(pk=entry.pk).update(state=EntryState.WITHDRAWN)
    forwarding.forward_message(Forward.objects.get().pk)
    assert Forward.objects.get().state == AutoSendState.FAILED
    notice = InboxEntry.objects.get(owner=alice, state=EntryState.NOTICE)
    assert notice.subject == "Not forwarded: Oops" and bob.email in notice.notice_text


@pytest.fixture
def media(settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@dataclass
class _PeerMessageWithFiles(PeerMessage):
    """A message at the fake peer with attachments: (name, type, bytes) each, announced in its manifest."""

    files: list[tuple[str, str, bytes]] = field(default_factory=list)

    def manifest(self) -> list[dict[str, Any]]:
        return [{"name": n, "type": t, "size": len(c), "digest": payloads.digest(c)} for n, t, c in self.files]

    def content(self) -> bytes:
        return payloads.canonical_body(
            global_id=self.global_id,
            message_id=self.message_id,
            sender=self.sender,
            to=self.to,
            cc=self.cc,
            subject=self.subject,
            date=self.date,
            text=self.text,
            html=self.html,
            in_reply_to=self.in_reply_to,
            references=self.references,
            attachments=self.manifest(),
        )

    def notification(self, recipients: list[str] | None = None) -> payloads.Notification:
        base = super().notification(recipients)
        content = self.content()
        return payloads.Notification(
            **{
                **base.__dict__,
                "size": len(content),
                "digest": payloads.digest(content),
                "attachments": tuple(payloads.ManifestEntry(**m) for m in self.manifest()),
            }
        )


def _with_files(peer: FakePeer, files: list[tuple[str, str, bytes]], *, gone: str = "") -> _PeerMessageWithFiles:
    """A message from carol@peer.test whose files the peer serves (or answers 410 ``gone`` for)."""
    plain = PeerMessageFactory(sender="carol@peer.test", subject="Files", text="The files.")
    message = _PeerMessageWithFiles(**plain.__dict__, files=files)
    served = {payloads.digest(c): c for _, _, c in files}

    def handler(call: Call) -> http.Response:
        if gone:
            return http.Response(
                status=410,
                headers={"content-type": "application/json"},
                content=b'{"reason":"%s"}' % gone.encode(),
                url=call.url,
            )
        digest = call.path.rsplit("/", 1)[1]
        return http.Response(
            status=200, headers={"content-type": "application/octet-stream"}, content=served[digest], url=call.url
        )

    peer.on("GET", r"/federation/v1/messages/[^/]+/attachments/[^/]+(.*)", handler)
    return message


def _run_attachment_fetches() -> None:
    """What a worker does: every attachment fetch that is due runs now."""
    due = ReceivedAttachment.objects.filter(state__in=["wanted", "unavailable"], next_attempt_at__lte=timezone.now())
    for job_id in due.values_list("pk", flat=True):
        attachment_fetching.fetch_attachment(job_id)


def _forwarded_files(user: User) -> dict[str, bytes]:
    """What the forward's recipient can open: each attachment's name and bytes."""
    entry = InboxEntry.objects.select_related("local").get(owner=user)
    files = {}
    for item in readable_content_for(entry=entry).attachments:
        assert item.blob is not None
        with item.blob.file.open("rb") as f:
            files[item.name] = f.read()
    return files


def test_a_forward_of_local_mail_carries_its_attachments(
    alice: User, bob: User, queued: list[Queued], media: Path, django_capture_on_commit_callbacks
) -> None:
    services.create_filter(user=alice, data=FilterInput(subject_contains="invoice", forward_to=bob.email))
    carol = MailboxFactory(domain=alice.domain, local_part="carol")
    pdf = b"%PDF-1.4 invoice 42 \x00\x01\x02"
    blob = attachment_services.store_upload(file=_named(pdf, "invoice.pdf"))
    with django_capture_on_commit_callbacks(execute=True):
        SentMessageFactory(
            sender=carol,
            to=[alice.email],
            subject="Invoice 42",
            text="Attached.",
            attachments=[
                attachment_services.AttachmentInput(blob=blob, name="invoice.pdf", content_type="application/pdf")
            ],
        )
    forwarding.forward_message(Forward.objects.get().pk)

    assert Forward.objects.get().state == AutoSendState.SENT
    assert _forwarded_files(bob) == {"invoice.pdf": pdf}


def test_a_forward_whose_files_are_over_this_instances_limit_sends_the_text_with_a_note(
    alice: User, bob: User, queued: list[Queued], media: Path, settings: Any, django_capture_on_commit_callbacks
) -> None:
    services.create_filter(user=alice, data=FilterInput(subject_contains="photos", forward_to=bob.email))
    carol = MailboxFactory(domain=alice.domain, local_part="carol")
    blob = attachment_services.store_upload(file=_named(b"x" * 2000, "photo.jpg"))
    with django_capture_on_commit_callbacks(execute=True):
        SentMessageFactory(
            sender=carol,
            to=[alice.email],
            subject="Photos",
            text="From the trip.",
            attachments=[attachment_services.AttachmentInput(blob=blob, name="photo.jpg", content_type="image/jpeg")],
        )
    settings.PUSHMAIL_MAX_MESSAGE_ATTACHMENTS_BYTES = 1000  # lowered since carol sent it
    forwarding.forward_message(Forward.objects.get().pk)

    assert Forward.objects.get().state == AutoSendState.SENT
    text = InboxEntry.objects.select_related("local").get(owner=bob).local.text
    assert "From the trip." in text
    assert "Not attached to this forward:\n- photo.jpg: The attachments add up to" in text
    assert _forwarded_files(bob) == {}


def test_a_forward_of_mail_received_by_smtp_carries_its_attachments(
    alice: User, bob: User, queued: list[Queued], media: Path
) -> None:
    services.create_filter(user=alice, data=FilterInput(from_contains="ann", forward_to=bob.email))
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "ann@example.org", alice.email, "Scan"
    mail["Message-ID"] = "<scan-1@example.org>"
    mail.set_content("The scan is attached.")
    scan = b"%PDF-1.7 scanned page \x00\xff"
    mail.add_attachment(scan, maintype="application", subtype="pdf", filename="scan.pdf")
    _smtp(alice, mail.as_bytes())
    forwarding.forward_message(Forward.objects.get().pk)

    assert Forward.objects.get().state == AutoSendState.SENT
    assert _forwarded_files(bob) == {"scan.pdf": scan}
    assert not ReceivedAttachment.objects.filter(state="wanted").exists()  # nothing asked of anyone


def test_a_forward_of_mail_from_another_instance_fetches_its_attachments_and_carries_the_same_bytes(
    alice: User, bob: User, peer: FakePeer, queued: list[Queued], media: Path, django_capture_on_commit_callbacks
) -> None:
    services.create_filter(user=alice, data=FilterInput(from_contains="carol", forward_to=bob.email))
    photo, notes = b"\x89PNG\r\n\x1a\n photo bytes", b"meeting notes"
    message = _with_files(peer, [("photo.png", "image/png", photo), ("notes.txt", "text/plain", notes)])
    with django_capture_on_commit_callbacks(execute=True):
        entry = _notify(peer, message)
    (forward,) = Forward.objects.all()
    with django_capture_on_commit_callbacks(execute=True):
        fetch_body(entry.remote_id)
    forwarding.forward_message(forward.pk)

    forward.refresh_from_db()
    assert forward.state == AutoSendState.WAITING  # the body is here, the files are still at the sender's
    assert not InboxEntry.objects.filter(owner=bob).exists()
    assert ReceivedAttachment.objects.filter(remote_id=entry.remote_id).count() == 2  # their fetch was asked for

    queued.clear()
    with django_capture_on_commit_callbacks(execute=True):
        _run_attachment_fetches()
    assert Queued("mailsettings.forward_message", (forward.pk,), None) in queued  # the fetch woke it
    forwarding.forward_message(forward.pk)

    forward.refresh_from_db()
    assert forward.state == AutoSendState.SENT
    assert _forwarded_files(bob) == {"photo.png": photo, "notes.txt": notes}
    assert "Not attached" not in InboxEntry.objects.select_related("local").get(owner=bob).local.text


def test_a_forward_whose_attachment_was_withdrawn_is_sent_with_a_note_naming_it(
    alice: User, bob: User, peer: FakePeer, queued: list[Queued], media: Path, django_capture_on_commit_callbacks
) -> None:
    services.create_filter(user=alice, data=FilterInput(from_contains="carol", forward_to=bob.email))
    message = _with_files(peer, [("draft.txt", "text/plain", b"first draft")], gone="withdrawn")
    with django_capture_on_commit_callbacks(execute=True):
        entry = _notify(peer, message)
        fetch_body(entry.remote_id)
    forward = Forward.objects.get()
    forwarding.forward_message(forward.pk)
    _run_attachment_fetches()
    forwarding.forward_message(forward.pk)

    forward.refresh_from_db()
    assert forward.state == AutoSendState.SENT
    received = InboxEntry.objects.select_related("local").get(owner=bob)
    assert "The files." in received.local.text
    assert "Not attached to this forward:\n- draft.txt: draft.txt was withdrawn by the sender." in received.local.text
    assert _forwarded_files(bob) == {}


def test_a_forward_stops_waiting_for_an_unreachable_attachment_after_the_auto_send_window(
    alice: User,
    bob: User,
    peer: FakePeer,
    queued: list[Queued],
    media: Path,
    settings: Any,
    django_capture_on_commit_callbacks,
) -> None:
    services.create_filter(user=alice, data=FilterInput(from_contains="carol", forward_to=bob.email))
    message = _with_files(peer, [("plan.txt", "text/plain", b"the plan")])
    with django_capture_on_commit_callbacks(execute=True):
        entry = _notify(peer, message)
        fetch_body(entry.remote_id)
    peer.go_down()
    forward = Forward.objects.get()
    forwarding.forward_message(forward.pk)
    _run_attachment_fetches()
    forwarding.forward_message(forward.pk)
    assert Forward.objects.get().state == AutoSendState.WAITING  # still retried at the sender's

    Forward.objects.filter(pk=forward.pk).update(created_at=timezone.now() - timedelta(days=2))
    forwarding.forward_message(forward.pk)

    assert Forward.objects.get().state == AutoSendState.SENT
    text = InboxEntry.objects.select_related("local").get(owner=bob).local.text
    assert "- plan.txt: its sender's server did not hand it over in time" in text


# --- Vacation reply ---------------------------------------------------------------------------


def _away(user: User, **kwargs: object) -> None:
    vacation.save_vacation(
        user=user,
        enabled=True,
        subject=str(kwargs.get("subject", "")),
        text="I am away until Monday.",
        starts_on=None,
        ends_on=None,
    )


def _send_replies() -> None:
    for reply in VacationReply.objects.filter(state=AutoSendState.WAITING):
        vacation.send_vacation_reply(reply.pk)


def test_the_vacation_reply_answers_each_correspondent_once_per_period(
    alice: User, peer: FakePeer, queued: list[Queued]
) -> None:
    _away(alice)
    _notify(peer, PeerMessageFactory(sender="carol@peer.test", subject="Lunch?"))
    _notify(peer, PeerMessageFactory(sender="carol@peer.test", subject="Lunch? (again)"))
    _notify(peer, PeerMessageFactory(sender="dave@peer.test", subject="Report"))
    _send_replies()

    sent = Message.objects.filter(sender=alice).order_by("subject")
    assert [(m.to, m.subject, m.auto_submitted) for m in sent] == [
        (["carol@peer.test"], "Auto: Lunch?", "auto-replied"),
        (["dave@peer.test"], "Auto: Report", "auto-replied"),
    ]
    assert sent[0].text == "I am away until Monday." and sent[0].in_reply_to.startswith("<")

    # Turned off and on again: a new period, so carol hears once more.
    vacation.save_vacation(user=alice, enabled=False, subject="", text="x", starts_on=None, ends_on=None)
    _away(alice, subject="Out of office")
    _notify(peer, PeerMessageFactory(sender="carol@peer.test", subject="Back yet?"))
    _send_replies()
    assert Message.objects.filter(sender=alice, to=["carol@peer.test"]).count() == 2
    assert Message.objects.filter(sender=alice, subject="Out of office").count() == 1


def test_the_vacation_reply_never_answers_lists_automated_mail_or_noreply(alice: User, queued: list[Queued]) -> None:
    _away(alice)
    _smtp(alice, _mail("news@example.org", alice.email, "News", "List-Id: <announce.example.org>"))
    _smtp(alice, _mail("bot@example.org", alice.email, "Build", "Auto-Submitted: auto-generated"))
    _smtp(alice, _mail("bulk@example.org", alice.email, "Sale", "Precedence: bulk"))
    _smtp(alice, _mail("no-reply@example.org", alice.email, "Receipt"))
    _smtp(alice, _mail("ann@example.org", "others@example.org", "Bcc'd"))
    _smtp(alice, _mail("ann@example.org", alice.email, "A person", "Auto-Submitted: no"))
    assert list(VacationReply.objects.values_list("correspondent", "subject")) == [("ann@example.org", "A person")]


def test_two_mailboxes_on_vacation_do_not_answer_each_other_in_a_loop(
    alice: User, bob: User, queued: list[Queued]
) -> None:
    _away(alice)
    _away(bob)
    SentMessageFactory(sender=alice, to=[bob.email], subject="Before I go")
    _send_replies()  # bob answers alice: an auto-reply, which alice does not answer
    _send_replies()
    assert list(Message.objects.filter(auto_submitted="auto-replied").values_list("sender__email", flat=True)) == [
        bob.email
    ]


def test_a_reply_owed_before_the_vacation_was_turned_off_is_not_sent(alice: User, peer: FakePeer) -> None:
    _away(alice)
    _notify(peer, PeerMessageFactory(sender="carol@peer.test"))
    vacation.save_vacation(user=alice, enabled=False, subject="", text="", starts_on=None, ends_on=None)
    _send_replies()
    assert VacationReply.objects.get().state == AutoSendState.SKIPPED
    assert not Message.objects.filter(sender=alice).exists()


def test_the_vacation_form_checks_its_text_and_dates(alice: User) -> None:
    client = _client(alice)
    response = client.post("/settings/vacation/", {"enabled": "on", "text": " "})
    assert response.status_code == 400 and "Write the reply" in response.content.decode()
    today = timezone.localdate()
    response = client.post(
        "/settings/vacation/",
        {"enabled": "on", "text": "Away", "starts_on": today, "ends_on": today - timedelta(days=2)},
    )
    assert response.status_code == 400 and "before the first day" in response.content.decode()
    response = client.post("/settings/vacation/", {"enabled": "on", "text": "Away", "ends_on": today})
    assert response.status_code == 302
    assert "On</strong> until" in client.get("/settings/vacation/").content.decode()


def test_a_vacation_that_has_not_started_sends_nothing(alice: User, peer: FakePeer) -> None:
    tomorrow = timezone.localdate() + timedelta(days=1)
    vacation.save_vacation(user=alice, enabled=True, subject="", text="Away", starts_on=tomorrow, ends_on=None)
    _notify(peer, PeerMessageFactory(sender="carol@peer.test"))
    assert not VacationReply.objects.exists()


# --- Contacts ---------------------------------------------------------------------------------


def test_contacts_are_built_from_correspondents_and_named_and_suggested_by_name(alice: User, bob: User) -> None:
    SentMessageFactory(sender=alice, to=["dan@peer.test"], cc=[bob.email])
    client = _client(alice)
    page = client.get("/settings/contacts/").content.decode()
    assert "dan@peer.test" in page and bob.email in page

    client.post("/settings/contacts/", {"address": "dan@peer.test", "previous": "dan@peer.test", "name": "Dan Li"})
    client.post("/settings/contacts/", {"address": "Erin@Peer.test", "name": "Erin Moss"})
    suggested = client.get("/compose/contacts/", {"q": "li"}).json()
    assert suggested["contacts"] == ["dan@peer.test"] and suggested["names"] == {"dan@peer.test": "Dan Li"}
    assert client.get("/compose/contacts/", {"q": "erin"}).json()["contacts"] == ["erin@peer.test"]

    client.post("/settings/contacts/remove/", {"address": "dan@peer.test"})
    assert "dan@peer.test" not in client.get("/settings/contacts/").content.decode()
    assert client.get("/compose/contacts/", {"q": "dan"}).json()["contacts"] == []


def test_a_bad_contact_gets_a_form_error(alice: User) -> None:
    response = _client(alice).post("/settings/contacts/", {"address": "not-an-address", "name": "X"})
    assert response.status_code == 400 and "is not an email address" in response.content.decode()
    response = _client(alice).post("/settings/contacts/", {"address": "a@b.test", "name": "Eve <evil@x>"})
    assert response.status_code == 400 and "cannot hold" in response.content.decode()


# --- Import -----------------------------------------------------------------------------------

MBOX = (
    b"From ann@example.org Mon Jan  1 10:00:00 2024\n"
    b"From: Ann <ann@example.org>\nTo: alice@alpha.test\nSubject: First imported\n"
    b"Message-ID: <one@example.org>\nDate: Mon, 01 Jan 2024 10:00:00 +0000\n\n"
    b"Line one.\n>From the start, a quoted line.\n\n"
    b"From bob@example.org Tue Jan  2 10:00:00 2024\n"
    b"From: bob@example.org\nTo: alice@alpha.test\nSubject: With a file\n"
    b"Message-ID: <two@example.org>\nMIME-Version: 1.0\n"
    b'Content-Type: multipart/mixed; boundary="b"\n\n'
    b"--b\nContent-Type: text/plain\n\nSee attached.\n"
    b'--b\nContent-Type: application/pdf\nContent-Disposition: attachment; filename="plan.pdf"\n'
    b"Content-Transfer-Encoding: base64\n\nJVBERi0xLjQK\n--b--\n"
)


def _upload(client: Client, name: str, data: bytes) -> str:
    file = io.BytesIO(data)
    file.name = name
    response = client.post("/settings/import/", {"file": file}, follow=True)
    return response.content.decode()


def test_an_mbox_is_imported_into_the_archive_with_bodies_and_attachments(alice: User) -> None:
    _away(alice)
    services.create_filter(user=alice, data=FilterInput(from_contains="ann", move_to="trash"))
    page = _upload(_client(alice), "old.mbox", MBOX)
    assert "Imported 2 messages from old.mbox into the Archive." in page

    entries = InboxEntry.objects.filter(owner=alice).select_related("remote").order_by("subject")
    assert [(e.subject, e.folder, e.read, e.state) for e in entries] == [
        ("First imported", Folder.ARCHIVE, True, EntryState.FETCHED),
        ("With a file", Folder.ARCHIVE, True, EntryState.FETCHED),
    ]
    first, second = entries
    text = _client(alice).get(f"/mail/entry/{first.pk}/").content.decode()
    assert "Line one." in text and "From the start, a quoted line." in text and "&gt;From the start" not in text
    assert second.has_attachments and second.remote.attachments[0]["name"] == "plan.pdf"
    assert not VacationReply.objects.exists()  # imported mail is not new mail

    # The same file again adds nothing.
    assert "Imported 0 messages from old.mbox into the Archive. 2 already in your mailbox were skipped." in _upload(
        _client(alice), "old.mbox", MBOX
    )
    assert InboxEntry.objects.filter(owner=alice).count() == 2


def test_an_eml_file_is_imported(alice: User) -> None:
    page = _upload(_client(alice), "note.eml", _mail("ann@example.org", alice.email, "Just one"))
    assert "Imported 1 message from note.eml" in page
    assert InboxEntry.objects.get(owner=alice).subject == "Just one"


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", "The file is empty (0 bytes)"),
        (b"\x89PNG\r\n\x1a\nnot mail at all", "is not an mbox or .eml file"),
        (MBOX + b"\nFrom x@example.org Wed Jan  3 10:00:00 2024\n\nno header here\n", "message 3 (line"),
    ],
)
def test_a_file_that_is_not_mail_is_refused_and_nothing_is_imported(alice: User, data: bytes, error: str) -> None:
    response = _client(alice).post("/settings/import/", {"file": _named(data, "bad.mbox")})
    assert response.status_code == 400
    assert error in response.content.decode()
    assert not InboxEntry.objects.filter(owner=alice).exists()


def test_a_file_over_the_import_limit_is_refused(alice: User, settings: object) -> None:
    settings.PUSHMAIL_IMPORT_MAX_BYTES = 100  # type: ignore[attr-defined]
    response = _client(alice).post("/settings/import/", {"file": _named(MBOX, "big.mbox")})
    assert response.status_code == 413
    assert "larger than the 100 bytes import limit" in response.content.decode()
    assert not InboxEntry.objects.filter(owner=alice).exists()


def test_an_import_that_would_overfill_the_mailbox_is_refused(alice: User) -> None:
    User.objects.filter(pk=alice.pk).update(quota_bytes=200)
    alice.refresh_from_db()
    response = _client(alice).post("/settings/import/", {"file": _named(MBOX, "big.mbox")})
    assert response.status_code in (400, 413)
    assert "Nothing was imported" in response.content.decode() and "quota" in response.content.decode()
    assert not InboxEntry.objects.filter(owner=alice).exists()


def _named(data: bytes, name: str) -> io.BytesIO:
    file = io.BytesIO(data)
    file.name = name
    return file
