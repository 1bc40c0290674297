"""The vacation reply: once per correspondent per period, never to lists or automated mail (RFC 3834).

A reply owed is a ``VacationReply`` row, created with the message that asks for it;
the unique constraint on (owner, correspondent, period) makes it once per period
whatever arrives at the same time. A worker sends it through the normal send path
(another Pushmail instance, this one, or SMTP) marked ``Auto-Submitted: auto-replied``.
"""

from __future__ import annotations

import re
from datetime import date

from celery import shared_task
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import User
from mailbox.models import InboxEntry
from outbox.complaints import SendingPaused
from outbox.sending import send_message
from pushmail_site.jobs import enqueue, lock
from pushmail_site.states import retry_delay, retry_window, transition

from .facts import Arrival
from .models import AutoSendState, Vacation, VacationReply
from .states import VACATION_REPLY

# Local parts of addresses that no person reads (RFC 3834 §2: do not answer them).
_NO_REPLY = re.compile(
    r"^(no-?reply|do-?not-?reply|noreply-.*|.*-noreply|mailer-daemon|postmaster|bounces?(\+.*|-.*)?|"
    r"listserv|majordomo|.*-(request|bounces|owner)|owner-.*|notifications?)$"
)


def never_answered(arrival: Arrival, *, owner_address: str) -> str:
    """Why a message gets no vacation reply, or "" when it gets one (if first in the period)."""
    local = arrival.sender.partition("@")[0]
    if not arrival.sender or arrival.sender == owner_address:
        return "it is from you"
    if arrival.automated:
        return f"it is automated mail ({arrival.automated})"
    if arrival.list_id:
        return "it came through a mailing list"
    if _NO_REPLY.match(local):
        return "its sender does not read replies"
    if owner_address not in arrival.recipients:
        return "you are not among its To and Cc recipients"
    return ""


def in_period(vacation: Vacation, today: date | None = None) -> bool:
    today = today or timezone.localdate()
    if not vacation.enabled:
        return False
    if vacation.starts_on and today < vacation.starts_on:
        return False
    return not (vacation.ends_on and today > vacation.ends_on)


def owe_reply(*, vacation: Vacation, entry: InboxEntry, arrival: Arrival) -> VacationReply | None:
    """Record (once per correspondent per period) the reply this arrival asks for, and queue it."""
    owner_address = entry.owner.email.lower()
    if not in_period(vacation) or vacation.period_started_at is None:
        return None
    if never_answered(arrival, owner_address=owner_address):
        return None
    try:
        with transaction.atomic():
            reply = VacationReply.objects.create(
                owner_id=entry.owner_id,
                correspondent=arrival.sender,
                period_started_at=vacation.period_started_at,
                in_reply_to=arrival.message_id,
                subject=arrival.subject,
                next_attempt_at=timezone.now(),
            )
    except IntegrityError:
        return None  # answered already in this period
    enqueue(send_vacation_reply_task, reply.pk)
    return reply


@shared_task(name="mailsettings.send_vacation_reply")
def send_vacation_reply_task(reply_id: int) -> None:
    send_vacation_reply(reply_id)


def reply_subject(vacation: Vacation, original: str) -> str:
    if vacation.subject:
        return vacation.subject
    return f"Auto: {original}".strip() if original else "Auto: away"


def send_vacation_reply(reply_id: int) -> None:
    """Send one owed reply, if it is still owed; retried with backoff if sending fails for now."""
    with transaction.atomic():
        reply = lock(VacationReply.objects.filter(pk=reply_id, state=AutoSendState.WAITING)).first()
        if reply is None:
            return  # sent, settled, or another worker has it
        owner = User.objects.select_related("domain").get(pk=reply.owner_id)
        vacation = Vacation.objects.filter(owner=owner).first()
        if vacation is None or not in_period(vacation) or vacation.period_started_at != reply.period_started_at:
            transition(reply, VACATION_REPLY, AutoSendState.SKIPPED, fields={"next_attempt_at": None})
            return
        try:
            with transaction.atomic():
                message = send_message(
                    sender=owner,
                    to=[reply.correspondent],
                    subject=reply_subject(vacation, reply.subject)[:200],
                    text=vacation.text,
                    in_reply_to=reply.in_reply_to,
                    auto_submitted="auto-replied",
                )
        except SendingPaused as exc:
            _retry(reply, str(exc))
            return
        except ValidationError as exc:
            transition(
                reply,
                VACATION_REPLY,
                AutoSendState.FAILED,
                fields={"last_error": "; ".join(exc.messages)[:500], "next_attempt_at": None},
            )
            return
        transition(
            reply,
            VACATION_REPLY,
            AutoSendState.SENT,
            fields={"sent_message_id": message.pk, "next_attempt_at": None, "attempts": reply.attempts + 1},
        )


def _retry(reply: VacationReply, error: str) -> None:
    attempts = reply.attempts + 1
    if timezone.now() - reply.created_at > retry_window(VACATION_REPLY, AutoSendState.WAITING):
        transition(
            reply, VACATION_REPLY, AutoSendState.FAILED, fields={"last_error": error[:500], "attempts": attempts}
        )
        return
    delay = retry_delay(VACATION_REPLY, AutoSendState.WAITING, attempts=attempts)
    transition(
        reply,
        VACATION_REPLY,
        AutoSendState.WAITING,
        fields={"last_error": error[:500], "attempts": attempts, "next_attempt_at": timezone.now() + delay},
    )
    enqueue(send_vacation_reply_task, reply.pk, countdown=delay.total_seconds())


def save_vacation(
    *, user: User, enabled: bool, subject: str, text: str, starts_on: date | None, ends_on: date | None
) -> Vacation:
    """Turn the vacation reply on or off, with its message and dates.

    Turning it on (or changing its dates) starts a new period: each correspondent
    is answered once again. Raises ValidationError naming the field at fault.
    """
    errors: dict[str, str] = {}
    if enabled and not text.strip():
        errors["text"] = "Write the reply people get while you are away."
    if starts_on and ends_on and ends_on < starts_on:
        errors["ends_on"] = "The last day is before the first day."
    elif enabled and ends_on and ends_on < timezone.localdate():
        errors["ends_on"] = "The last day has passed already: choose a later one, or leave it empty."
    if errors:
        raise ValidationError(errors)
    vacation, _ = Vacation.objects.get_or_create(owner=user)
    new_period = enabled and (not vacation.enabled or vacation.starts_on != starts_on or vacation.ends_on != ends_on)
    vacation.enabled, vacation.subject, vacation.text = enabled, subject.strip(), text
    vacation.starts_on, vacation.ends_on = starts_on, ends_on
    fields = ["enabled", "subject", "text", "starts_on", "ends_on"]
    if new_period:
        vacation.period_started_at = timezone.now()
        fields.append("period_started_at")
    vacation.save(update_fields=fields)
    return vacation


def vacation_for(*, user: User) -> Vacation:
    """The user's vacation reply settings (off, empty, until saved)."""
    return Vacation.objects.filter(owner=user).first() or Vacation(owner=user)


__all__ = ["never_answered", "owe_reply", "save_vacation", "send_vacation_reply", "vacation_for"]
