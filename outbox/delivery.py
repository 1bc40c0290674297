"""The delivery worker: one signed notification per message and remote recipient domain.

``deliver_notification`` claims its Delivery row, posts the notification, and
moves the row along ``outbox.states.DELIVERY``: notified with every recipient's
answer, retrying with backoff while the window is open, or failed (with a
notice to the sender). Safe to repeat: the receiver is idempotent.

A domain that has no Pushmail instance gets the message itself by SMTP
(``transport`` becomes smtp, outbox/smtp.py): the same states, window and
backoff, with each recipient answered by the receiving mail server (a 2xx
accepts, a 5xx refuses at once, a 4xx waits for the next attempt).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import defaultdict
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from federation import client, discovery, payloads
from federation.client import BatchOutcome
from pushmail_site import logs
from pushmail_site.jobs import claim_until, enqueue, lock, overdue_ids
from pushmail_site.states import retry_delay, retry_window, transition

from .bodies import manifest_of
from .models import Delivery, DeliveryState, Message, Recipient, RecipientStatus, Transport
from .signals import notice_for_sender
from .smtp import SmtpAnswer, SmtpFailure, send_by_smtp, smtp_enabled
from .states import DELIVERY

LEGACY_REASON = "legacy domain"
WITHDRAWN_FIRST = "withdrawn before notification"

log = logging.getLogger(__name__)


@shared_task(name="outbox.deliver_notification")
def deliver_notification_task(delivery_id: int) -> None:
    deliver_notification(delivery_id)


def queue_deliveries(ids: list[int]) -> None:
    """Wake a worker for each delivery once the transaction commits."""
    for delivery_id in ids:
        enqueue(deliver_notification_task, delivery_id)


def requeue_due_deliveries(*, limit: int = 1000) -> int:
    """Queue every notification that is due, whatever the broker holds."""
    waiting = Delivery.objects.filter(local=False, state__in=[DeliveryState.PENDING, DeliveryState.RETRYING])
    due = overdue_ids(waiting, task=deliver_notification_task, limit=limit)
    queue_deliveries(due)
    return len(due)


def deliver_notification(delivery_id: int) -> None:
    """Post one signed notification to one domain; idempotent, safe to repeat."""
    delivery = _claim_delivery(delivery_id)
    if delivery is None:
        return
    with logs.about(message_id=delivery.message_id, peer=delivery.domain):
        _deliver(delivery)


def _deliver(delivery: Delivery) -> None:
    if delivery.message.withdrawn_at:
        _finish_delivery(delivery, state=DeliveryState.FAILED, error=WITHDRAWN_FIRST)
        return
    if delivery.transport == Transport.SMTP:
        _deliver_by_smtp(delivery)
        return
    if delivery.message.list_address:
        _deliver_list_issue(delivery)
        return
    try:
        if _delivered_in_batch(delivery):
            return
        results = _post_notification(delivery)
    except (discovery.DiscoveryError, client.PeerError) as exc:
        log.info("notification attempt %d failed: %s", delivery.attempts, exc)
        _delivery_failed_attempt(delivery, str(exc), retryable=exc.retryable, retry_after=exc.retry_after)
        return
    if results is None:
        if smtp_enabled():
            delivery.transport = Transport.SMTP
            delivery.save(update_fields=["transport"])
            _deliver_by_smtp(delivery)
        else:
            _reject_all(delivery, LEGACY_REASON)
        return
    accepted = sum(1 for answer in results.values() if answer.get("status") == "accepted")
    log.info("notification delivered: %d of %d recipients accepted", accepted, len(results))
    _record_answers(delivery, results)


def _deliver_list_issue(delivery: Delivery) -> None:
    """One list notification to the domain (docs/protocol.md §13.3): it delivers to its own subscribers.

    A refusal (nobody subscribed there any more, a legacy domain) fails the delivery without a notice:
    the list's subscribers are the receiving domain's to decide.
    """
    try:
        instance = discovery.discover(delivery.domain)
        if instance is None:
            _finish_delivery(delivery, state=DeliveryState.FAILED, error=LEGACY_REASON)
            return
        delivered = client.send_list_notification(instance=instance, notification=list_notification_for(delivery))
    except (discovery.DiscoveryError, client.PeerError) as exc:
        _delivery_failed_attempt(delivery, str(exc), retryable=exc.retryable, retry_after=exc.retry_after)
        return
    _finish_delivery(delivery, state=DeliveryState.NOTIFIED, error="", delivered=delivered)


def list_notification_for(delivery: Delivery) -> payloads.ListNotification:
    """The notification of a list's issue to one subscriber domain: the list and the domain, never its subscribers.

    Naming the domain lets an instance that hosts many subscriber domains deliver each request to that
    domain's subscribers alone, so each of the one-per-domain requests costs what its own domain holds.
    """
    message = delivery.message
    return payloads.ListNotification(
        global_id=message.id,
        list_address=message.list_address,
        message_id=message.message_id,
        subject=message.subject,
        date=message.date,
        size=message.size,
        digest=message.digest,
        expires=message.expires_at,
        list_name=message.sender_name,
        attachments=tuple(payloads.parse_manifest(manifest_of(message))),
        domain=delivery.domain,
    )


def _deliver_by_smtp(delivery: Delivery) -> None:
    """Send the message to the recipients still waiting at a domain without Pushmail, and record each answer."""
    waiting = list(
        Recipient.objects.filter(message=delivery.message, domain=delivery.domain, status=RecipientStatus.PENDING)
        .order_by("pk")
        .values_list("address", flat=True)
    )
    if not waiting:
        _finish_delivery(delivery, state=DeliveryState.NOTIFIED, error="")
        return
    # An issue of a list is a copy per subscriber: a big domain's are sent a batch per claim, so that
    # no attempt outlives its claim (PUSHMAIL_CLAIM_SECONDS) and is taken up twice.
    more = bool(delivery.message.list_address) and len(waiting) > settings.PUSHMAIL_LIST_SMTP_BATCH
    if more:
        waiting = waiting[: settings.PUSHMAIL_LIST_SMTP_BATCH]
    try:
        answers = send_by_smtp(delivery=delivery, recipients=waiting)
    except SmtpFailure as exc:
        _delivery_failed_attempt(delivery, str(exc), retryable=exc.retryable, retry_after=None)
        return
    _record_smtp_answers(delivery, waiting, answers, more=more)


def reopen_smtp_recipients(delivery_ids: list[int]) -> None:
    """An operator's "retry now" of deliveries by SMTP: every recipient there not yet taken is tried again."""
    for message_id, domain in Delivery.objects.filter(pk__in=delivery_ids, transport=Transport.SMTP).values_list(
        "message_id", "domain"
    ):
        Recipient.objects.filter(message_id=message_id, domain=domain).exclude(status=RecipientStatus.ACCEPTED).update(
            status=RecipientStatus.PENDING, reason=""
        )


