"""Sender side: send, notify, serve the body to recipient domains, withdraw."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from accounts.models import Domain, User
from accounts.validators import domain_of, normalize_address
from federation import client, discovery, payloads
from mailbox.threads import thread_key
from pushmail_site.jobs import claim_until, enqueue, lock, overdue_before
from pushmail_site.states import transition, transition_rows

from .models import (
    BodyFetch,
    Delivery,
    DeliveryState,
    Message,
    MessageAttachment,
    Recipient,
    RecipientKind,
    RecipientStatus,
    Withdrawal,
    WithdrawalState,
)
from .states import DELIVERY, WITHDRAWAL, retry_delay, retry_window

if TYPE_CHECKING:
    from attachments.services import AttachmentInput

log = logging.getLogger(__name__)

LEGACY_REASON = "legacy domain"
UNKNOWN_MAILBOX_REASON = "unknown mailbox"


def _clean_addresses(values: list[str] | None, field: str) -> list[str]:
    cleaned = []
    for value in values or []:
        try:
            cleaned.append(normalize_address(value))
        except ValidationError as exc:
            raise ValidationError({field: exc.messages}) from exc
    return cleaned


def manifest_of(message: Message) -> list[dict[str, object]]:
    """The attachment manifest (name, type, size, digest) in position order; [] when none."""
    return [
        {"name": a.name, "type": a.content_type, "size": a.size, "digest": "sha-256:" + a.blob.sha256}
        for a in MessageAttachment.objects.filter(message=message).select_related("blob").order_by("position")
    ]


def canonical_content(message: Message, *, manifest: list[dict[str, object]] | None = None) -> bytes:
    return payloads.canonical_body(
        global_id=message.id,
        message_id=message.message_id,
        sender=message.sender_address,
        to=message.to,
        cc=message.cc,
        subject=message.subject,
        date=message.date,
        text=message.text,
        html=message.html,
        in_reply_to=message.in_reply_to,
        references=message.references,
        attachments=manifest_of(message) if manifest is None else manifest,
    )


def _references_for(in_reply_to: str) -> list[str]:
    """The parent's references plus the parent, when the parent is known here."""
    from mailbox.models import RemoteMessage

    if not in_reply_to:
        return []
    parent = Message.objects.filter(message_id=in_reply_to).values_list("references", flat=True).first()
    if parent is None:
        parent = RemoteMessage.objects.filter(message_id=in_reply_to).values_list("references", flat=True).first()
    # Only ids a peer would take (docs/protocol.md §5.4): one stored by an older version may not be.
    chain = [r for r in parent or [] if isinstance(r, str) and len(r) <= 400 and not payloads.unfit_character(r)]
    if len(chain) > 20:
        chain = chain[:1] + chain[-19:]  # keep the root: it names the thread
    return [*chain, in_reply_to]


