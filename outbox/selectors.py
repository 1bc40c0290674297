"""Reads for the sender side, always scoped to the user."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from .models import BodyFetch, Delivery, Message, Recipient


def sent_messages_for(*, user) -> QuerySet[Message]:  # type: ignore[no-untyped-def]
    return Message.objects.filter(sender=user)


def sent_message_detail(*, user, message_id) -> Message:  # type: ignore[no-untyped-def]
    """One sent message with its deliveries, recipients and fetches; 404 by construction if not the user's."""
    return (
        sent_messages_for(user=user)
        .prefetch_related(
            Prefetch("deliveries", queryset=Delivery.objects.order_by("domain")),
            Prefetch("recipients", queryset=Recipient.objects.order_by("pk")),
            Prefetch("fetches", queryset=BodyFetch.objects.order_by("fetched_at")),
        )
        .get(pk=message_id)
    )


def domain_status(message: Message) -> list[dict]:
    """Per recipient domain: delivery, answers, fetches and the withdrawal race."""
    fetches: dict[str, list[BodyFetch]] = {}
    for fetch in message.fetches.all():
        fetches.setdefault(fetch.domain, []).append(fetch)
    recipients: dict[str, list[Recipient]] = {}
    for recipient in message.recipients.all():
        recipients.setdefault(recipient.domain, []).append(recipient)
    rows = []
    for delivery in message.deliveries.all():
        domain_fetches = fetches.get(delivery.domain, [])
        first_fetch = domain_fetches[0].fetched_at if domain_fetches else None
        withdrawn_before_fetch = None
        if message.withdrawn_at:
            withdrawn_before_fetch = first_fetch is None or message.withdrawn_at < first_fetch
        rows.append(
            {
                "delivery": delivery,
                "recipients": recipients.get(delivery.domain, []),
                "fetch_status": "local" if delivery.local else ("fetched" if domain_fetches else "not fetched"),
                "first_fetched_at": first_fetch,
                "fetch_count": len(domain_fetches),
                "withdrawn_before_fetch": withdrawn_before_fetch,
            }
        )
    return rows