def _record_smtp_answers(
    delivery: Delivery, waiting: list[str], answers: dict[str, SmtpAnswer], *, more: bool = False
) -> None:
    """2xx: accepted; 5xx: refused now, with a notice; 4xx (or no answer): tried again within the window.

    ``more``: recipients are still waiting beyond this batch; with none deferred, the next batch is due
    at once (a 4xx puts the whole domain off until its retry: often the server asking to slow down).

    The recipients are updated a statement per distinct answer, not one per recipient: an issue of a
    list sends a copy to each of thousands of subscribers at a domain. A list's owner gets no notice
    of a refused subscriber (as for a domain refusing a list notification, §13.3): the answer stays
    on the recipient's row, and ``delivered`` counts the subscribers whose server took it.
    """
    refused: list[tuple[str, str]] = []
    deferred: list[str] = []
    replies: list[str] = []
    settled: dict[tuple[str, str], list[str]] = defaultdict(list)
    for address in waiting:
        answer = answers.get(address)
        if answer is None or not (answer.accepted or answer.permanent):
            deferred.append(f"{address}: {answer or 'no answer'}")
            continue
        if answer.accepted:
            replies.append(str(answer))
            settled[(RecipientStatus.ACCEPTED, "")].append(address)
        else:
            refused.append((address, str(answer)))
            settled[(RecipientStatus.REJECTED, str(answer)[:300])].append(address)
    is_list = bool(delivery.message.list_address)
    with transaction.atomic():
        for (status, reason), addresses in settled.items():
            Recipient.objects.filter(message=delivery.message, address__in=addresses).update(
                status=status, reason=reason
            )
        fields = []
        if replies:
            delivery.smtp_reply = replies[-1][:500]
            fields.append("smtp_reply")
        if is_list and replies:
            delivery.delivered = (delivery.delivered or 0) + len(replies)
            fields.append("delivered")
        if fields:
            delivery.save(update_fields=fields)
        if refused and not is_list:
            _notify_sender(delivery, refused)
        if not deferred and more:
            Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
            enqueue(deliver_notification_task, delivery.pk)
        elif not deferred:
            _finish_delivery(delivery, state=DeliveryState.NOTIFIED, error="")
    if deferred:
        _delivery_failed_attempt(delivery, "; ".join(deferred), retryable=True, retry_after=None)


