"""Complaints about mail sent from here, and senders paused because of them (docs/protocol.md §5.8).

A recipient domain that judges one of our messages spam reports it (federation
endpoint ``POST reports``, hook ``federation.inbound.accept_report``); each
domain's complaint about a message is one Complaint row, retracted when the
domain overturns its verdict. A sender whose complaints pass either threshold
has sending paused, and is told, as are their domain's admins:

- **rate**: the complaints on their last ``PUSHMAIL_COMPLAINT_WINDOW`` (1000)
  accepted recipients pass ``PUSHMAIL_COMPLAINT_RATE`` (0.3%) of them. A sender
  with fewer recipients so far is counted as if they had a full window, so the
  first complaints of a new sender do not make a rate of 10% (with the
  defaults, four complaints are needed, however few the recipients);
- **day**: ``PUSHMAIL_COMPLAINTS_PER_DAY`` (10) complaints received in 24 hours.

Only complaints received after the sender's last lifted pause count: lifting a
pause forgives what came before it. A paused sender cannot send from the
webmail, the API or a scheduled draft until a domain admin lifts the pause.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.models import User
from federation import inbound, payloads
from pushmail_site.jobs import lock

from .models import Complaint, Delivery, DeliveryState, Message, Recipient, RecipientStatus, SendingPause
from .signals import notice_for_sender


class SendingPaused(PermissionDenied):
    """The sender may not send now: the message says why. The user API answers it ``403 sending_paused``."""

    default_code = "sending_paused"


@dataclass(frozen=True)
class Standing:
    """A sender's complaints as the thresholds count them."""

    complaints: int  # in the rate window
    recipients: int  # accepted recipients in the window (at most PUSHMAIL_COMPLAINT_WINDOW)
    today: int  # received in the last 24 hours

    @property
    def rate(self) -> float:
        return self.complaints / max(self.recipients, settings.PUSHMAIL_COMPLAINT_WINDOW, 1)

    def reason(self) -> str | None:
        """Why this standing pauses sending, or None when it does not."""
        if self.today >= settings.PUSHMAIL_COMPLAINTS_PER_DAY:
            return f"{self.today} spam complaints about your mail in the last 24 hours"
        if self.rate > settings.PUSHMAIL_COMPLAINT_RATE:
            return (
                f"{self.complaints} spam complaints over your last {self.recipients} recipients "
                f"(over {settings.PUSHMAIL_COMPLAINT_RATE:.1%} of {settings.PUSHMAIL_COMPLAINT_WINDOW})"
            )
        return None


# --- Sending checks ------------------------------------------------------------------------------


def active_pause(user: User) -> SendingPause | None:
    return SendingPause.objects.filter(user=user, lifted_at__isnull=True).first()


def pause_problem(user: User) -> str | None:
    """What to tell a paused sender who tries to send, or None when they may send."""
    pause = active_pause(user)
    if pause is None:
        return None
    return (
        f"Sending from {user.email} is paused since {pause.paused_at:%Y-%m-%d %H:%M} UTC: {pause.reason}. "
        "An admin of your domain can lift the pause."
    )


def check_not_paused(user: User) -> None:
    """Raise SendingPaused when the user's sending is paused."""
    problem = pause_problem(user)
    if problem is not None:
        raise SendingPaused(problem)


# --- Reports from recipient domains -----------------------------------------------------------------


@transaction.atomic
def accept_report(*, reporter: str, report: payloads.Report) -> inbound.ReportResult:
    """Record a recipient domain's verdict on one of our messages; idempotent.

    The same report again changes nothing (``duplicate``); one older than the
    last applied for that domain and message is ignored (``superseded``), so
    reports that cross in the network end in the order they were made.
    """
    message = Message.objects.filter(pk=report.global_id).select_related("sender").first()
    if message is None:
        raise inbound.UnknownMessage()
    accepted = _readers_at(message, reporter)
    if accepted == 0:
        raise inbound.NotARecipient()
    spam = report.verdict == "spam"
    weight = min(max(report.reports, 1), accepted)
    now = timezone.now()
    complaint = _locked_complaint(message, reporter)
    if complaint is None:
        complaint = _create_complaint(message, reporter, report, weight=weight, retracted_at=None if spam else now)
        if complaint is not None:
            if spam:
                _pause_if_over(message.sender)
            return _result("recorded", complaint)
        complaint = _locked_complaint(message, reporter)  # made by a concurrent report meanwhile
        assert complaint is not None
    if report.reported_at < complaint.reported_at:
        return _result("superseded", complaint)
    if spam == (complaint.retracted_at is None):
        return _result("duplicate", complaint)
    complaint.reported_at = report.reported_at
    complaint.reports = report.reports
    complaint.weight = weight
    complaint.received_at = now
    complaint.retracted_at = None if spam else now
    complaint.save(update_fields=["reported_at", "reports", "weight", "received_at", "retracted_at"])
    if spam:
        _pause_if_over(message.sender)
    return _result("recorded", complaint)


