"""Sending a draft with undo (outbox.states.DRAFT).

Send checks everything and schedules the draft for ``send_at``, after the undo
delay; Undo takes it back. The ``send_draft`` task (and the sweep that backs it
up) turns a draft whose ``send_at`` has passed into a Message, exactly once,
under a row lock; if a check fails by then, the draft is reopened with a notice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from celery import shared_task
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from attachments.services import AttachmentInput, check_new_files
from pushmail_site.jobs import enqueue, lock, overdue_ids
from pushmail_site.states import transition

from .complaints import pause_problem
from .compose import render_markdown
from .models import Draft, DraftAttachment, DraftState, Message
from .rules import check_characters, check_recipient_count, check_subject, parse_addresses
from .sending import issue_of_list, send_message
from .signals import notice_for_sender
from .states import DRAFT

log = logging.getLogger(__name__)

# Drafts already sent are kept this long so the page that sent them can say "Sent".
SENT_DRAFT_KEEP = timedelta(hours=1)


@shared_task(name="outbox.send_draft")
def send_draft_task(draft_id: int) -> None:
    send_draft(draft_id)


@dataclass
class Outgoing:
    """A draft's fields as send_message takes them, all checked."""

    to: list[str]
    cc: list[str]
    bcc: list[str]
    subject: str
    text: str
    html: str | None


def check_draft(draft: Draft) -> Outgoing:
    """Everything Send needs, checked at once; ValidationError lists every problem by field."""
    errors: dict[str, list[str]] = {}
    parsed = _recipients(draft, errors)
    html = render_markdown(draft.text) if draft.markdown else None
    _collect(errors, check_subject, draft.subject)
    _collect(errors, check_characters, subject=draft.subject, in_reply_to=draft.in_reply_to, text=draft.text, html=html)
    # The files are already counted in the mailbox's usage: only an overfull mailbox stops the send.
    files = [(a.name, a.size) for a in draft.attachments.all()]
    _collect(errors, check_new_files, user=draft.owner, files=files, quota_extra=0)
    paused = pause_problem(draft.owner)
    if paused is not None:
        errors.setdefault("__all__", []).append(paused)
    if errors:
        raise ValidationError(errors)
    return Outgoing(
        to=parsed["to"],
        cc=parsed["cc"],
        bcc=parsed["bcc"],
        subject=draft.subject,
        text=draft.text,
        html=html,
    )


def _recipients(draft: Draft, errors: dict[str, list[str]]) -> dict[str, list[str]]:
    """To, Cc and Bcc parsed; their problems (and a missing or excessive count) added to ``errors``."""
    parsed: dict[str, list[str]] = {}
    for name in ("to", "cc", "bcc"):
        try:
            parsed[name] = parse_addresses(getattr(draft, name), name)
        except ValidationError as exc:
            errors.update(exc.message_dict)
            parsed[name] = []
    if not errors:
        _collect(errors, check_recipient_count, len(set(parsed["to"]) | set(parsed["cc"]) | set(parsed["bcc"])))
    return parsed


