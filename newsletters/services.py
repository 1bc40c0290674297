"""Lists: creating one, publishing an issue, and both sides of a subscription (docs/protocol.md §13).

The list's side records subscribers only from signed requests of their own domains
(:func:`accept_subscription`); the reader's side keeps its own row per subscription,
sends the reader's wish as a signed request retried until acknowledged
(:func:`send_subscription_request`), and delivers an issue only to its subscribers of record
(:func:`accept_list_notification`).
"""

from __future__ import annotations

import logging
import re
from datetime import datetime

from celery import shared_task
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Domain, User
from accounts.validators import clean_display_name, domain_of, normalize_address
from federation import client, discovery, payloads
from federation.inbound import NotSubscribed, SubscriptionResult, UnknownList
from mailbox import services as mailbox
from mailbox.models import Folder
from mailbox.signals import list_left
from outbox import services as outbox
from outbox.models import Message
from pushmail_site.jobs import claim_until, enqueue, lock, overdue_ids
from pushmail_site.states import retry_delay, transition

from . import selectors
from .models import Issue, Newsletter, Subscriber, SubscriberState, Subscription, SubscriptionState
from .states import RECEIVING, REQUESTS, SUBSCRIPTION

log = logging.getLogger(__name__)

_SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,58}[a-z0-9])?")


# --- The list's side -------------------------------------------------------------------


def check_new_newsletter(*, address: str, name: str, slug: str) -> str:
    """The normalized address of a new list, or ValidationError naming the field: a malformed address,
    one on a domain not hosted here or of a mailbox, an empty name, a slug that is not lowercase
    letters, digits and dashes."""
    try:
        address = normalize_address(address)
    except ValidationError as exc:
        raise ValidationError({"address": exc.messages}) from exc
    domain = domain_of(address)
    if not Domain.objects.filter(name=domain).exists():
        raise ValidationError({"address": f"{domain} is not a domain hosted here"})
    if User.objects.filter(email=address).exists():
        raise ValidationError({"address": f"{address} is a mailbox"})
    if not clean_display_name(name):
        raise ValidationError({"name": "a list needs a name"})
    if not _SLUG.fullmatch(slug):
        raise ValidationError({"slug": "lowercase letters, digits and dashes, 1 to 60, not starting or ending with -"})
    return address


def create_newsletter(*, owner: User, address: str, name: str, description: str = "", slug: str) -> Newsletter:
    """A new list at ``address``, on the owner's own domain (an admin may create one on any hosted domain).

    Raises ValidationError naming the field (see :func:`check_new_newsletter`; also a taken address or slug).
    """
    address = check_new_newsletter(address=address, name=name, slug=slug)
    if domain_of(address) != owner.domain.name:
        raise ValidationError({"address": f"a list of yours must be on your domain, {owner.domain.name}"})
    name = clean_display_name(name)
    try:
        with transaction.atomic():
            return Newsletter.objects.create(
                owner=owner, address=address, name=name, description=description[:2000], slug=slug
            )
    except IntegrityError:
        if Newsletter.objects.filter(address=address).exists():
            raise ValidationError({"address": f"{address} is already a list"}) from None
        raise ValidationError({"slug": f"the page /n/{slug}/ is taken"}) from None


def issue_from_compose(
    *,
    sender: User,
    to: list[str],
    cc: list[str],
    bcc: list[str],
    subject: str,
    text: str,
    html: str | None,
    files: int,
) -> Message | None:
    """A draft written in the usual compose to one of the sender's lists is sent as an issue of it.

    Only the list, alone in To, makes it an issue; anything else is ordinary mail (None). An issue
    carries no files in this version (ValidationError, so the draft comes back saying why).
    """
    if len(to) != 1 or cc or bcc:
        return None
    newsletter = Newsletter.objects.filter(owner=sender, address=to[0]).first()
    if newsletter is None:
        return None
    if files:
        raise ValidationError({"__all__": ["An issue of a list cannot carry files yet: remove them, or link to them."]})
    return publish_issue(newsletter=newsletter, subject=subject, text=text, html=html).message