def _readers_at(message: Message, domain: str) -> int:
    """How many readers ``domain`` accepted the message for: a list's issue has no recipients, the domain
    told how many of its subscribers got it (docs/protocol.md §13.3)."""
    if message.list_address:
        delivered = (
            Delivery.objects.filter(message=message, domain=domain, state=DeliveryState.NOTIFIED)
            .values_list("delivered", flat=True)
            .first()
        )
        return delivered or 0
    return Recipient.objects.filter(message=message, domain=domain, status=RecipientStatus.ACCEPTED).count()


def _locked_complaint(message: Message, domain: str) -> Complaint | None:
    return lock(Complaint.objects.filter(message=message, domain=domain), skip_locked=False).first()


def _create_complaint(
    message: Message, domain: str, report: payloads.Report, *, weight: int, retracted_at: datetime | None
) -> Complaint | None:
    try:
        with transaction.atomic():
            return Complaint.objects.create(
                message=message,
                sender=message.sender,
                domain=domain,
                reports=report.reports,
                weight=weight,
                reported_at=report.reported_at,
                retracted_at=retracted_at,
            )
    except IntegrityError:
        return None


def _result(status: str, complaint: Complaint) -> inbound.ReportResult:
    return inbound.ReportResult(status=status, complaint="retracted" if complaint.retracted_at else "active")


# --- Thresholds, pauses and lifts -------------------------------------------------------------------


def standing(user: User) -> Standing:
    """The user's complaints as the thresholds count them (only those since their last lifted pause)."""
    window = settings.PUSHMAIL_COMPLAINT_WINDOW
    since = (
        SendingPause.objects.filter(user=user, lifted_at__isnull=False)
        .order_by("-lifted_at")
        .values_list("lifted_at", flat=True)
        .first()
    )
    complaints = Complaint.objects.filter(sender=user, retracted_at__isnull=True)
    if since is not None:
        complaints = complaints.filter(received_at__gt=since)
    recent = Recipient.objects.filter(message__sender=user, status=RecipientStatus.ACCEPTED).order_by(
        "-message__date", "-pk"
    )[:window]
    recipients = recent.count()
    in_window = complaints.filter(message_id__in=recent.values("message_id"))
    counted = in_window.aggregate(n=Sum("weight"))["n"] or 0
    day = complaints.filter(received_at__gte=timezone.now() - timedelta(days=1)).aggregate(n=Sum("weight"))["n"] or 0
    return Standing(complaints=counted, recipients=recipients, today=day)


def _pause_if_over(user: User) -> SendingPause | None:
    """Pause the user's sending if their complaints now pass a threshold; None when they do not."""
    if active_pause(user) is not None:
        return None
    reason = standing(user).reason()
    if reason is None:
        return None
    try:
        with transaction.atomic():
            pause = SendingPause.objects.create(user=user, reason=reason[:300])
    except IntegrityError:  # paused by a concurrent report
        return None
    _tell_about_pause(user, pause)
    return pause


def _tell_about_pause(user: User, pause: SendingPause) -> None:
    notice_for_sender.send(
        sender=SendingPause,
        owner=user,
        subject="Sending from your address is paused",
        text=(
            f"Recipients at other instances reported your mail as spam: {pause.reason}.\n\n"
            "Until an admin of your domain lifts the pause, messages you send (from the webmail, "
            "the API or a scheduled draft) are refused. Your mailbox works as before otherwise.\n"
        ),
    )
    admins = User.objects.filter(domain_id=user.domain_id, is_staff=True, is_active=True).exclude(pk=user.pk)
    for admin in admins:
        notice_for_sender.send(
            sender=SendingPause,
            owner=admin,
            subject=f"Sending paused for {user.email}",
            text=(
                f"Sending from {user.email} was paused: {pause.reason}.\n\n"
                "To let them send again, lift the pause in the admin (Outbox, Sending pauses, "
                '"Lift the pause").\n'
            ),
        )


def lift_pause(*, user: User, by: User | None) -> bool:
    """A domain admin lets a paused sender send again; False when they were not paused.

    Complaints received before the lift no longer count towards the next pause.
    """
    with transaction.atomic():
        pause = lock(SendingPause.objects.filter(user=user, lifted_at__isnull=True), skip_locked=False).first()
        if pause is None:
            return False
        pause.lifted_at, pause.lifted_by = timezone.now(), by
        pause.save(update_fields=["lifted_at", "lifted_by"])
    return True