def send_message(
    *,
    sender: User,
    to: list[str],
    cc: list[str] | None = None,
    bcc: list[str] | None = None,
    subject: str,
    text: str,
    html: str | None = None,
    in_reply_to: str = "",
    attachments: Sequence[AttachmentInput] = (),
) -> Message:
    """Store a message once and queue one notification per remote recipient domain.

    Local recipients get their inbox entry in the same transaction. Raises
    ValidationError naming the field for malformed input; unknown or legacy
    recipients are not errors, they are answered per recipient.
    ``attachments`` are stored blobs; their manifest goes into the body (and so
    its digest) and the notifications. The per-file, per-message and quota
    limits are checked here, so every path (web, API) gets them.
    """
    to_list = _clean_addresses(to, "to")
    cc_list = _clean_addresses(cc, "cc")
    bcc_list = _clean_addresses(bcc, "bcc")
    if not (to_list or cc_list or bcc_list):
        raise ValidationError({"to": ["at least one recipient is required"]})
    if "\r" in subject or "\n" in subject:
        raise ValidationError({"subject": ["subject contains a line break (CR or LF)"]})
    if len(subject) > 998:
        raise ValidationError({"subject": ["subject is longer than 998 characters"]})
    if in_reply_to and ("\r" in in_reply_to or "\n" in in_reply_to or len(in_reply_to) > 400):
        raise ValidationError({"in_reply_to": ["must be a message id without line breaks"]})
    # What recipients' instances would refuse (docs/protocol.md §4.1) is refused here, by name.
    for name, value, options in (
        ("subject", subject, {"tab": True}),
        ("in_reply_to", in_reply_to, {}),
        ("text", text, {"multiline": True}),
        ("html", html or "", {"multiline": True}),
    ):
        if unfit := payloads.unfit_character(value, **options):
            raise ValidationError({name: [f"{name} contains {unfit}"]})

    kinds: dict[str, str] = {}
    for kind, addresses in ((RecipientKind.TO, to_list), (RecipientKind.CC, cc_list), (RecipientKind.BCC, bcc_list)):
        for address in addresses:
            kinds.setdefault(address, kind)
    if len(kinds) > settings.PUSHMAIL_MAX_RECIPIENTS * 10:
        raise ValidationError({"to": [f"at most {settings.PUSHMAIL_MAX_RECIPIENTS * 10} recipients per message"]})

    from attachments.filenames import clean_filename
    from attachments.services import check_attachments, clean_content_type

    files = [
        dataclasses.replace(a, name=clean_filename(a.name), content_type=clean_content_type(a.content_type))
        for a in attachments
    ]
    manifest = [{"name": a.name, "type": a.content_type, "size": a.blob.size, "digest": a.blob.digest} for a in files]
    if files:
        check_attachments(user=sender, attachments=files)

    now = timezone.now().replace(microsecond=0)
    global_id = uuid.uuid4()
    message = Message(
        id=global_id,
        sender=sender,
        sender_address=sender.email,
        subject=subject,
        text=text,
        html=html or None,
        to=list(dict.fromkeys(to_list)),
        cc=list(dict.fromkeys(cc_list)),
        bcc=list(dict.fromkeys(bcc_list)),
        message_id=f"<{global_id}@{sender.domain.name}>",
        in_reply_to=in_reply_to,
        references=_references_for(in_reply_to),
        date=now,
        expires_at=now + settings.PUSHMAIL_RETENTION,
        size=0,
        digest="",
    )
    message.thread_key = thread_key(
        message_id=message.message_id, in_reply_to=message.in_reply_to, references=message.references
    )
    content = canonical_content(message, manifest=manifest)
    message.size = len(content)
    message.digest = payloads.digest(content)

    local_domains = set(Domain.objects.values_list("name", flat=True))
    by_domain: dict[str, list[str]] = defaultdict(list)
    for address in kinds:
        by_domain[domain_of(address)].append(address)

    with transaction.atomic():
        message.save(force_insert=True)
        if files:
            MessageAttachment.objects.bulk_create(
                MessageAttachment(
                    message=message,
                    blob=a.blob,
                    position=i,
                    name=a.name,
                    content_type=a.content_type,
                    size=a.blob.size,
                )
                for i, a in enumerate(files)
            )
        Recipient.objects.bulk_create(
            Recipient(message=message, address=a, domain=domain_of(a), kind=k) for a, k in kinds.items()
        )
        deliveries = Delivery.objects.bulk_create(
            Delivery(
                message=message,
                domain=domain,
                local=domain in local_domains,
                next_attempt_at=None if domain in local_domains else now,
            )
            for domain in sorted(by_domain)
        )
        for delivery in deliveries:
            if delivery.local:
                _deliver_locally(message, delivery, by_domain[delivery.domain])
        remote_ids = [d.pk for d in deliveries if not d.local]
        if remote_ids:
            _queue_deliveries(remote_ids)
    return message


