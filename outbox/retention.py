"""How long recipient domains are offered a body: until every one of them has fetched it."""

from __future__ import annotations

from uuid import UUID

from django.db.models import Count, F, Q
from django.utils import timezone

from accounts.models import Domain

from .models import BodyFetch, Message, Recipient, RecipientStatus


def mark_fetched_by_all() -> int:
    """Stop offering to recipient domains the bodies that every one of them has fetched.

    A domain counts when it is remote and has a recipient not rejected (pending
    ones may still be accepted and fetch). From then on the body endpoint answers
    410 "fetched"; attachments stay offered until retention ends. Nothing of the
    sender's copy is deleted: its text, HTML and attachments stay for as long as
    the message is in the sender's mailbox. Returns how many messages were marked.
    """
    local_names = list(Domain.objects.values_list("name", flat=True))
    done = [message_id for message_id in _candidates(local_names) if _fetched_by_all(message_id, local_names)]
    return Message.objects.filter(pk__in=done, fetched_by_all_at__isnull=True).update(fetched_by_all_at=timezone.now())


def _candidates(local_names: list[str]) -> list[UUID]:
    """Messages still offered that have been fetched at least as many times as they have reading domains."""
    readers = ~Q(recipients__status=RecipientStatus.REJECTED) & ~Q(recipients__domain__in=local_names)
    return list(
        Message.objects.filter(fetched_by_all_at__isnull=True, withdrawn_at__isnull=True, expires_at__gt=timezone.now())
        .annotate(
            remote=Count("recipients__domain", filter=readers, distinct=True),
            fetched=Count("fetches__domain", distinct=True),
        )
        .filter(remote__gt=0, fetched__gte=F("remote"))
        .values_list("pk", flat=True)
    )


def _fetched_by_all(message_id: UUID, local_names: list[str]) -> bool:
    # The counts only narrow it down: the domains themselves must be the same.
    remote = set(
        Recipient.objects.filter(message_id=message_id)
        .exclude(status=RecipientStatus.REJECTED)
        .exclude(domain__in=local_names)
        .values_list("domain", flat=True)
    )
    fetched = set(BodyFetch.objects.filter(message_id=message_id).values_list("domain", flat=True))
    return remote <= fetched
