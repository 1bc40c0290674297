"""Sender-side tasks: thin wrappers over services, taking ids."""

from celery import shared_task

from . import drafts, services


@shared_task(name="outbox.deliver_notification")
def deliver_notification(delivery_id: int) -> None:
    services.deliver_notification(delivery_id)


@shared_task(name="outbox.send_withdrawal")
def send_withdrawal(delivery_id: int) -> None:
    services.send_withdrawal(delivery_id)


@shared_task(name="outbox.requeue_due")
def requeue_due() -> int:
    return services.requeue_due()


@shared_task(name="outbox.mark_fetched_by_all")
def mark_fetched_by_all() -> int:
    return services.mark_fetched_by_all()


@shared_task(name="outbox.send_draft")
def send_draft(draft_id: int) -> None:
    drafts.send_draft(draft_id)


@shared_task(name="outbox.send_due_drafts")
def send_due_drafts() -> int:
    return drafts.send_due_drafts()
