"""Reads for lists and subscriptions, each scoped to its user (an unowned id is a 404 by construction)."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, QuerySet
from django.utils.feedgenerator import Atom1Feed
from django.utils.html import linebreaks

from accounts.models import User
from outbox.models import BodyFetch, Delivery, DeliveryState

from .models import Issue, Newsletter, Subscriber, SubscriberState, Subscription, SubscriptionState


def newsletters_for(*, user: User) -> QuerySet[Newsletter]:
    return Newsletter.objects.filter(owner=user).order_by("name")


def newsletter_for(*, user: User, newsletter_id: int) -> Newsletter:
    """The user's own list (Newsletter.DoesNotExist for another's)."""
    return Newsletter.objects.filter(owner=user).get(pk=newsletter_id)


def public_newsletter(*, slug: str) -> Newsletter:
    return Newsletter.objects.select_related("owner").get(slug=slug)


def archive(*, newsletter: Newsletter, limit: int = 100) -> list[Issue]:
    """The newest issues, newest first, with their messages (subject, text, date)."""
    return list(
        Issue.objects.filter(newsletter=newsletter, message__withdrawn_at__isnull=True)
        .select_related("message")
        .order_by("-published_at")[:limit]
    )


def subscriber_domains(*, newsletter: Newsletter) -> list[str]:
    """The domains with at least one active subscriber of their own instance: an issue goes once to each.

    Made distinct in the database (from the index on list, state, domain): a list of 100,000
    subscribers over 1,000 domains reads 1,000 names, not 100,000.
    """
    active = Subscriber.objects.filter(newsletter=newsletter, state=SubscriberState.ACTIVE, legacy=False)
    return list(active.order_by("domain").values_list("domain", flat=True).distinct())


def subscribers_by_mail(*, newsletter: Newsletter) -> dict[str, list[str]]:
    """The active subscribers at ordinary mail domains (confirmed by mail), by domain: an issue goes to each by SMTP."""
    found: dict[str, list[str]] = {}
    rows = Subscriber.objects.filter(newsletter=newsletter, state=SubscriberState.ACTIVE, legacy=True).order_by("pk")
    for domain, address in rows.values_list("domain", "address"):
        found.setdefault(domain, []).append(address)
    return found


def subscriber_counts(*, newsletter: Newsletter) -> list[tuple[str, int]]:
    """Active subscribers per domain, most first."""
    rows = (
        Subscriber.objects.filter(newsletter=newsletter, state=SubscriberState.ACTIVE)
        .values("domain")
        .annotate(n=Count("pk"))
        .order_by("-n", "domain")
    )
    return [(row["domain"], row["n"]) for row in rows]


@dataclass(frozen=True)
class IssueStats:
    """Per issue, per domain only: domains notified, domains that fetched, unsubscribes since. No reader is tracked."""

    issue: Issue
    notified: int
    fetched: int
    unsubscribed_since: int


def issue_stats(*, newsletter: Newsletter, limit: int = 20) -> list[IssueStats]:
    stats = []
    for issue in archive(newsletter=newsletter, limit=limit):
        notified = Delivery.objects.filter(message=issue.message, state=DeliveryState.NOTIFIED).count()
        fetched = BodyFetch.objects.filter(message=issue.message).values("domain").distinct().count()
        left = Subscriber.objects.filter(
            newsletter=newsletter, state=SubscriberState.UNSUBSCRIBED, changed_at__gte=issue.published_at
        ).count()
        stats.append(IssueStats(issue=issue, notified=notified, fetched=fetched, unsubscribed_since=left))
    return stats


def atom_feed(*, newsletter: Newsletter, page_url: str, feed_url: str) -> bytes:
    """The list's archive as an Atom feed (RFC 4287): one entry per issue, its text as the content."""
    feed = Atom1Feed(
        title=newsletter.name,
        link=page_url,
        description=newsletter.description or newsletter.name,
        subtitle=newsletter.description or None,
        feed_url=feed_url,
        feed_guid=feed_url,
        author_name=newsletter.name,
        author_email=newsletter.address,
        language="en",
    )
    for issue in archive(newsletter=newsletter):
        message = issue.message
        feed.add_item(
            title=message.subject or "(no subject)",
            link=f"{page_url}#issue-{message.id}",
            # Atom's summary is HTML here (RFC 4287 §3.1.1.2): the plain text, escaped, its paragraphs kept.
            description=linebreaks(message.text or "", autoescape=True),
            unique_id=f"urn:uuid:{message.id}",
            unique_id_is_permalink=False,
            pubdate=message.date,
            updateddate=message.date,
            author_name=newsletter.name,
        )
    return feed.writeString("utf-8").encode("utf-8")


# --- The reader's side -----------------------------------------------------------------


def subscriptions_for(*, user: User) -> QuerySet[Subscription]:
    """The user's lists, those they left last."""
    return Subscription.objects.filter(owner=user).order_by("list_name", "list_address")


def subscription_to(*, user: User, list_address: str) -> Subscription | None:
    return Subscription.objects.filter(owner=user, list_address=list_address).first()


#: How each state reads to its reader: only an acknowledged request is shown as done.
STATE_LABELS: dict[str, str] = {
    SubscriptionState.PENDING: "Subscribing… (waiting for the list to confirm)",
    SubscriptionState.ACTIVE: "Subscribed",
    SubscriptionState.PAUSING: "Pausing… (waiting for the list to confirm)",
    SubscriptionState.PAUSED: "Paused",
    SubscriptionState.RESUMING: "Resuming… (waiting for the list to confirm)",
    SubscriptionState.UNSUBSCRIBING: "Unsubscribing… nothing more is delivered (waiting for the list to confirm)",
    SubscriptionState.UNSUBSCRIBED: "Unsubscribed",
    SubscriptionState.REFUSED: "Refused by the list's instance",
}


def state_label(state: str) -> str:
    return STATE_LABELS.get(state, state)