def _claim_delivery(delivery_id: int) -> Delivery | None:
    with transaction.atomic():
        delivery = (
            lock(Delivery.objects.select_related("message", "message__sender__domain"))
            .filter(
                pk=delivery_id,
                local=False,
                state__in=[DeliveryState.PENDING, DeliveryState.RETRYING],
                next_attempt_at__lte=timezone.now(),
            )
            .first()
        )
        if delivery is None:
            return None
        delivery.attempts += 1
        delivery.next_attempt_at = claim_until()
        delivery.save(update_fields=["attempts", "next_attempt_at"])
        return delivery


def _post_notification(delivery: Delivery) -> dict[str, dict[str, str]] | None:
    """Each recipient's answer from the domain's instance; None for a legacy domain."""
    instance = discovery.discover(delivery.domain)
    if instance is None:
        return None
    results: dict[str, dict[str, str]] = {}
    # A domain with more recipients than its instance takes per notification gets
    # several notifications with the same id; the receiver merges them.
    for chunk in _chunks(notification_for(delivery), instance.max_recipients):
        results.update(
            client.send_notification(
                instance=instance, sender_domain=delivery.message.sender.domain.name, notification=chunk
            )
        )
    return results


def _delivered_in_batch(delivery: Delivery) -> bool:
    """Send ``delivery`` together with the other notifications already due for its domain, if its peer
    takes batches (§5.4.1) and there are any; True when it went that way (each row then has its outcome).

    Only what is due now joins: a lone notification is never held back to wait for company.
    """
    instance = discovery.discover(delivery.domain)
    if instance is None or instance.max_batch_notifications < 2:
        return False
    first = notification_for(delivery)
    if len(first.recipients) > instance.max_recipients:
        return False  # split into parts, each a request of its own (§6.1)
    companions = _claim_companions(delivery, limit=instance.max_batch_notifications - 1)
    if not companions:
        return False
    members = [(delivery, first)]
    for other in companions:
        if other.message.withdrawn_at:
            _finish_delivery(other, state=DeliveryState.FAILED, error=WITHDRAWN_FIRST)
            continue
        notification = notification_for(other)
        if len(notification.recipients) > instance.max_recipients:
            _release(other)  # goes by itself, split, when its own task runs
            continue
        members.append((other, notification))
    sender_domain = delivery.message.sender.domain.name
    for batch, body in _packed(members, instance.max_batch_bytes):
        _send_batch(instance, sender_domain, batch, body)
    return True


def _claim_companions(delivery: Delivery, *, limit: int) -> list[Delivery]:
    """Claim, as _claim_delivery does, up to ``limit`` other notifications due now for the same domain
    and signed by the same sending domain."""
    with transaction.atomic():
        found = list(
            lock(Delivery.objects.select_related("message", "message__sender__domain"))
            .filter(
                domain=delivery.domain,
                local=False,
                transport=Transport.FEDERATION,
                state__in=[DeliveryState.PENDING, DeliveryState.RETRYING],
                next_attempt_at__lte=timezone.now(),
                message__sender__domain=delivery.message.sender.domain,
                message__list_address="",  # a list's issue goes as a list notification (§13.3)
            )
            .exclude(pk=delivery.pk)
            .order_by("next_attempt_at", "pk")[:limit]
        )
        if found:
            until = claim_until()
            Delivery.objects.filter(pk__in=[d.pk for d in found]).update(
                attempts=F("attempts") + 1, next_attempt_at=until
            )
            for other in found:
                other.attempts += 1
                other.next_attempt_at = until
    return found


def _release(delivery: Delivery) -> None:
    """Give a claimed row back, due now, as if it had not been claimed: its own task sends it."""
    Delivery.objects.filter(pk=delivery.pk).update(attempts=F("attempts") - 1, next_attempt_at=timezone.now())
    enqueue(deliver_notification_task, delivery.pk)


