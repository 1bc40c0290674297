"""The sender must stay online: an origin that stops answering while it holds mail for users here
loses reputation, and one that never comes back is flagged as gone.

Fetches tell us first (``mailbox.signals.body_unavailable`` and ``body_fetched``, sent after the
fetch commits, in the worker). For mail nobody opens, no fetch asks; so a periodic check
(``check_reachability``, Celery beat) asks the discovery document of each origin holding unopened
local mail that has not been reached lately, or is unreachable now. It runs in the worker: a web
request never waits on another instance for this.

An outage opens when an origin first fails to answer (``outages`` + 1, ``unreachable_since``) and
closes when it answers again (its length is added to ``downtime_seconds``); the score counts both
(reputation/scores.py). Past ``PUSHMAIL_ORIGIN_GONE_AFTER_HOURS`` the origin is flagged ``gone``,
with the number of local users holding unopened mail from it, and the flag is a decision the
domain admin sees; it clears when the origin answers again.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from accounts.models import User
from federation import discovery
from mailbox.models import InboxEntry, RemoteMessage
from mailbox.states import BODY_AT_SENDER
from pushmail_site.jobs import lock

from . import scores
from .models import DecisionKind, OriginReputation

log = logging.getLogger(__name__)

#: An origin holding unopened mail is asked again when it was last reached longer ago than this.
PROBE_EVERY = timedelta(hours=1)
#: At most this many origins are asked per check (each may take PUSHMAIL_HTTP_TIMEOUT).
PROBES_PER_CHECK = 20


def _row(domain: str) -> OriginReputation:
    """The origin's row, locked (created if need be)."""
    OriginReputation.objects.get_or_create(domain=domain)
    return lock(OriginReputation.objects.all(), skip_locked=False).get(domain=domain)


@transaction.atomic
def note_unreachable(*, origin: str, error: str = "") -> None:
    """The origin did not hand over a body it holds for a user here: an outage starts (once)."""
    rep = _row(origin)
    if rep.unreachable_since is not None:
        return
    rep.unreachable_since = timezone.now()
    rep.outages += 1
    rep.save(update_fields=["unreachable_since", "outages", "updated_at"])
    log.info("origin %s is unreachable (%s)", origin, error[:200])
    scores.rescore_origin(origin)


def note_reached(*, origin: str) -> None:
    """The origin answered: the usual case is one UPDATE; an outage, if one was open, closes."""
    now = timezone.now()
    if OriginReputation.objects.filter(domain=origin, unreachable_since__isnull=True).update(last_reached_at=now):
        return
    with transaction.atomic():
        rep = _row(origin)
        rep.last_reached_at = now
        fields = ["last_reached_at", "updated_at"]
        if rep.unreachable_since is not None:
            rep.downtime_seconds += int((now - rep.unreachable_since).total_seconds())
            rep.unreachable_since = None
            rep.gone = False
            fields += ["downtime_seconds", "unreachable_since", "gone"]
            scores.end_decisions(rep, [DecisionKind.GONE])
        rep.save(update_fields=fields)
        if len(fields) > 2:
            scores.rescore_origin(origin)


def note_fetched(*, remote_id: int) -> None:
    origin = RemoteMessage.objects.filter(pk=remote_id).values_list("origin_domain", flat=True).first()
    if origin is not None:
        note_reached(origin=origin)


def _unopened() -> Exists:
    return Exists(InboxEntry.objects.filter(remote=OuterRef("pk"), opened_at__isnull=True))


def holding_unopened_mail() -> list[str]:
    """Origins whose bodies are still at the sender for at least one local reader who has not opened them."""
    now = timezone.now()
    held = RemoteMessage.objects.filter(state__in=BODY_AT_SENDER, expires_at__gt=now).filter(_unopened())
    return list(held.order_by().values_list("origin_domain", flat=True).distinct())


def users_waiting_on(origin: str) -> int:
    """Local users holding unopened mail whose body is still at ``origin``."""
    return (
        InboxEntry.objects.filter(
            remote__origin_domain=origin,
            remote__state__in=BODY_AT_SENDER,
            remote__expires_at__gt=timezone.now(),
            opened_at__isnull=True,
        )
        .values("owner_id")
        .distinct()
        .count()
    )


def _answers(domain: str) -> tuple[bool, str]:
    try:
        instance = discovery.discover(domain, refresh=True)
    except discovery.DiscoveryError as exc:
        return False, str(exc)
    if instance is None:
        return False, f"{domain} no longer runs Pushmail"
    return True, ""


def check_reachability(*, probes: int = PROBES_PER_CHECK) -> dict[str, int]:
    """The periodic check: ask origins that hold unopened mail here, note how long they have been
    unreachable, and flag those gone for PUSHMAIL_ORIGIN_GONE_AFTER_HOURS."""
    now = timezone.now()
    holding = holding_unopened_mail()
    known = {rep.domain: rep for rep in OriginReputation.objects.filter(domain__in=holding)}

    def due(domain: str) -> bool:
        rep = known.get(domain)
        if rep is None or rep.unreachable_since is not None or rep.last_reached_at is None:
            return True
        return now - rep.last_reached_at >= PROBE_EVERY

    # The unreachable first, then the longest unheard-of.
    order = sorted(
        (d for d in holding if due(d)),
        key=lambda d: (
            (known[d].unreachable_since is None, known[d].last_reached_at or now) if d in known else (True, now)
        ),
    )
    asked = unreachable = flagged = 0
    for domain in order[:probes]:
        asked += 1
        answered, error = _answers(domain)
        if answered:
            note_reached(origin=domain)
            continue
        unreachable += 1
        note_unreachable(origin=domain, error=error)
        flagged += _flag_if_gone(domain)
    return {"holding": len(holding), "asked": asked, "unreachable": unreachable, "flagged": flagged}


@transaction.atomic
def _flag_if_gone(domain: str) -> int:
    rep = _row(domain)
    if rep.unreachable_since is None:
        return 0
    rep.users_notified = users_waiting_on(domain)
    fields = ["users_notified", "updated_at"]
    hours = (timezone.now() - rep.unreachable_since).total_seconds() / 3600
    newly = not rep.gone and hours >= settings.PUSHMAIL_ORIGIN_GONE_AFTER_HOURS
    if newly:
        rep.gone = True
        fields.append("gone")
        since = rep.unreachable_since.strftime("%Y-%m-%d %H:%M UTC")
        reason = (
            f"unreachable since {since} ({hours:.1f} hours) while holding unopened mail "
            f"for {rep.users_notified} local users"
        )
        scores.start_decision(rep, DecisionKind.GONE, reason, rep.score)
    rep.save(update_fields=fields)
    scores.rescore_origin(domain)
    return int(newly)


@transaction.atomic
def clear_gone(*, origin_id: int, by: object = None) -> None:
    """An admin clears the "gone" flag (it returns if the origin stays unreachable past the limit again)."""
    rep = lock(OriginReputation.objects.all(), skip_locked=False).filter(pk=origin_id).first()
    if rep is None:
        return
    scores.end_decisions(rep, [DecisionKind.GONE], by=by if isinstance(by, User) else None)
    if rep.unreachable_since is not None:
        # The outage so far is kept in the score; the clock for "gone" starts again.
        rep.downtime_seconds += int((timezone.now() - rep.unreachable_since).total_seconds())
        rep.unreachable_since = timezone.now()
    rep.gone = False
    rep.save(update_fields=["gone", "downtime_seconds", "unreachable_since", "updated_at"])