def publish_issue(*, newsletter: Newsletter, subject: str, text: str, html: str | None = None) -> Issue:
    """Send an issue: stored once, ONE notification per remote subscriber domain, kept in the archive.

    Subscribers at ordinary mail domains (confirmed by mail, newsletters/legacy.py) get it by SMTP:
    one delivery per such domain, a copy per subscriber with their one-click unsubscribe link.

    Subscribers on this instance get their copy at once, by this instance's own record of their
    subscriptions (as a receiving instance would decide), in their Newsletters folder.
    """
    with transaction.atomic():
        message = outbox.send_list_issue(
            sender=newsletter.owner,
            list_address=newsletter.address,
            list_name=newsletter.name,
            subject=subject,
            text=text,
            html=html,
            domains=selectors.subscriber_domains(newsletter=newsletter),
            by_smtp=selectors.subscribers_by_mail(newsletter=newsletter),
        )
        issue = Issue.objects.create(newsletter=newsletter, message=message, published_at=message.date)
        local = list(
            User.objects.filter(
                is_active=True, subscriptions__list_address=newsletter.address, subscriptions__state__in=RECEIVING
            )
        )
        if local:
            mailbox.deliver_local_entries(message=message, users=local, folder=Folder.NEWS)
            Subscription.objects.filter(list_address=newsletter.address, owner__in=local).update(
                last_issue_at=timezone.now()
            )
    return issue


def accept_subscription(*, origin: str, subscription: payloads.Subscription) -> SubscriptionResult:
    """Record where a subscriber stands, from a request signed by their own domain (the view checked it).

    The latest ``requested_at`` wins: an older request (a retry overtaken by a newer one) changes
    nothing and is answered with the state in force ("superseded"). Raises UnknownList.
    """
    newsletter = Newsletter.objects.filter(address=subscription.list_address).first()
    if newsletter is None:
        raise UnknownList()
    with transaction.atomic():
        found = lock(Subscriber.objects.all(), skip_locked=False).filter(
            newsletter=newsletter, address=subscription.subscriber
        )
        subscriber = found.first()
        if subscriber is None:
            if subscription.state == SubscriberState.UNSUBSCRIBED:
                return SubscriptionResult(state=SubscriberState.UNSUBSCRIBED, status="recorded")
            try:
                with transaction.atomic():
                    Subscriber.objects.create(
                        newsletter=newsletter,
                        address=subscription.subscriber,
                        domain=domain_of(subscription.subscriber),
                        state=subscription.state,
                        requested_at=subscription.requested_at,
                    )
            except IntegrityError:  # the same request twice at once: the other one recorded it
                pass
            return SubscriptionResult(state=subscription.state, status="recorded")
        if subscription.requested_at < subscriber.requested_at:
            return SubscriptionResult(state=subscriber.state, status="superseded")
        subscriber.state = subscription.state
        subscriber.requested_at = subscription.requested_at
        subscriber.legacy = False  # their own instance speaks for them now: issues go as list notifications
        subscriber.save(update_fields=["state", "requested_at", "legacy", "changed_at"])
        return SubscriptionResult(state=subscriber.state, status="recorded")


def remove_subscriber(*, subscriber_id: int) -> None:
    """An admin takes a subscriber off a list: no more issues go to them (their instance is not told)."""
    Subscriber.objects.filter(pk=subscriber_id).update(state=SubscriberState.UNSUBSCRIBED, changed_at=timezone.now())


# --- The reader's side -----------------------------------------------------------------