Member = tuple[Delivery, payloads.Notification]


_BATCH_HEAD = b'{"type":"notification_batch","version":1,"notifications":['
_BATCH_TAIL = b"]}"


def _packed(members: list[Member], max_bytes: int) -> list[tuple[list[Member], bytes | None]]:
    """The members in batches whose body (payloads.notification_batch, serialized as the client does)
    fits ``max_bytes``; one that fits in no batch goes alone (``None``: a request of its own)."""
    out: list[tuple[list[Member], bytes | None]] = []
    current: list[Member] = []
    items: list[bytes] = []

    def close() -> None:
        if current:
            out.append((list(current), _BATCH_HEAD + b",".join(items) + _BATCH_TAIL))
            current.clear()
            items.clear()

    for member in members:
        item = json.dumps(member[1].to_json(), separators=(",", ":")).encode()
        alone = len(_BATCH_HEAD) + len(item) + len(_BATCH_TAIL)
        if alone > max_bytes:
            out.append(([member], None))
            continue
        if len(_BATCH_HEAD) + sum(map(len, items)) + len(items) + len(item) + len(_BATCH_TAIL) > max_bytes:
            close()
        current.append(member)
        items.append(item)
    close()
    return out


def _send_batch(instance: discovery.Instance, sender_domain: str, members: list[Member], body: bytes | None) -> None:
    """One request for these members (alone when ``body`` is None); each row moves by its own outcome."""
    if body is None or len(members) == 1:
        delivery, notification = members[0]
        _settle(delivery, _send_one(instance, sender_domain, notification))
        return
    try:
        outcomes = client.send_notification_batch(
            instance=instance, sender_domain=sender_domain, notifications=[n for _, n in members], body=body
        )
    except client.BatchRefused:
        outcomes = [_send_one(instance, sender_domain, n) for _, n in members]
    except client.PeerError as exc:
        outcomes = [exc] * len(members)
    for (delivery, _notification), outcome in zip(members, outcomes, strict=True):
        _settle(delivery, outcome)


def _send_one(instance: discovery.Instance, sender_domain: str, notification: payloads.Notification) -> BatchOutcome:
    try:
        return client.send_notification(instance=instance, sender_domain=sender_domain, notification=notification)
    except client.PeerError as exc:
        return exc


def _settle(delivery: Delivery, outcome: BatchOutcome) -> None:
    """A row's move after its notification's answer, as for a notification sent alone."""
    if isinstance(outcome, client.PeerError):
        _delivery_failed_attempt(delivery, str(outcome), retryable=outcome.retryable, retry_after=outcome.retry_after)
    else:
        _record_answers(delivery, outcome)


def notification_for(delivery: Delivery) -> payloads.Notification:
    """The notification of ``delivery``'s message to its domain: only that domain's recipients."""
    message = delivery.message
    recipients = list(
        Recipient.objects.filter(message=message, domain=delivery.domain)
        .order_by("pk")
        .values_list("address", flat=True)
    )
    return payloads.Notification(
        global_id=message.id,
        message_id=message.message_id,
        sender=message.sender_address,
        recipients=recipients,
        subject=message.subject,
        date=message.date,
        size=message.size,
        digest=message.digest,
        in_reply_to=message.in_reply_to,
        references=message.references,
        expires=message.expires_at,
        attachments=tuple(payloads.parse_manifest(manifest_of(message))),
        sender_name=message.sender_name,
        encrypted=message.encrypted,
    )


def _chunks(notification: payloads.Notification, size: int) -> list[payloads.Notification]:
    size = max(size, 1)
    recipients = notification.recipients
    return [
        dataclasses.replace(notification, recipients=recipients[i : i + size]) for i in range(0, len(recipients), size)
    ]


def _record_answers(delivery: Delivery, results: dict[str, dict[str, str]]) -> None:
    """Each recipient's answer; a refusal is final (an unknown mailbox), so its sender is told at once."""
    refused: list[tuple[str, str]] = []
    with transaction.atomic():
        for recipient in Recipient.objects.filter(message=delivery.message, domain=delivery.domain).order_by("pk"):
            status, reason = _answer(results.get(recipient.address))
            if (recipient.status, recipient.reason) != (status, reason):
                if status == RecipientStatus.REJECTED and recipient.status != RecipientStatus.REJECTED:
                    refused.append((recipient.address, reason))
                recipient.status, recipient.reason = status, reason
                recipient.save(update_fields=["status", "reason"])
        _finish_delivery(delivery, state=DeliveryState.NOTIFIED, error="")
        if refused:
            _notify_sender(delivery, refused)