def _collect(errors: dict[str, list[str]], check: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """Run one check; its problems join ``errors`` (a field already found wrong keeps its first problem)."""
    try:
        check(*args, **kwargs)
    except ValidationError as exc:
        for name, messages in exc.message_dict.items():
            errors.setdefault(name, messages)


def queue_send(*, draft: Draft) -> Draft:
    """Check the draft, then send it after the undo delay (``send_at``)."""
    with transaction.atomic():
        # Only the draft row is locked (no joins): FOR UPDATE would lock the owner and domain rows too.
        current = lock(Draft.objects.filter(pk=draft.pk), skip_locked=False).get()
        if current.state == DraftState.SENT:
            raise ValidationError({"__all__": ["This message has already been sent."]})
        if current.state == DraftState.SCHEDULED:
            return current
        check_draft(current)
        delay = settings.PUSHMAIL_UNDO_SEND_SECONDS
        send_at = timezone.now() + timedelta(seconds=delay)
        transition(current, DRAFT, DraftState.SCHEDULED, fields={"send_at": send_at, "updated_at": timezone.now()})
        enqueue(send_draft_task, current.pk, countdown=delay)
    return current


def undo_send(*, draft: Draft) -> bool:
    """Stop a queued send; False when the message has already gone out."""
    with transaction.atomic():
        current = lock(Draft.objects.filter(pk=draft.pk), skip_locked=False).first()
        if current is None or current.state == DraftState.SENT:
            return False
        if current.state == DraftState.SCHEDULED:
            transition(current, DRAFT, DraftState.DRAFT, fields={"send_at": None, "updated_at": timezone.now()})
        return True


def send_draft(draft_id: int) -> Message | None:
    """Turn a due draft into a sent message, once: the task body, safe to repeat."""
    with transaction.atomic():
        draft = (
            # No select_related: FOR UPDATE would also lock the joined owner and domain rows, and
            # skip_locked would then skip this draft while another of the domain's drafts is sending.
            lock(Draft.objects.all())
            .filter(pk=draft_id, state=DraftState.SCHEDULED, send_at__lte=timezone.now())
            .first()
        )
        if draft is None:
            return None
        try:
            message = _send(draft, check_draft(draft))
        except ValidationError as exc:
            # Something changed since Send (a limit, the quota): reopen the draft rather than send half.
            _reopen(draft, exc)
            return None
        transition(
            draft,
            DRAFT,
            DraftState.SENT,
            fields={"sent_message": message, "send_at": None, "updated_at": timezone.now()},
        )
    return message


def _send(draft: Draft, outgoing: Outgoing) -> Message:
    """send_message with the draft's files, which count as the message's from then on."""
    rows = list(draft.attachments.select_related("blob"))
    if issue_of_list.answered:
        issue = issue_of_list(
            sender=draft.owner,
            to=outgoing.to,
            cc=outgoing.cc,
            bcc=outgoing.bcc,
            subject=outgoing.subject,
            text=outgoing.text,
            html=outgoing.html,
            files=len(rows),
        )
        if issue is not None:
            return issue
    with transaction.atomic():
        # The draft's rows go first, so that send_message's quota check counts the files once;
        # undone if it refuses.
        DraftAttachment.objects.filter(draft=draft).delete()
        return send_message(
            sender=draft.owner,
            to=outgoing.to,
            cc=outgoing.cc,
            bcc=outgoing.bcc,
            subject=outgoing.subject,
            text=outgoing.text,
            html=outgoing.html,
            in_reply_to=draft.in_reply_to,
            attachments=[AttachmentInput(blob=row.blob, name=row.name, content_type=row.content_type) for row in rows],
        )


def _reopen(draft: Draft, exc: ValidationError) -> None:
    """Back to Drafts, and a notice in the inbox saying why it was not sent."""
    log.warning("draft %s not sent: %s", draft.pk, exc.messages)
    transition(draft, DRAFT, DraftState.DRAFT, fields={"send_at": None, "updated_at": timezone.now()})
    notice_for_sender.send(
        sender=Draft,
        owner=draft.owner,
        subject=f"Not sent: {draft.subject or '(no subject)'}"[:998],
        text="Your message was not sent and is back in Drafts:\n\n" + "".join(f"  {m}\n" for m in exc.messages),
    )


def send_due_drafts(*, limit: int = 1000) -> int:
    """Queue every draft whose send time has passed (a lost task still sends); drop old sent drafts."""
    due = overdue_ids(
        Draft.objects.filter(state=DraftState.SCHEDULED), task=send_draft_task, limit=limit, due_field="send_at"
    )
    for draft_id in due:
        enqueue(send_draft_task, draft_id)
    Draft.objects.filter(state=DraftState.SENT, updated_at__lt=timezone.now() - SENT_DRAFT_KEEP).delete()
    return len(due)
