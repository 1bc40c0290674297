"""Subscribers at ordinary mail domains (no Pushmail instance): double opt-in, issues by SMTP, one click out.

Such a reader has no instance to sign a request for them (docs/protocol.md §13.2), so the list's
instance asks them itself: the public page records the address as ``confirming`` and mails it a
link (:func:`subscribe_by_mail`); only following it (:func:`confirm`) makes them a subscriber.
Each issue then reaches them by SMTP through the gateway, one copy each with ``List-Id``,
``List-Unsubscribe`` (the https link of :func:`unsubscribe_url` and a mailto) and
``List-Unsubscribe-Post`` (RFC 2369, RFC 8058), the DKIM signature covering them. A POST to that
link unsubscribes at once (:func:`unsubscribe_by_token`); so does a mail to the mailto address
carrying the token.

The link's token is random, kept on the subscriber's row, and the same in every issue: it says who
leaves, never which issue they read.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import quote

from django.conf import settings
from django.core import signing
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from accounts.validators import clean_display_name, domain_of
from federation import discovery
from gateway.outbound import ListLinks
from mailbox.signals import list_left
from outbox import services as outbox
from pushmail_site.jobs import lock

from .models import Newsletter, Subscriber, SubscriberState

_CONFIRM_SALT = "newsletters.confirm-subscription"
#: The subaddress that takes unsubscribes by mail: ``news+unsubscribe@alpha.example``.
UNSUBSCRIBE_TAG = "unsubscribe"


class LinkProblem(Exception):
    """A confirmation or unsubscribe link that cannot be followed: ``status`` and what to tell the reader."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Asked:
    """What the public page tells whoever typed the address (the same whether a mail went or not)."""

    address: str
    mailed: bool


def subscribe_by_mail(*, newsletter: Newsletter, address: str) -> Asked:
    """Record ``address`` (at an ordinary mail domain) as confirming and mail it the confirmation link.

    Nothing is mailed to an address already subscribed, nor again within
    ``PUSHMAIL_LIST_CONFIRM_RESEND_SECONDS`` of the last link: the form cannot be used to flood an
    address. Raises SendingPaused when the list's owner may not send now.
    """
    now = timezone.now()
    with transaction.atomic():
        subscriber = _locked(newsletter, address)
        if subscriber is None:
            try:
                with transaction.atomic():
                    subscriber = Subscriber.objects.create(
                        newsletter=newsletter,
                        address=address,
                        domain=domain_of(address),
                        state=SubscriberState.CONFIRMING,
                        legacy=True,
                        requested_at=now,
                    )
            except IntegrityError:  # the same address typed twice at once: the other one mails it
                return Asked(address=address, mailed=False)
        elif subscriber.state in (SubscriberState.ACTIVE, SubscriberState.PAUSED):
            return Asked(address=address, mailed=False)
        resend = timedelta(seconds=settings.PUSHMAIL_LIST_CONFIRM_RESEND_SECONDS)
        if subscriber.confirmation_sent_at is not None and now - subscriber.confirmation_sent_at < resend:
            return Asked(address=address, mailed=False)
        subscriber.confirmation_sent_at = now
        subscriber.save(update_fields=["confirmation_sent_at", "changed_at"])
        link = confirm_url(subscriber)
        outbox.send_from_list(
            sender=newsletter.owner,
            list_address=newsletter.address,
            list_name=newsletter.name,
            to=address,
            subject=f"Confirm your subscription to {newsletter.name}"[:200],
            text=(
                f"Someone, probably you, asked to receive {newsletter.name} ({newsletter.address}) at {address}.\n\n"
                f"To confirm, open this link and press Confirm:\n\n{link}\n\n"
                f"The link works for {settings.PUSHMAIL_LIST_CONFIRM_SECONDS // 3600} hours. If you did not ask, "
                "ignore this mail: nothing will be sent to you.\n"
            ),
        )
    return Asked(address=address, mailed=True)


def confirm_token(subscriber: Subscriber) -> str:
    """The signed, timestamped token of a confirmation link: the subscriber's row and address."""
    return signing.dumps({"s": subscriber.pk, "a": subscriber.address}, salt=_CONFIRM_SALT, compress=True)


def confirm_url(subscriber: Subscriber) -> str:
    path = reverse("newsletter-confirm", args=[subscriber.newsletter.slug, confirm_token(subscriber)])
    return discovery.own_base_url() + path


def check_confirmation(*, newsletter: Newsletter, token: str) -> Subscriber:
    """The subscriber a confirmation link names, or LinkProblem: 410 expired, 400 forged or damaged,
    404 for a list or subscriber that is not (or no longer) there."""
    try:
        data = signing.loads(token, salt=_CONFIRM_SALT, max_age=settings.PUSHMAIL_LIST_CONFIRM_SECONDS)
    except signing.SignatureExpired:
        raise LinkProblem(
            410, "This confirmation link has expired. Subscribe again on the list's page to get a new one."
        ) from None
    except signing.BadSignature:
        raise LinkProblem(400, "This confirmation link is not valid: it may be incomplete or altered.") from None
    if not isinstance(data, dict) or not isinstance(data.get("s"), int) or not isinstance(data.get("a"), str):
        raise LinkProblem(400, "This confirmation link is not valid: it may be incomplete or altered.")
    subscriber = Subscriber.objects.filter(newsletter=newsletter, pk=data["s"], address=data["a"]).first()
    if subscriber is None:
        raise LinkProblem(404, "This confirmation link is not for this list, or the subscription no longer exists.")
    return subscriber