def _answer(answer: dict[str, str] | None) -> tuple[str, str]:
    """A recipient's (status, reason) from the domain's answer for it."""
    if answer is None:
        return RecipientStatus.REJECTED, "no answer for this recipient"
    if answer.get("status") == RecipientStatus.ACCEPTED:
        return RecipientStatus.ACCEPTED, ""
    return RecipientStatus.REJECTED, (answer.get("reason") or "rejected")[:300]


def _finish_delivery(delivery: Delivery, *, state: str, error: str, delivered: int | None = None) -> None:
    fields: dict[str, object] = {"last_error": error[:500], "next_attempt_at": None}
    if delivered is not None:
        fields["delivered"] = delivered
    if state == DeliveryState.NOTIFIED:
        fields["notified_at"] = timezone.now()
    if state == DeliveryState.FAILED:
        fields["failed_at"] = timezone.now()
    transition(delivery, DELIVERY, state, fields=fields)


def _reject_all(delivery: Delivery, reason: str) -> None:
    """The domain cannot take the message at all: final, so its sender is told at once."""
    with transaction.atomic():
        waiting = Recipient.objects.filter(message=delivery.message, domain=delivery.domain).exclude(
            status=RecipientStatus.REJECTED
        )
        addresses = list(waiting.order_by("pk").values_list("address", flat=True))
        waiting.update(status=RecipientStatus.REJECTED, reason=reason)
        _finish_delivery(delivery, state=DeliveryState.FAILED, error=reason)
        if addresses:
            _notify_sender(delivery, [(address, reason) for address in addresses])


def _delivery_failed_attempt(delivery: Delivery, error: str, *, retryable: bool, retry_after: float | None) -> None:
    now = timezone.now()
    window = retry_window(DELIVERY, DeliveryState.RETRYING)
    window_end = delivery.message.date + window
    if not retryable or now >= window_end:
        _give_up(delivery, error if not retryable else f"no answer for {window}: {error}")
        return
    delay = retry_delay(DELIVERY, DeliveryState.RETRYING, attempts=delivery.attempts, retry_after=retry_after)
    next_attempt_at = min(now + delay, window_end)
    transition(
        delivery,
        DELIVERY,
        DeliveryState.RETRYING,
        fields={"last_error": error[:500], "next_attempt_at": next_attempt_at},
    )
    _schedule(delivery.pk, next_attempt_at - now)


def _give_up(delivery: Delivery, reason: str) -> None:
    """Failed: recipients still pending there are rejected, and the sender is told about them."""
    with transaction.atomic():
        pending = Recipient.objects.filter(
            message=delivery.message, domain=delivery.domain, status=RecipientStatus.PENDING
        )
        addresses = list(pending.order_by("pk").values_list("address", flat=True))
        pending.update(status=RecipientStatus.REJECTED, reason=reason[:300])
        _finish_delivery(delivery, state=DeliveryState.FAILED, error=reason)
        if addresses and not delivery.message.list_address:  # a list's owner is not told (§13.3)
            _notify_sender(delivery, [(address, reason) for address in addresses])


def _schedule(delivery_id: int, delay: timedelta) -> None:
    enqueue(deliver_notification_task, delivery_id, countdown=max(delay.total_seconds(), 0))


def _notify_sender(delivery: Delivery, failures: list[tuple[str, str]]) -> None:
    """Tell the sender which recipients will not get the message, and why (one reason if all share it)."""
    message = delivery.message
    reasons = {reason for _, reason in failures}
    if len(reasons) == 1:
        listing = "".join(f"  {address}\n" for address, _ in failures) + f"\nReason: {reasons.pop()}\n"
    else:
        listing = "".join(f"  {address}\n    {reason}\n" for address, reason in failures)
    by = " The receiving mail server answered (SMTP)." if delivery.transport == Transport.SMTP else ""
    notice_for_sender.send(
        sender=Message,
        owner=message.sender,
        subject=f"Undelivered: {message.subject}"[:998],
        text=(
            f"Your message {message.subject!r} sent {payloads.format_time(message.date)} could not be delivered to:"
            f"{by}\n\n" + listing
        ),
    )
