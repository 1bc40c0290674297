"""A filter's forward: a received message sent on to another address, once its body is here.

Pushmail pulls on read: a message from another instance keeps its body at the
sender's until someone here fetches it. Forwarding needs the body, so a
forward is a job row (``Forward``) that asks for the fetch at once (the sender
sees the fetch, as with "fetch as soon as notified") and sends when the body
has come (``mailbox.signals.body_fetched`` wakes it; the sweep is the backstop).
A body that never comes (withdrawn, expired, refused) fails the forward, and
the owner is told by a notice.

The forward carries the message's attachments. Those of a message from another
instance are fetched like a reader's download (``mailbox.received_attachments``:
from this message's sender, verified against its manifest), and the forward
waits for them as for the body (``mailbox.signals.attachment_settled`` wakes
it). A file that will not come (withdrawn, refused, blocked type, too large,
still unreachable when the auto-send window or the message's life ends, or over
a limit of the send path) does not hold back the text: the forward is sent without it, and its text ends
with a note naming each file left out and why.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from celery import shared_task
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import User
from attachments.services import AttachmentInput
from mailbox import services as mailbox_services
from mailbox.content import ReadableContent, readable_content_for
from mailbox.models import EntryState, FetchState, Folder, InboxEntry
from mailbox.received_attachments import attachment_for_entry
from outbox.complaints import SendingPaused
from outbox.compose import forward_header, forward_subject, quotable_text
from outbox.models import Message
from outbox.sending import send_message
from pushmail_site.jobs import enqueue, lock
from pushmail_site.states import retry_delay, retry_window, transition

from .models import AutoSendState, Forward
from .states import FORWARD

# While the body is being fetched, the forward looks again this often (the fetch's own signal
# usually wakes it first).
_BODY_WAIT = timedelta(seconds=30)
# Bodies that will never come: the forward fails.
_BODY_GONE = {FetchState.WITHDRAWN, FetchState.EXPIRED, FetchState.TAMPERED, FetchState.MALFORMED}


def owe_forward(*, entry: InboxEntry, to: str) -> Forward | None:
    """Record the forward of ``entry`` to ``to`` (once), ask for its body, and queue it."""
    try:
        with transaction.atomic():
            forward = Forward.objects.create(
                owner_id=entry.owner_id, entry=entry, to=to, next_attempt_at=timezone.now()
            )
    except IntegrityError:
        return None
    if entry.remote_id is not None and entry.remote is not None and entry.remote.state == FetchState.NOTIFIED:
        mailbox_services.request_fetch(remote_id=entry.remote_id)
    enqueue(forward_message_task, forward.pk)
    return forward


@shared_task(name="mailsettings.forward_message")
def forward_message_task(forward_id: int) -> None:
    forward_message(forward_id)


def wake_forwards(*, remote_id: int) -> int:
    """Queue the forwards waiting for this message's body or files (one has just come, or given up)."""
    ids = list(
        Forward.objects.filter(entry__remote_id=remote_id, state=AutoSendState.WAITING).values_list("pk", flat=True)
    )
    for pk in ids:
        enqueue(forward_message_task, pk)
    return len(ids)


def forward_message(forward_id: int) -> None:
    """Send one forward if its body is here; wait for it, or give up when it will not come."""
    with transaction.atomic():
        forward = lock(Forward.objects.filter(pk=forward_id, state=AutoSendState.WAITING)).first()
        if forward is None:
            return
        entry = InboxEntry.objects.select_related("remote", "local", "owner__domain").get(pk=forward.entry_id)
        if entry.folder == Folder.SPAM:
            transition(forward, FORWARD, AutoSendState.SKIPPED, fields={"next_attempt_at": None})
            return
        content = readable_content_for(entry=entry)
        body = content.body
        if body is None:
            _wait_or_fail(forward, entry)
            return
        files = _files(forward, entry, content)
        if files is None:
            transition(forward, FORWARD, AutoSendState.WAITING, fields={"next_attempt_at": timezone.now() + _BODY_WAIT})
            return
        carried, left_out = files
        owner: User = entry.owner
        header = forward_header(
            sender=str(body.get("from") or entry.sender),
            date=entry.received_at,
            subject=str(body.get("subject") or entry.subject),
            to=list(body.get("to") or []),
            cc=list(body.get("cc") or []),
        )
        text = f"{header}\n\n{quotable_text(body)}"
        subject = forward_subject(entry.subject)[:998]
        try:
            try:
                message = _send(owner, forward, subject, f"{text}{_left_out_note(left_out)}", carried)
            except ValidationError as exc:
                if not carried or "attachments" not in getattr(exc, "error_dict", {}):
                    raise
                # Over a limit of this instance (files per message, total size, the owner's quota):
                # the text goes on its own, saying why the files did not.
                why = " ".join(exc.message_dict["attachments"])
                left_out += [(item.name, why) for item in carried]
                message = _send(owner, forward, subject, f"{text}{_left_out_note(left_out)}", [])
        except SendingPaused as exc:
            _retry(forward, str(exc))
            return
        except ValidationError as exc:
            _fail(forward, entry, "; ".join(exc.messages))
            return
        transition(
            forward,
            FORWARD,
            AutoSendState.SENT,
            fields={"sent_message_id": message.pk, "next_attempt_at": None, "attempts": forward.attempts + 1},
        )


