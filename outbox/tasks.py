"""Sender-side tasks, taking ids. Each worker's task sits beside the function it wraps
(so that the function can queue its own next attempt); the sweeps are here."""

from celery import shared_task

from . import services
from .delivery import deliver_notification_task as deliver_notification
from .draft_sending import send_draft_task as send_draft
from .withdrawal import send_withdrawal_task as send_withdrawal


@shared_task(name="outbox.requeue_due")
def requeue_due() -> int:
    return services.requeue_due()


@shared_task(name="outbox.mark_fetched_by_all")
def mark_fetched_by_all() -> int:
    return services.mark_fetched_by_all()


@shared_task(name="outbox.send_due_drafts")
def send_due_drafts() -> int:
    return services.send_due_drafts()


__all__ = [
    "deliver_notification",
    "mark_fetched_by_all",
    "requeue_due",
    "send_draft",
    "send_due_drafts",
    "send_withdrawal",
]
