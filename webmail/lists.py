"""Reads for the webmail's Sent list, scoped to the user (the folder lists are in mailbox.selectors)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, cast

from django.db.models import BigIntegerField, Count, IntegerField, OuterRef, Prefetch, Q, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce

from accounts.models import User
from mailbox.selectors import Cursor, Page
from outbox.models import Delivery, Message, MessageAttachment, Recipient, RecipientStatus
from outbox.reach import by_smtp
from outbox.selectors import sent_messages_for

if TYPE_CHECKING:

    class SentRow(Message):
        """A sent message as the Sent list shows it."""

        delivery_summary: str
        smtp_domains: list[str]
        attachments_bytes: int  # with_total_size
        undelivered_count: int  # recipients refused for good


def with_total_size(messages: QuerySet[Message]) -> QuerySet[Message]:
    """Each message with ``attachments_bytes``: a sent message's size is its body and its attachments,
    as its recipients' lists show it (the notification's size plus its manifest's)."""
    per_message = (
        MessageAttachment.objects.filter(message=OuterRef("pk"))
        .order_by()
        .values("message")
        .annotate(total=Sum("size"))
        .values("total")
    )
    return messages.annotate(attachments_bytes=Coalesce(Subquery(per_message, output_field=BigIntegerField()), 0))


def sent_page(
    *, user: User, folder: str = "sent", before: str | None = None, after: str | None = None, limit: int = 50
) -> Page:
    """One page of the sender's copies in Sent (or Trash), newest first, keyset-paginated on (date, id).

    Each message comes with its deliveries (one query for the page) for a per-message summary.
    """
    refused = (
        Recipient.objects.filter(message=OuterRef("pk"), status=RecipientStatus.REJECTED)
        .order_by()
        .values("message")
        .annotate(n=Count("pk"))
        .values("n")
    )
    messages = with_total_size(
        sent_messages_for(user=user)
        .filter(sender_folder=folder)
        .defer("text", "html")
        .annotate(undelivered_count=Coalesce(Subquery(refused, output_field=IntegerField()), 0))
        .prefetch_related(Prefetch("deliveries", queryset=Delivery.objects.order_by("domain")))
    )
    if folder == "trash":
        # Deleted for good from the sender's Trash but kept for its recipients: hidden.
        messages = messages.filter(sender_trashed_at__isnull=False)
    older, newer = Cursor.decode(before, uuid.UUID), Cursor.decode(after, uuid.UUID)
    if newer is not None and older is None:
        q = Q(date__gte=newer.at) & (Q(date__gt=newer.at) | Q(pk__gt=newer.pk))
        rows = list(messages.filter(q).order_by("date", "pk")[: limit + 1])
        has_newer, has_older = len(rows) > limit, True
        rows = rows[:limit][::-1]
    else:
        if older is not None:
            messages = messages.filter(Q(date__lte=older.at) & (Q(date__lt=older.at) | Q(pk__lt=older.pk)))
        rows = list(messages.order_by("-date", "-pk")[: limit + 1])
        has_older, has_newer = len(rows) > limit, older is not None
        rows = rows[:limit]
    for message in cast("list[SentRow]", rows):  # the same objects, given their summary
        message.delivery_summary = delivery_summary(message)
        message.smtp_domains = [d.domain for d in message.deliveries.all() if by_smtp(d)]
    return Page(
        items=rows,
        older=Cursor(rows[-1].date, rows[-1].pk).encode() if rows and has_older else None,
        newer=Cursor(rows[0].date, rows[0].pk).encode() if rows and has_newer else None,
        first=not has_newer,
    )


def delivery_summary(message: Message) -> str:
    """E.g. "2 notified, 1 sent by SMTP, 1 failed" from the prefetched deliveries (no query)."""
    counts: dict[str, int] = {}
    for delivery in message.deliveries.all():
        state = delivery.state
        if state == "notified" and delivery.transport == "smtp":
            state = "sent by SMTP"
        counts[state] = counts.get(state, 0) + 1
    order = ["notified", "sent by SMTP", "pending", "retrying", "failed"]
    return ", ".join(f"{counts[state]} {state}" for state in order if counts.get(state))