def accept_list_notification(*, origin: str, notification: payloads.ListNotification) -> int:
    """Deliver a list's issue to this instance's subscribers of record (to Newsletters), and only to them.

    Readers who paused or left the list are skipped whatever the list claims; with nobody here
    receiving it, raises NotSubscribed (the list may not send here). A notification that names its
    subscriber domain reaches that domain's readers only. Returns how many got it.
    """
    receiving = Subscription.objects.filter(
        list_address=notification.list_address, state__in=RECEIVING, owner__is_active=True
    )
    if notification.domain:
        receiving = receiving.filter(owner__domain__name=notification.domain)
    addresses = list(receiving.values_list("owner__email", flat=True))
    if not addresses:
        raise NotSubscribed()
    results = mailbox.accept_notification(
        origin=origin,
        notification=notification.for_recipients(sorted(addresses)),
        folder=Folder.NEWS,
        list_id=notification.list_address,
    )
    accepted = [r.address for r in results if r.status == "accepted"]
    Subscription.objects.filter(list_address=notification.list_address, owner__email__in=accepted).update(
        last_issue_at=timezone.now()
    )
    return len(accepted)


def subscribe(*, user: User, list_address: str, list_name: str = "") -> Subscription:
    """The reader confirmed: ask the list's instance to record them (a signed request, retried until answered).

    Raises ValidationError (field ``list``) for a malformed list address or one of the reader's own.
    """
    try:
        list_address = normalize_address(list_address)
    except ValidationError as exc:
        raise ValidationError({"list": exc.messages}) from exc
    if list_address == user.email:
        raise ValidationError({"list": "that is your own address"})
    now = timezone.now()
    with transaction.atomic():
        subscription, created = Subscription.objects.get_or_create(
            owner=user,
            list_address=list_address,
            defaults={
                "list_name": clean_display_name(list_name),
                "requested_at": now,
                "next_attempt_at": now,
            },
        )
        if created:
            enqueue(send_subscription_request_task, subscription.pk)
            return subscription
        subscription = lock(Subscription.objects.all(), skip_locked=False).get(pk=subscription.pk)
        if subscription.state in RECEIVING:
            return subscription
        if subscription.state in (SubscriptionState.PAUSED, SubscriptionState.PAUSING):
            return _ask(subscription, SubscriptionState.RESUMING)
        if list_name:
            subscription.list_name = clean_display_name(list_name)
            subscription.save(update_fields=["list_name"])
        return _ask(subscription, SubscriptionState.PENDING)


def unsubscribe(*, user: User, subscription_id: int) -> Subscription:
    """Leave a list in one click: nothing more is delivered from now; done once the list acknowledges."""
    return _change(user=user, subscription_id=subscription_id, target=SubscriptionState.UNSUBSCRIBING)


def pause(*, user: User, subscription_id: int) -> Subscription:
    return _change(user=user, subscription_id=subscription_id, target=SubscriptionState.PAUSING)


def resume(*, user: User, subscription_id: int) -> Subscription:
    return _change(user=user, subscription_id=subscription_id, target=SubscriptionState.RESUMING)


def _change(*, user: User, subscription_id: int, target: str) -> Subscription:
    """Move the user's own subscription (another's is Subscription.DoesNotExist) towards ``target``.

    A move the graph does not declare (pausing a list left) changes nothing.
    """
    with transaction.atomic():
        subscription = lock(Subscription.objects.filter(owner=user), skip_locked=False).get(pk=subscription_id)
        if subscription.state == target or not SUBSCRIPTION.allows(subscription.state, target):
            return subscription
        if target == SubscriptionState.UNSUBSCRIBING:
            list_left.send(sender=Subscription, list_address=subscription.list_address, reader=user.email)
        return _ask(subscription, target)


def _ask(subscription: Subscription, target: str) -> Subscription:
    now = timezone.now()
    transition(
        subscription,
        SUBSCRIPTION,
        target,
        fields={"requested_at": now, "next_attempt_at": now, "attempts": 0, "last_error": ""},
    )
    enqueue(send_subscription_request_task, subscription.pk)
    return subscription