def _send(owner: User, forward: Forward, subject: str, text: str, files: list[AttachmentInput]) -> Message:
    with transaction.atomic():
        return send_message(
            sender=owner,
            to=[forward.to],
            subject=subject,
            text=text,
            attachments=files,
            auto_submitted="auto-forwarded",
        )


def _files(
    forward: Forward, entry: InboxEntry, content: ReadableContent
) -> tuple[list[AttachmentInput], list[tuple[str, str]]] | None:
    """The files to carry and (name, why) of those left out; None while some are still on their way.

    A received file not here yet gets this message's own fetch (created or
    joined, as a reader's download does), verified against the manifest.
    """
    carried: list[AttachmentInput] = []
    left_out: list[tuple[str, str]] = []
    pending: list[str] = []
    for item in content.attachments:
        if item.blocked:
            left_out.append((item.name, "files of its type could run as programs, so it is never fetched"))
            continue
        if item.blob is not None:
            carried.append(AttachmentInput(blob=item.blob, name=item.name, content_type=item.content_type))
            continue
        try:
            status = attachment_for_entry(entry=entry, index=item.index)
        except LookupError:
            left_out.append((item.name, "it is not available on this server"))
            continue
        if status.blob is not None:
            carried.append(AttachmentInput(blob=status.blob, name=item.name, content_type=item.content_type))
        elif status.in_flight or status.retrying:
            pending.append(item.name)
        else:
            problem = status.problem
            left_out.append((item.name, problem.message if problem is not None else "it could not be fetched"))
    if pending:
        if timezone.now() < _attachments_deadline(forward, entry):
            return None
        left_out += [(name, "its sender's server did not hand it over in time") for name in pending]
    return carried, left_out


def _attachments_deadline(forward: Forward, entry: InboxEntry) -> datetime:
    """Until when the forward waits for its files: the auto-send window, or the message's life if shorter."""
    deadline = forward.created_at + retry_window(FORWARD, AutoSendState.WAITING)
    if entry.remote is not None:
        deadline = min(deadline, entry.remote.expires_at)
    return deadline


def _left_out_note(left_out: list[tuple[str, str]]) -> str:
    if not left_out:
        return ""
    lines = "\n".join(f"- {name}: {why}" for name, why in left_out)
    return f"\n\n[Not attached to this forward:\n{lines}]"


def _wait_or_fail(forward: Forward, entry: InboxEntry) -> None:
    remote = entry.remote
    if remote is None or remote.state in _BODY_GONE or entry.state == EntryState.WITHDRAWN:
        _fail(forward, entry, "the message's body is no longer available from its sender")
        return
    if remote.state == FetchState.NOTIFIED:
        mailbox_services.request_fetch(remote_id=remote.pk)
    if timezone.now() > remote.expires_at:
        _fail(forward, entry, "the message expired at its sender before its body could be fetched")
        return
    transition(forward, FORWARD, AutoSendState.WAITING, fields={"next_attempt_at": timezone.now() + _BODY_WAIT})


def _fail(forward: Forward, entry: InboxEntry, reason: str) -> None:
    transition(forward, FORWARD, AutoSendState.FAILED, fields={"last_error": reason[:500], "next_attempt_at": None})
    mailbox_services.post_notice(
        owner=entry.owner,
        subject=f"Not forwarded: {entry.subject}"[:998],
        text=f"Your filter could not forward “{entry.subject}” from {entry.sender} to {forward.to}: {reason}.",
    )


def _retry(forward: Forward, error: str) -> None:
    attempts = forward.attempts + 1
    if timezone.now() - forward.created_at > retry_window(FORWARD, AutoSendState.WAITING):
        transition(forward, FORWARD, AutoSendState.FAILED, fields={"last_error": error[:500], "attempts": attempts})
        return
    delay = retry_delay(FORWARD, AutoSendState.WAITING, attempts=attempts)
    transition(
        forward,
        FORWARD,
        AutoSendState.WAITING,
        fields={"last_error": error[:500], "attempts": attempts, "next_attempt_at": timezone.now() + delay},
    )
    enqueue(forward_message_task, forward.pk, countdown=delay.total_seconds())