def confirm(*, newsletter: Newsletter, token: str) -> Subscriber:
    """The reader followed the link and pressed Confirm: they are a subscriber from now on (idempotent)."""
    found = check_confirmation(newsletter=newsletter, token=token)
    with transaction.atomic():
        subscriber = lock(Subscriber.objects.all(), skip_locked=False).get(pk=found.pk)
        if subscriber.state == SubscriberState.ACTIVE:
            return subscriber
        subscriber.state = SubscriberState.ACTIVE
        subscriber.legacy = True
        subscriber.requested_at = timezone.now()
        subscriber.token = subscriber.token or secrets.token_urlsafe(32)
        subscriber.save(update_fields=["state", "legacy", "requested_at", "token", "changed_at"])
    return subscriber


def unsubscribe_url(subscriber: Subscriber) -> str:
    assert subscriber.token, "only a confirmed subscriber at an ordinary domain has a link"
    return discovery.own_base_url() + reverse(
        "newsletter-unsubscribe", args=[subscriber.newsletter.slug, subscriber.token]
    )


def unsubscribe_mailto(newsletter: Newsletter, subscriber: Subscriber) -> str:
    local, _, domain = newsletter.address.rpartition("@")
    return f"mailto:{local}+{UNSUBSCRIBE_TAG}@{domain}?subject={quote('unsubscribe ' + (subscriber.token or ''))}"


def subscriber_by_token(*, slug: str, token: str) -> Subscriber:
    """The subscriber a one-click link names, or LinkProblem 404 (a token is never guessed: 256 bits)."""
    found = Subscriber.objects.select_related("newsletter").filter(token=token, newsletter__slug=slug)
    subscriber = found.first() if 20 <= len(token) <= 64 else None
    if subscriber is None:
        raise LinkProblem(404, "This unsubscribe link is not valid: no subscription has it.")
    return subscriber


def unsubscribe_by_token(*, slug: str, token: str) -> Subscriber:
    """The one-click unsubscribe (RFC 8058): effective at once, idempotent; counted against the list."""
    found = subscriber_by_token(slug=slug, token=token)
    with transaction.atomic():
        subscriber = lock(Subscriber.objects.select_related("newsletter"), skip_locked=False).get(pk=found.pk)
        if subscriber.state == SubscriberState.UNSUBSCRIBED:
            return subscriber
        subscriber.state = SubscriberState.UNSUBSCRIBED
        subscriber.requested_at = timezone.now()
        subscriber.save(update_fields=["state", "requested_at", "changed_at"])
        list_left.send(sender=Subscriber, list_address=subscriber.newsletter.address, reader=subscriber.address)
    return subscriber


_TOKEN_IN_SUBJECT = re.compile(r"\bunsubscribe\s+([A-Za-z0-9_-]{20,64})\b", re.IGNORECASE)


def _list_of_unsubscribe_address(address: str) -> str | None:
    """``news@alpha.example`` for ``news+unsubscribe@alpha.example``, else None."""
    local, _, domain = address.rpartition("@")
    base, plus, tag = local.rpartition("+")
    return f"{base}@{domain}" if plus and base and tag == UNSUBSCRIBE_TAG else None


def is_unsubscribe_address(address: str) -> bool:
    """Whether ``address`` is a list's unsubscribe address here (answers gateway's hook, at RCPT TO)."""
    list_address = _list_of_unsubscribe_address(address)
    return list_address is not None and Newsletter.objects.filter(address=list_address).exists()


def unsubscribe_by_mail(*, address: str, subject: str) -> bool:
    """A mail to a list's unsubscribe address (the List-Unsubscribe mailto): its subject's token, if it is
    one of that list's subscribers', unsubscribes them at once. False when it names none."""
    list_address = _list_of_unsubscribe_address(address)
    found = _TOKEN_IN_SUBJECT.search(subject)
    if list_address is None or found is None:
        return False
    newsletter = Newsletter.objects.filter(address=list_address).first()
    if newsletter is None:
        return False
    try:
        unsubscribe_by_token(slug=newsletter.slug, token=found[1])
    except LinkProblem:
        return False
    return True


def list_id(newsletter: Newsletter) -> str:
    """The List-Id (RFC 2919): the list's name, and its address with a dot for the at sign."""
    name = " ".join(clean_display_name(newsletter.name).replace('"', "").replace("\\", "").split())
    return f'"{name}" <{newsletter.address.replace("@", ".")}>'


def links_for(*, list_address: str, recipients: list[str]) -> dict[str, ListLinks]:
    """The links of each of ``recipients`` still subscribed by mail (answers gateway.outbound.list_links)."""
    newsletter = Newsletter.objects.filter(address=list_address).first()
    if newsletter is None:
        return {}
    identity = list_id(newsletter)
    found = Subscriber.objects.filter(
        newsletter=newsletter, address__in=recipients, state=SubscriberState.ACTIVE, legacy=True, token__isnull=False
    )
    return {
        subscriber.address: ListLinks(
            list_id=identity,
            unsubscribe_url=unsubscribe_url(subscriber),
            unsubscribe_mailto=unsubscribe_mailto(newsletter, subscriber),
        )
        for subscriber in found
    }


def _locked(newsletter: Newsletter, address: str) -> Subscriber | None:
    return lock(Subscriber.objects.all(), skip_locked=False).filter(newsletter=newsletter, address=address).first()
