"""Withdrawing a sent message: fetches answer 410 at once, and every domain that may know of it is told.

Each told domain gets a Withdrawal row that ``send_withdrawal`` claims, posts and
moves along ``outbox.states.WITHDRAWAL``, with the same backoff as a notification.
"""

from __future__ import annotations

from datetime import datetime

from celery import shared_task
from django.db import transaction
from django.utils import timezone

from federation import client, discovery, payloads
from pushmail_site.jobs import claim_until, enqueue, lock, overdue_ids
from pushmail_site.states import retry_delay, retry_window, transition, transition_rows

from .delivery import LEGACY_REASON, WITHDRAWN_FIRST
from .models import Delivery, DeliveryState, Message, Withdrawal, WithdrawalState
from .reach import by_smtp
from .signals import message_withdrawn
from .states import DELIVERY, WITHDRAWAL


@shared_task(name="outbox.send_withdrawal")
def send_withdrawal_task(withdrawal_id: int) -> None:
    send_withdrawal(withdrawal_id)


def queue_withdrawals(ids: list[int]) -> None:
    """Wake a worker for each withdrawal once the transaction commits."""
    for withdrawal_id in ids:
        enqueue(send_withdrawal_task, withdrawal_id)


def requeue_due_withdrawals(*, limit: int = 1000) -> int:
    """Queue every withdrawal that is due, whatever the broker holds."""
    due = overdue_ids(Withdrawal.objects.filter(state=WithdrawalState.PENDING), task=send_withdrawal_task, limit=limit)
    queue_withdrawals(due)
    return len(due)


def withdraw_message(*, message: Message) -> Message:
    """Withdraw a sent message: fetches answer 410 and every recipient domain is told."""
    with transaction.atomic():
        message = Message.objects.select_for_update().get(pk=message.pk)
        if message.withdrawn_at:
            return message
        now = timezone.now()
        message.withdrawn_at = now
        message.save(update_fields=["withdrawn_at"])
        message_withdrawn.send(sender=Message, message=message)
        _cancel_unsent_notifications(message)
        queue_withdrawals(_create_withdrawals(message, now))
    return message


def _cancel_unsent_notifications(message: Message) -> None:
    """Not yet notified: nothing to take back once the notification is cancelled."""
    transition_rows(
        Delivery.objects.filter(message=message, local=False, attempts=0),
        DELIVERY,
        DeliveryState.FAILED,
        fields={"last_error": WITHDRAWN_FIRST, "next_attempt_at": None},
    )


def _create_withdrawals(message: Message, now: datetime) -> list[int]:
    """A withdrawal for every domain that may have been told; returns those to send."""
    told = [
        delivery
        for delivery in Delivery.objects.filter(message=message)
        .exclude(local=False, state=DeliveryState.FAILED, attempts=0)
        .order_by("domain")
        if not by_smtp(delivery)  # a copy sent by ordinary email is the recipient's: nothing to tell
    ]
    withdrawals = Withdrawal.objects.bulk_create(
        Withdrawal(message=message, domain=d.domain, next_attempt_at=None if d.local else now) for d in told
    )
    # A domain hosted here had its entries withdrawn in this transaction.
    local = {d.domain for d in told if d.local}
    transition_rows(
        Withdrawal.objects.filter(message=message, domain__in=local),
        WITHDRAWAL,
        WithdrawalState.SENT,
        fields={"acknowledged_at": now},
    )
    return [w.pk for w in withdrawals if w.domain not in local]


def send_withdrawal(withdrawal_id: int) -> None:
    """Post one signed withdrawal to one domain; idempotent."""
    withdrawal = _claim_withdrawal(withdrawal_id)
    if withdrawal is None:
        return
    message = withdrawal.message
    try:
        instance = discovery.discover(withdrawal.domain)
        if instance is None:
            _finish_withdrawal(withdrawal, WithdrawalState.SENT, error=LEGACY_REASON)
            return
        client.send_withdrawal(
            instance=instance,
            sender_domain=message.sender.domain.name,
            withdrawal=payloads.Withdrawal(global_id=message.id, sender=message.sender_address),
        )
    except (discovery.DiscoveryError, client.PeerError) as exc:
        _withdrawal_failed_attempt(withdrawal, exc)
        return
    _finish_withdrawal(withdrawal, WithdrawalState.SENT, acknowledged_at=timezone.now())


def _claim_withdrawal(withdrawal_id: int) -> Withdrawal | None:
    with transaction.atomic():
        withdrawal = (
            lock(Withdrawal.objects.select_related("message", "message__sender__domain"))
            .filter(pk=withdrawal_id, state=WithdrawalState.PENDING, next_attempt_at__lte=timezone.now())
            .first()
        )
        if withdrawal is None:
            return None
        withdrawal.attempts += 1
        withdrawal.next_attempt_at = claim_until()
        withdrawal.save(update_fields=["attempts", "next_attempt_at"])
        return withdrawal


def _finish_withdrawal(
    withdrawal: Withdrawal, state: str, *, error: str = "", acknowledged_at: datetime | None = None
) -> None:
    fields: dict[str, object] = {"last_error": error[:500], "next_attempt_at": None}
    if acknowledged_at is not None:
        fields["acknowledged_at"] = acknowledged_at
    transition(withdrawal, WITHDRAWAL, state, fields=fields)


def _withdrawal_failed_attempt(withdrawal: Withdrawal, exc: discovery.DiscoveryError | client.PeerError) -> None:
    now = timezone.now()
    started = withdrawal.message.withdrawn_at or now
    if not exc.retryable or now >= started + retry_window(WITHDRAWAL, WithdrawalState.PENDING):
        _finish_withdrawal(withdrawal, WithdrawalState.FAILED, error=str(exc))
        return
    delay = retry_delay(WITHDRAWAL, WithdrawalState.PENDING, attempts=withdrawal.attempts, retry_after=exc.retry_after)
    transition(
        withdrawal,
        WITHDRAWAL,
        WithdrawalState.PENDING,
        fields={"next_attempt_at": now + delay, "last_error": str(exc)[:500]},
    )
    enqueue(send_withdrawal_task, withdrawal.pk, countdown=delay.total_seconds())