def _queue_deliveries(ids: list[int]) -> None:
    from .tasks import deliver_notification

    for delivery_id in ids:
        enqueue(deliver_notification, delivery_id)


def _deliver_locally(message: Message, delivery: Delivery, addresses: list[str]) -> None:
    """Same-instance mail: the entry points at the stored message; nothing travels."""
    from mailbox.services import deliver_local_entries

    accepted = deliver_local_entries(message=message, addresses=addresses)
    Recipient.objects.filter(message=message, address__in=accepted).update(status=RecipientStatus.ACCEPTED)
    Recipient.objects.filter(message=message, address__in=set(addresses) - accepted).update(
        status=RecipientStatus.REJECTED, reason=UNKNOWN_MAILBOX_REASON
    )
    transition(delivery, DELIVERY, DeliveryState.NOTIFIED, fields={"notified_at": timezone.now(), "attempts": 1})


# --- Notification delivery (the deliver_notification task) ---------------------


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


def notification_for(delivery: Delivery) -> payloads.Notification:
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
    )


def deliver_notification(delivery_id: int) -> None:
    """Post one signed notification to one domain; idempotent, safe to repeat."""
    delivery = _claim_delivery(delivery_id)
    if delivery is None:
        return
    message = delivery.message
    if message.withdrawn_at:
        _finish_delivery(delivery, state=DeliveryState.FAILED, error="withdrawn before notification")
        return
    try:
        instance = discovery.discover(delivery.domain)
        if instance is None:
            _reject_all(delivery, LEGACY_REASON)
            return
        notification = notification_for(delivery)
        results: dict[str, dict[str, str]] = {}
        # A domain with more recipients than its instance takes per notification gets
        # several notifications with the same id; the receiver merges them.
        for chunk in _chunks(notification, instance.max_recipients):
            results.update(
                client.send_notification(
                    instance=instance, sender_domain=message.sender.domain.name, notification=chunk
                )
            )
    except (discovery.DiscoveryError, client.PeerError) as exc:
        _delivery_failed_attempt(delivery, str(exc), retryable=exc.retryable, retry_after=exc.retry_after)
        return
    _record_answers(delivery, results)


def _chunks(notification: payloads.Notification, size: int) -> list[payloads.Notification]:
    size = max(size, 1)
    recipients = notification.recipients
    return [
        dataclasses.replace(notification, recipients=recipients[i : i + size]) for i in range(0, len(recipients), size)
    ]


def _record_answers(delivery: Delivery, results: dict[str, dict[str, str]]) -> None:
    with transaction.atomic():
        for recipient in Recipient.objects.filter(message=delivery.message, domain=delivery.domain):
            answer = results.get(recipient.address)
            if answer is None:
                status, reason = RecipientStatus.REJECTED, "no answer for this recipient"
            elif answer.get("status") == RecipientStatus.ACCEPTED:
                status, reason = RecipientStatus.ACCEPTED, ""
            else:
                status, reason = RecipientStatus.REJECTED, (answer.get("reason") or "rejected")[:300]
            if (recipient.status, recipient.reason) != (status, reason):
                recipient.status, recipient.reason = status, reason
                recipient.save(update_fields=["status", "reason"])
        _finish_delivery(delivery, state=DeliveryState.NOTIFIED, error="")


def _finish_delivery(delivery: Delivery, *, state: str, error: str) -> None:
    fields: dict[str, object] = {"last_error": error[:500], "next_attempt_at": None}
    if state == DeliveryState.NOTIFIED:
        fields["notified_at"] = timezone.now()
    if state == DeliveryState.FAILED:
        fields["failed_at"] = timezone.now()
    transition(delivery, DELIVERY, state, fields=fields)


def _reject_all(delivery: Delivery, reason: str) -> None:
    with transaction.atomic():
        Recipient.objects.filter(message=delivery.message, domain=delivery.domain).update(
            status=RecipientStatus.REJECTED, reason=reason
        )
        _finish_delivery(delivery, state=DeliveryState.FAILED, error=reason)


