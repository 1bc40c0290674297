"""The progressive step, receiving side: a domain learned to run Pushmail from mail received by SMTP.

A message received by SMTP that carries ``Pushmail: DOMAIN``, with an SPF or
DKIM pass aligned with DOMAIN, is a hint (the gateway checks that much, then
calls :func:`heard_pushmail_header`). The hint becomes a ``LearnedDomain`` row;
:func:`check_learned_domain` then runs discovery of the domain past every cached
answer. Only a valid discovery document listing the domain confirms it: from
then on every process sends to it over the federation API. The header alone is
never trusted (docs/protocol.md, "The Pushmail header").
"""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from pushmail_site.jobs import claim_until, enqueue, lock, overdue_ids
from pushmail_site.states import retry_delay, retry_window, transition

from . import discovery
from .models import LearnedDomain, LearnedDomainState
from .states import LEARNED

__all__ = ["heard_pushmail_header", "check_learned_domain", "requeue_due_learned_domains"]

# A domain heard of again is checked again only after this long: a stream of mail from one domain
# makes at most one discovery request per period (a legacy answer is cached as long).
RECHECK_AFTER = timedelta(seconds=discovery.LEGACY_CACHE_SECONDS)


@shared_task(name="federation.check_learned_domain")
def check_learned_domain_task(learned_id: int) -> None:
    check_learned_domain(learned_id)


@shared_task(name="federation.requeue_due_learned_domains")
def requeue_due_learned_domains_task() -> int:
    return requeue_due_learned_domains()


def requeue_due_learned_domains(*, limit: int = 1000) -> int:
    """Queue every check that is due, whatever the broker holds."""
    due = overdue_ids(
        LearnedDomain.objects.filter(state=LearnedDomainState.PENDING), task=check_learned_domain_task, limit=limit
    )
    for learned_id in due:
        enqueue(check_learned_domain_task, learned_id)
    return len(due)


def heard_pushmail_header(*, domain: str, sender: str, authenticated_by: str) -> LearnedDomain | None:
    """Note that an authenticated SMTP message from ``sender`` said ``domain`` runs Pushmail.

    The caller has checked that ``authenticated_by`` (an SPF or DKIM pass) is
    aligned with ``domain``. Queues a discovery check after commit unless one
    ran within :data:`RECHECK_AFTER`. Returns None for a domain hosted here.
    """
    domain = domain.lower()
    if discovery.is_local(domain):
        return None
    now = timezone.now()
    with transaction.atomic():
        learned = lock(LearnedDomain.objects, skip_locked=False).filter(domain=domain).first()
        if learned is None:
            try:
                with transaction.atomic():
                    learned = LearnedDomain.objects.create(
                        domain=domain,
                        heard_from=sender[:320],
                        authenticated_by=authenticated_by[:300],
                        first_heard_at=now,
                        last_heard_at=now,
                        next_attempt_at=now,
                    )
            except IntegrityError:  # heard at the same moment by another connection: that one checks
                return LearnedDomain.objects.filter(domain=domain).first()
            enqueue(check_learned_domain_task, learned.pk)
            return learned
        LearnedDomain.objects.filter(pk=learned.pk).update(
            heard_from=sender[:320],
            authenticated_by=authenticated_by[:300],
            last_heard_at=now,
            times_heard=F("times_heard") + 1,
        )
        learned.refresh_from_db()
        settled = learned.state != LearnedDomainState.PENDING
        if settled and (learned.checked_at is None or learned.checked_at <= now - RECHECK_AFTER):
            transition(
                learned,
                LEARNED,
                LearnedDomainState.PENDING,
                fields={"next_attempt_at": now, "attempts": 0, "last_error": ""},
            )
            enqueue(check_learned_domain_task, learned.pk)
        return learned


def check_learned_domain(learned_id: int) -> None:
    """Run discovery of a learned domain past every cache; confirm it, or ignore the header. Idempotent."""
    learned = _claim(learned_id)
    if learned is None:
        return
    try:
        instance = discovery.rediscover(learned.domain)
    except discovery.DiscoveryError as exc:
        _failed_attempt(learned, str(exc))
        return
    now = timezone.now()
    if instance is None:
        transition(
            learned,
            LEARNED,
            LearnedDomainState.NOT_PUSHMAIL,
            fields={"checked_at": now, "next_attempt_at": None, "last_error": "discovery found no Pushmail instance"},
        )
        return
    transition(
        learned,
        LEARNED,
        LearnedDomainState.CONFIRMED,
        fields={"checked_at": now, "confirmed_at": now, "next_attempt_at": None, "last_error": ""},
    )


def _claim(learned_id: int) -> LearnedDomain | None:
    with transaction.atomic():
        learned = (
            lock(LearnedDomain.objects)
            .filter(pk=learned_id, state=LearnedDomainState.PENDING, next_attempt_at__lte=timezone.now())
            .first()
        )
        if learned is None:
            return None
        learned.attempts += 1
        learned.next_attempt_at = claim_until()
        learned.save(update_fields=["attempts", "next_attempt_at"])
        return learned


def _failed_attempt(learned: LearnedDomain, error: str) -> None:
    now = timezone.now()
    if now >= learned.last_heard_at + retry_window(LEARNED, LearnedDomainState.PENDING):
        transition(
            learned,
            LEARNED,
            LearnedDomainState.NOT_PUSHMAIL,
            fields={
                "checked_at": now,
                "next_attempt_at": None,
                "last_error": f"discovery never answered: {error}"[:500],
            },
        )
        return
    delay = retry_delay(LEARNED, LearnedDomainState.PENDING, attempts=learned.attempts)
    transition(
        learned,
        LEARNED,
        LearnedDomainState.PENDING,
        fields={"next_attempt_at": now + delay, "last_error": error[:500]},
    )
    enqueue(check_learned_domain_task, learned.pk, countdown=delay.total_seconds())
