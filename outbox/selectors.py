"""Reads for the sender side, always scoped to the user."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any
from uuid import UUID

from django.db.models import (
    BigIntegerField,
    Count,
    Exists,
    Expression,
    F,
    Func,
    Max,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Value,
)
from django.db.models.functions import Coalesce
from django.urls import reverse

from accounts.models import User
from attachments.selectors import AttachmentItem, manifest_items

from .bodies import manifest_of
from .models import (
    BodyFetch,
    Delivery,
    DeliveryState,
    Draft,
    DraftAttachment,
    DraftState,
    Message,
    MessageAttachment,
    Recipient,
    RecipientStatus,
    SenderFolder,
    Transport,
    Withdrawal,
    WithdrawalState,
)
from .reach import by_smtp


def sent_messages_for(*, user: User) -> QuerySet[Message]:
    """The user's own sent messages (Sent and Trash), with their bodies and attachments.

    A copy the user deleted for good is not theirs any more, even while its row
    stays for recipients who may still fetch it.
    """
    return Message.objects.filter(sender=user).exclude(sender_folder=SenderFolder.TRASH, sender_trashed_at__isnull=True)


def sent_message_detail(*, user: User, message_id: UUID) -> Message:
    """One sent message with its deliveries, recipients and fetches; 404 by construction if not the user's."""
    return (
        sent_messages_for(user=user)
        .prefetch_related(
            Prefetch("deliveries", queryset=Delivery.objects.order_by("domain")),
            Prefetch("recipients", queryset=Recipient.objects.order_by("pk")),
            Prefetch("fetches", queryset=BodyFetch.objects.order_by("fetched_at")),
            "withdrawals",
        )
        .get(pk=message_id)
    )


def body_of_message(message: Message, *, with_bcc: bool = False) -> dict[str, Any]:
    """A sent message's body as a reader sees it, read from its row; Bcc only for its sender."""
    body: dict[str, Any] = {
        "text": message.text,
        "html": message.html,
        "to": message.to,
        "cc": message.cc,
        "date": message.date,
        "message_id": message.message_id,
        "in_reply_to": message.in_reply_to,
        "references": message.references,
    }
    if message.encrypted:
        body["encrypted"] = True
    if with_bcc:
        body["bcc"] = message.bcc
    return body


def domain_status(message: Message) -> list[dict[str, Any]]:
    """Per recipient domain: delivery, answers, fetches, the withdrawal race, and whether
    the domain may still fetch the body (``offered``; never for local or all-rejected domains)."""
    offer_open = message.offer_end() is None
    fetches: dict[str, list[BodyFetch]] = {}
    for fetch in message.fetches.all():
        fetches.setdefault(fetch.domain, []).append(fetch)
    recipients: dict[str, list[Recipient]] = {}
    for recipient in message.recipients.all():
        recipients.setdefault(recipient.domain, []).append(recipient)
    withdrawals = {withdrawal.domain: withdrawal for withdrawal in message.withdrawals.all()}
    rows = []
    for delivery in message.deliveries.all():
        domain_fetches = fetches.get(delivery.domain, [])
        first_fetch = domain_fetches[0].fetched_at if domain_fetches else None
        withdrawn_before_fetch = None
        if message.withdrawn_at:
            withdrawn_before_fetch = first_fetch is None or message.withdrawn_at < first_fetch
        domain_recipients = recipients.get(delivery.domain, [])
        may_read = any(r.status != RecipientStatus.REJECTED for r in domain_recipients)
        withdrawal = withdrawals.get(delivery.domain)
        rows.append(
            {
                "delivery": delivery,
                "withdrawal": withdrawal,
                "withdrawal_state": withdrawal.state if withdrawal else "none",
                "recipients": domain_recipients,
                # A domain reached by SMTP holds the message itself: nothing is offered to fetch.
                "offered": offer_open and may_read and not delivery.local and delivery.transport != Transport.SMTP,
                "all_rejected": not may_read,
                "fetch_status": "local" if delivery.local else ("fetched" if domain_fetches else "not fetched"),
                "first_fetched_at": first_fetch,
                "fetch_count": len(domain_fetches),
                "withdrawn_before_fetch": withdrawn_before_fetch,
                "by_smtp": by_smtp(delivery),
            }
        )
    return rows


def has_outgoing_work() -> Q:
    """For a Message queryset: a notification or a withdrawal of the message is still to be sent."""
    due = Delivery.objects.filter(message=OuterRef("pk"), state__in=[DeliveryState.PENDING, DeliveryState.RETRYING])
    withdrawing = Withdrawal.objects.filter(message=OuterRef("pk"), state=WithdrawalState.PENDING)
    return Q(Exists(due)) | Q(Exists(withdrawing))