def _delivery_failed_attempt(delivery: Delivery, error: str, *, retryable: bool, retry_after: float | None) -> None:
    now = timezone.now()
    window = retry_window(DELIVERY, DeliveryState.RETRYING)
    window_end = delivery.message.date + window
    if not retryable or now >= window_end:
        reason = error if not retryable else f"no answer for {window}: {error}"
        with transaction.atomic():
            Recipient.objects.filter(
                message=delivery.message, domain=delivery.domain, status=RecipientStatus.PENDING
            ).update(status=RecipientStatus.REJECTED, reason=reason[:300])
            _finish_delivery(delivery, state=DeliveryState.FAILED, error=reason)
            _notify_sender_of_failure(delivery, reason)
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


def _schedule(delivery_id: int, delay: timedelta) -> None:
    from .tasks import deliver_notification as task

    enqueue(task, delivery_id, countdown=max(delay.total_seconds(), 0))


def _notify_sender_of_failure(delivery: Delivery, reason: str) -> None:
    from mailbox.services import post_notice

    message = delivery.message
    addresses = list(
        Recipient.objects.filter(message=message, domain=delivery.domain).values_list("address", flat=True)
    )
    post_notice(
        owner=message.sender,
        subject=f"Undelivered: {message.subject}"[:998],
        text=(
            f"Your message {message.subject!r} sent {payloads.format_time(message.date)} could not be delivered to:\n\n"
            + "".join(f"  {a}\n" for a in addresses)
            + f"\nReason: {reason}\n"
        ),
    )


# --- Serving the body (the federation fetch endpoint) ----------------------------


class NotOffered(Exception):
    """The message does not exist or is not addressed to the asking domain."""


class NoAcceptedRecipient(Exception):
    """Every recipient of the message at the asking domain was rejected: nobody there may read it."""