@shared_task(name="newsletters.send_subscription_request")
def send_subscription_request_task(subscription_id: int) -> None:
    send_subscription_request(subscription_id)


def send_subscription_request(subscription_id: int) -> None:
    """Send the reader's wish (subscribe, pause, resume, unsubscribe) to the list's instance, signed.

    Acknowledged: the row moves to the state the list recorded. A passing failure: tried again with
    backoff. A permanent refusal: a subscribe is refused; a pause, resume or unsubscribe is settled
    here anyway (this instance delivers by its own record, whatever the list does).
    """
    claimed = _claim(subscription_id)
    if claimed is None:
        return
    subscription, requested_at = claimed
    wanted, acknowledged = REQUESTS[subscription.state]
    request = payloads.Subscription(
        list_address=subscription.list_address,
        subscriber=subscription.owner.email,
        state=wanted,
        requested_at=requested_at,
    )
    try:
        _send(request)
    except (discovery.DiscoveryError, client.PeerError) as exc:
        if exc.retryable:
            _settle(subscription, requested_at, retry=str(exc), retry_after=exc.retry_after)
        else:
            refused = SubscriptionState.REFUSED if subscription.state == SubscriptionState.PENDING else acknowledged
            _settle(subscription, requested_at, target=refused, error=str(exc))
        return
    _settle(subscription, requested_at, target=acknowledged)


def _send(request: payloads.Subscription) -> None:
    list_domain = domain_of(request.list_address)
    if discovery.is_local(list_domain):  # a list hosted here: no round trip, the same checks
        try:
            accept_subscription(origin=domain_of(request.subscriber), subscription=request)
        except UnknownList:
            raise client.PeerError(f"no list {request.list_address} here", retryable=False) from None
        return
    instance = discovery.discover(list_domain)
    if instance is None:
        raise client.PeerError(f"{list_domain} has no Pushmail instance", retryable=False)
    client.send_subscription(instance=instance, subscription=request)


def _claim(subscription_id: int) -> tuple[Subscription, datetime] | None:
    with transaction.atomic():
        subscription = (
            lock(Subscription.objects.select_related("owner"))
            .filter(pk=subscription_id, state__in=list(REQUESTS), next_attempt_at__lte=timezone.now())
            .first()
        )
        if subscription is None:
            return None
        subscription.attempts += 1
        subscription.next_attempt_at = claim_until()
        subscription.save(update_fields=["attempts", "next_attempt_at"])
        return subscription, subscription.requested_at


def _settle(
    claimed: Subscription,
    requested_at: datetime,
    *,
    target: str | None = None,
    error: str = "",
    retry: str = "",
    retry_after: float | None = None,
) -> None:
    """Record the answer, unless the reader asked for something else meanwhile (that request is queued)."""
    with transaction.atomic():
        row = lock(Subscription.objects.all(), skip_locked=False).filter(pk=claimed.pk).first()
        if row is None or row.requested_at != requested_at or row.state != claimed.state:
            return
        if target is not None:
            transition(
                row,
                SUBSCRIPTION,
                target,
                fields={"next_attempt_at": None, "last_error": error[:500], "acknowledged_at": timezone.now()},
            )
            return
        delay = retry_delay(SUBSCRIPTION, row.state, attempts=row.attempts, retry_after=retry_after)
        next_attempt_at = timezone.now() + delay
        transition(row, SUBSCRIPTION, row.state, fields={"next_attempt_at": next_attempt_at, "last_error": retry[:500]})
        enqueue(send_subscription_request_task, row.pk, countdown=delay.total_seconds())


def requeue_due(*, limit: int = 1000) -> int:
    """Queue every subscription request that is due, whatever the broker holds."""
    waiting = Subscription.objects.filter(state__in=list(REQUESTS))
    due = overdue_ids(waiting, task=send_subscription_request_task, limit=limit)
    for subscription_id in due:
        enqueue(send_subscription_request_task, subscription_id)
    return len(due)