# --- Drafts and correspondents (compose) ------------------------------------------


def drafts_for(*, user: User) -> QuerySet[Draft]:
    """Every draft of the user, including queued and just-sent ones (for the draft page)."""
    return Draft.objects.filter(owner=user)


def open_drafts_for(*, user: User) -> QuerySet[Draft]:
    """The Drafts folder: neither queued for sending nor sent."""
    return (
        drafts_for(user=user)
        .filter(state=DraftState.DRAFT)
        .annotate(attachment_count=Count("attachments"))
        .order_by("-updated_at", "-pk")
    )


def addressed_by(*, user: User, query: str, limit: int) -> list[tuple[str, datetime]]:
    """(address, when last sent to) of the user's recipients whose address contains ``query``, most recent first."""
    sent = (
        Recipient.objects.filter(message__sender=user, address__icontains=query)
        .values("address")
        .annotate(last=Max("message__date"))
        .order_by("-last")[:limit]
    )
    return [(row["address"], row["last"]) for row in sent]


def written_to(*, user: User, limit: int = 1000) -> list[tuple[str, datetime]]:
    """(address, when last written to) of everyone the user wrote or replied to, most recent first.

    Mail a program sent for the user (a vacation reply, a filter's forward) does not count.
    """
    sent = (
        Recipient.objects.filter(message__sender=user, message__auto_submitted="")
        .values("address")
        .annotate(last=Max("message__date"))
        .order_by("-last")[:limit]
    )
    return [(row["address"], row["last"]) for row in sent]


# --- Attachments and quota -------------------------------------------------------------------


def attachment_items_for_message(message: Any) -> list[AttachmentItem]:
    """Attachments of a sent message, for its sender."""
    return manifest_items(
        manifest_of(message),
        lambda i: reverse("webmail:sent-attachment", kwargs={"message_id": message.pk, "index": i}),
    )


def sent_usage_bytes(*, user: User) -> int:
    """The sender side's part of ``user``'s quota use (see mailbox.selectors.usage_bytes for the whole)."""
    found = User.objects.filter(pk=user.pk).values_list(sent_usage_expression(user=user), flat=True).first()
    return int(found or 0)


def sent_usage_expression(*, user: User) -> Expression:
    """:func:`sent_usage_bytes` as an SQL expression, so that the whole quota use is one query."""
    sent = sent_messages_for(user=user)
    return (
        total_of(sent, "size")
        + total_of(MessageAttachment.objects.filter(message__in=sent.values("pk")), "size")
        + total_of(DraftAttachment.objects.filter(draft__owner=user, draft__sent_message__isnull=True), "size")
    )


def total_of(queryset: QuerySet[Any], field: str) -> Expression:
    """``SUM(field)`` over ``queryset`` as a scalar subquery, 0 when it is empty."""
    # SUM as a plain function, not an aggregate: no GROUP BY, one row whatever the queryset holds.
    summed = queryset.order_by().annotate(total=Func(F(field), function="SUM")).values("total")
    return Coalesce(Subquery(summed, output_field=BigIntegerField()), Value(0), output_field=BigIntegerField())


# --- Conversations ------------------------------------------------------------------------


def thread_key_of_sent(*, message_id: str) -> str | None:
    """The conversation key of a message sent from this instance under ``message_id``, None if none was."""
    return Message.objects.filter(message_id=message_id).values_list("thread_key", flat=True).first()


def recent_threads_to(
    *, user_ids: list[int], address: str, since: datetime, limit: int = 200
) -> list[tuple[int, str, str, datetime]]:
    """(sender id, subject, thread key, date) of these users' messages to ``address`` (To or Cc) since
    ``since``, newest first (of the latest ``limit`` they sent)."""
    rows = (
        Message.objects.filter(sender_id__in=user_ids, date__gte=since)
        .exclude(thread_key="")
        .order_by("-date")
        .values_list("sender_id", "subject", "thread_key", "date", "to", "cc")[:limit]
    )
    wanted = address.casefold()
    return [
        (sender_id, subject, key, date)
        for sender_id, subject, key, date, to, cc in rows
        if any(isinstance(a, str) and a.casefold() == wanted for a in [*(to or []), *(cc or [])])
    ]


def sent_counts_by_thread(*, user: User, thread_keys: Collection[str]) -> dict[str, int]:
    """How many of the user's own sent messages each of these conversations holds (one query)."""
    if not thread_keys:
        return {}
    rows = (
        sent_messages_for(user=user)
        .filter(thread_key__in=list(thread_keys))
        .values("thread_key")
        .annotate(n=Count("pk"))
        .order_by()
    )
    return {row["thread_key"]: row["n"] for row in rows}