class BodyGone(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def offered_message(*, global_id: uuid.UUID, to_domain: str) -> Message:
    """The message a recipient domain asks for, if that domain may fetch it at all.

    Raises NotOffered when the message is unknown or ``to_domain`` is not one of
    its remote recipient domains, and NoAcceptedRecipient when every recipient
    there was rejected (a recipient still pending may yet be accepted, so it counts).
    Withdrawal, retention and "every domain fetched" are the caller's to check.
    """
    message = Message.objects.filter(pk=global_id).first()
    if message is None or not Delivery.objects.filter(message=message, domain=to_domain, local=False).exists():
        raise NotOffered()
    readers = Recipient.objects.filter(message=message, domain=to_domain).exclude(status=RecipientStatus.REJECTED)
    if not readers.exists():
        raise NoAcceptedRecipient()
    return message


def serve_body(*, global_id: uuid.UUID, to_domain: str) -> bytes:
    """Return the canonical body for a recipient domain and record the fetch.

    Raises NotOffered, NoAcceptedRecipient (see :func:`offered_message`) or
    BodyGone once the message is withdrawn, every recipient domain has fetched
    it, or its retention ended. The sender's own copy is not affected by any of these.
    """
    message = offered_message(global_id=global_id, to_domain=to_domain)
    end = message.offer_end()
    if end is not None:
        raise BodyGone(end.reason)
    content = canonical_content(message)
    BodyFetch.objects.create(message=message, domain=to_domain, bytes=len(content))
    return content


# --- Withdrawal --------------------------------------------------------------------


def withdraw_message(*, message: Message) -> Message:
    """Withdraw a sent message: fetches answer 410 and every recipient domain is told."""
    from mailbox.services import withdraw_local_entries

    with transaction.atomic():
        message = Message.objects.select_for_update().get(pk=message.pk)
        if message.withdrawn_at:
            return message
        now = timezone.now()
        message.withdrawn_at = now
        message.save(update_fields=["withdrawn_at"])
        withdraw_local_entries(message=message)
        # Not yet notified: nothing to take back once the notification is cancelled.
        transition_rows(
            Delivery.objects.filter(message=message, local=False, attempts=0),
            DELIVERY,
            DeliveryState.FAILED,
            fields={"last_error": "withdrawn before notification", "next_attempt_at": None},
        )
        told = Delivery.objects.filter(message=message).exclude(local=False, state=DeliveryState.FAILED, attempts=0)
        withdrawals = Withdrawal.objects.bulk_create(
            Withdrawal(message=message, domain=delivery.domain, next_attempt_at=None if delivery.local else now)
            for delivery in told.order_by("domain")
        )
        # A domain hosted here had its entries withdrawn above.
        local = {d.domain for d in told if d.local}
        transition_rows(
            Withdrawal.objects.filter(message=message, domain__in=local),
            WITHDRAWAL,
            WithdrawalState.SENT,
            fields={"acknowledged_at": now},
        )
        _queue_withdrawals([w.pk for w in withdrawals if w.domain not in local])
    return message


def _queue_withdrawals(ids: list[int]) -> None:
    from .tasks import send_withdrawal

    for withdrawal_id in ids:
        enqueue(send_withdrawal, withdrawal_id)


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
    from .tasks import send_withdrawal as task

    enqueue(task, withdrawal.pk, countdown=delay.total_seconds())


# --- Sweeps ---------------------------------------------------------------------------


def requeue_due(*, limit: int = 1000) -> int:
    """Queue every notification and withdrawal that is due, whatever the broker holds."""
    from .tasks import deliver_notification, send_withdrawal

    now = overdue_before()
    due = list(
        Delivery.objects.filter(
            local=False, state__in=[DeliveryState.PENDING, DeliveryState.RETRYING], next_attempt_at__lte=now
        )
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
    for delivery_id in due:
        enqueue(deliver_notification, delivery_id)
    withdrawals = list(
        Withdrawal.objects.filter(state=WithdrawalState.PENDING, next_attempt_at__lte=now)
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
    for withdrawal_id in withdrawals:
        enqueue(send_withdrawal, withdrawal_id)
    return len(due) + len(withdrawals)


def mark_fetched_by_all() -> int:
    """Stop offering to recipient domains the bodies that every one of them has fetched.

    A domain counts when it is remote and has a recipient not rejected (pending
    ones may still be accepted and fetch). From then on the body endpoint answers
    410 "fetched"; attachments stay offered until retention ends. Nothing of the
    sender's copy is deleted: its text, HTML and attachments stay for as long as
    the message is in the sender's mailbox. Returns how many messages were marked.
    """
    now = timezone.now()
    local_names = list(Domain.objects.values_list("name", flat=True))
    readers = ~Q(recipients__status=RecipientStatus.REJECTED) & ~Q(recipients__domain__in=local_names)
    candidates = (
        Message.objects.filter(fetched_by_all_at__isnull=True, withdrawn_at__isnull=True, expires_at__gt=now)
        .annotate(
            remote=Count("recipients__domain", filter=readers, distinct=True),
            fetched=Count("fetches__domain", distinct=True),
        )
        .filter(remote__gt=0, fetched__gte=F("remote"))
        .values_list("pk", flat=True)
    )
    done = []
    for message_id in candidates:
        # The counts only narrow it down: the domains themselves must be the same.
        remote = set(
            Recipient.objects.filter(message_id=message_id)
            .exclude(status=RecipientStatus.REJECTED)
            .exclude(domain__in=local_names)
            .values_list("domain", flat=True)
        )
        fetched = set(BodyFetch.objects.filter(message_id=message_id).values_list("domain", flat=True))
        if remote <= fetched:
            done.append(message_id)
    return Message.objects.filter(pk__in=done, fetched_by_all_at__isnull=True).update(fetched_by_all_at=now)
