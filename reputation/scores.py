"""Reputation of sender addresses and origin domains: counters, the score they make, what it decides.

Counters
    Each origin domain (``OriginReputation``) and each sender address (``SenderReputation``) keeps
    counters, bumped as things happen: ``reads`` (a local reader opened one of its messages for the
    first time: the ``message_read`` signal), ``spam_reports`` and ``not_spam`` (reports here; a
    reader who changes their mind moves one count to the other) with their weights ``spam_weight``
    and ``not_spam_weight`` (each report counts its reporter's trust, as in a verdict:
    reputation.trust, so a new account's report weighs a quarter, and the score uses the weights),
    ``unsubscribes`` (a reader here left one of its lists: the ``list_left`` signal; a list's issues
    come from the list's address, so a list counts its own, and its origin the sum),
    ``replies`` (local users who have written to the sender, refreshed by a periodic sweep from the
    outbox's recipients; an origin's is the sum of its senders'), and for origins ``outages`` and
    ``downtime_seconds`` (reputation/reachability.py). The score is recomputed from these counters
    alone, never from the history.

The score
    ::

        good  = reads + 3 × replies + 2 × not_spam (weighted)
        bad   = 9 × spam_reports (weighted) + 3 × unsubscribes + 2 × outages + hours unreachable (at most 72)
        score = (good + 1) / (good + bad + 2)

    the mean of a Beta distribution with one prior success and one prior failure (the "beta
    reputation" of Jøsang and Ismail): 0.5 with no history, towards 1 as mail is read and answered,
    towards 0 as it is reported or its origin stops answering while holding mail for users here.
    A report weighs 9 opens: an origin where a fifth of the readers report its mail falls to about
    0.36, one where half of them do to about 0.18; legitimate bulk mail that one reader in a thousand
    reports stays near 1. Leaving a list weighs a third of a report: it says the mail is no longer
    wanted, not that it never was; a list that many readers here leave falls as one they report.
    A reply weighs 3: writing back is the strongest sign the mail was wanted.
    An admin may pin a score, which then replaces the computed one.

What the score decides (each decision is recorded with its reason, ``ReputationDecision``)
    - Below ``PUSHMAIL_REPUTATION_SPAM_BELOW`` (0.35), once it has drawn
      ``PUSHMAIL_REPUTATION_MIN_REPORTS`` (5) spam reports (weighted) since an admin last lifted its decisions,
      a sender's or an origin's new mail is judged spam on arrival ("mail from … is often reported
      here"); known correspondents still get it in their Inbox (mailbox/spam.py). An origin's rate
      is lowered to a quarter of the new-origin rate meanwhile.
    - Below ``PUSHMAIL_REPUTATION_REFUSE_BELOW`` (0.2), with twice as many reports, an origin's
      notifications are refused: ``403 poor_reputation`` (docs/protocol.md §5.2), until an admin
      lifts it.
    - The rate limit: an origin with no history may send ``PUSHMAIL_NEW_ORIGIN_RATE_PER_MINUTE``
      (60) notifications a minute; each point of ``good − bad`` adds a tenth of that, up to
      ``PUSHMAIL_ORIGIN_RATE_PER_MINUTE``. An admin's OriginPolicy rate overrides it.
    A decision ends by itself when the score recovers; an admin can lift it, reset the counters,
    pin a score, or allow a sender (never filed to Spam automatically).

Costs: a first open bumps two counters (two upserts); a report, an outage or a return bumps and
rescores its rows at once (so a refusal takes effect with the report that earns it); reads and
replies are rescored by ``refresh_scores`` (Celery beat, every PUSHMAIL_REPUTATION_SWEEP_SECONDS).
``check_origin`` and ``reason_for_new`` read a per-process cache kept for ``STANDING_TTL`` seconds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.db import connection, models, transaction
from django.db.models import Count, F, OuterRef, Subquery, Sum, Value
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from accounts.models import User
from accounts.validators import domain_of
from mailbox.models import RemoteMessage
from outbox.models import Recipient
from pushmail_site.jobs import lock

from .models import DecisionKind, OriginReputation, ReputationDecision, SenderReputation

READ_WEIGHT = 1
REPLY_WEIGHT = 3
NOT_SPAM_WEIGHT = 2
REPORT_WEIGHT = 9
UNSUBSCRIBE_WEIGHT = 3
OUTAGE_WEIGHT = 2
DOWNTIME_CAP_HOURS = 72.0
RATE_STEP = 10  # points of good − bad that add one new-origin rate to an origin's limit
STANDING_TTL = 10  # seconds a web process may act on an origin's standing before reading it again

REFUSAL_DETAIL = (
    "notifications from {domain} are refused by this instance: its mail is often reported as spam here. "
    "An admin of this instance can lift the refusal."
)


# --- The formula ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Counters:
    reads: int = 0
    replies: int = 0
    not_spam: float = 0  # weighted, as the reports (reputation.trust)
    spam_reports: float = 0
    unsubscribes: int = 0
    outages: int = 0
    downtime_hours: float = 0.0

    @property
    def good(self) -> float:
        return READ_WEIGHT * self.reads + REPLY_WEIGHT * self.replies + NOT_SPAM_WEIGHT * self.not_spam

    @property
    def bad(self) -> float:
        downtime = min(self.downtime_hours, DOWNTIME_CAP_HOURS)
        return (
            REPORT_WEIGHT * self.spam_reports
            + UNSUBSCRIBE_WEIGHT * self.unsubscribes
            + OUTAGE_WEIGHT * self.outages
            + downtime
        )

    @property
    def score(self) -> float:
        return (self.good + 1) / (self.good + self.bad + 2)


def new_origin_rate() -> int:
    return max(1, min(settings.PUSHMAIL_NEW_ORIGIN_RATE_PER_MINUTE, settings.PUSHMAIL_ORIGIN_RATE_PER_MINUTE))


def lowered_rate() -> int:
    return max(1, new_origin_rate() // 4)


def rate_for(counters: Counters) -> int:
    """Notifications per minute an origin with these counters earned (its mail not filed to Spam)."""
    new = new_origin_rate()
    net = max(0.0, counters.good - counters.bad)
    return min(settings.PUSHMAIL_ORIGIN_RATE_PER_MINUTE, int(new * (1 + net / RATE_STEP)))


def origin_counters(rep: OriginReputation, *, now: datetime | None = None) -> Counters:
    downtime = float(rep.downtime_seconds)
    if rep.unreachable_since is not None:
        downtime += max(0.0, ((now or timezone.now()) - rep.unreachable_since).total_seconds())
    return Counters(
        reads=rep.reads,
        replies=rep.replies,
        not_spam=rep.not_spam_weight,
        spam_reports=rep.spam_weight,
        unsubscribes=rep.unsubscribes,
        outages=rep.outages,
        downtime_hours=downtime / 3600,
    )


def sender_counters(rep: SenderReputation) -> Counters:
    return Counters(
        reads=rep.reads,
        replies=rep.replies,
        not_spam=rep.not_spam_weight,
        spam_reports=rep.spam_weight,
        unsubscribes=rep.unsubscribes,
    )


# --- What the web processes read: an origin's standing, cached briefly ------------------------


@dataclass(frozen=True)
class Standing:
    refused: bool
    spam_filed: bool
    rate: int


def _standing_key(domain: str) -> str:
    return f"pm-origin-standing:{domain}"


def origin_standing(domain: str) -> Standing:
    """Whether ``domain`` is refused or filed to Spam, and the rate it earned; cached per process."""
    cache = caches["local"]
    cached: Standing | None = cache.get(_standing_key(domain))
    if cached is None:
        rep = OriginReputation.objects.filter(domain=domain).first()
        if rep is None:
            cached = Standing(refused=False, spam_filed=False, rate=new_origin_rate())
        else:
            rate = lowered_rate() if rep.spam_filed else rate_for(origin_counters(rep))
            cached = Standing(refused=rep.refused, spam_filed=rep.spam_filed, rate=rate)
        cache.set(_standing_key(domain), cached, STANDING_TTL)
    return cached


def forget_standing(domain: str) -> None:
    caches["local"].delete(_standing_key(domain))


def reason_for_new(remote: RemoteMessage) -> str:
    """Why new mail from this sender or origin goes straight to Spam here, or ""."""
    sender = remote.sender.lower()
    known = SenderReputation.objects.filter(address=sender).values_list("spam_filed", "allowed").first()
    return _reason(remote, sender, known)


def reason_from(remote: RemoteMessage, known: tuple[bool, bool] | None) -> str:
    """:func:`reason_for_new` when the sender's ``(spam_filed, allowed)`` was read already (None: no row)."""
    return _reason(remote, remote.sender.lower(), known)


def reasons_for_new(remotes: Sequence[RemoteMessage]) -> list[str]:
    """:func:`reason_for_new` for several messages: their senders looked up in one query."""
    senders = {remote.sender.lower() for remote in remotes}
    rows = SenderReputation.objects.filter(address__in=senders).values_list("address", "spam_filed", "allowed")
    known = {address: (spam_filed, allowed) for address, spam_filed, allowed in rows}
    return [_reason(remote, remote.sender.lower(), known.get(remote.sender.lower())) for remote in remotes]


def _reason(remote: RemoteMessage, sender: str, known: tuple[bool, bool] | None) -> str:
    if known is not None:
        spam_filed, allowed = known
        if allowed:
            return ""
        if spam_filed:
            return f"mail from {sender} is often reported here"
    if origin_standing(remote.origin_domain).spam_filed:
        return f"mail from {remote.origin_domain} is often reported here"
    return ""


# --- Counting -------------------------------------------------------------------------------


def _bump(model: type[models.Model], key: dict[str, str], increments: dict[str, float]) -> None:
    """Add ``increments`` to the row found by ``key`` (its first item is the unique column), creating
    it if need be, and mark it for rescoring: one statement."""
    _bump_many(model, [(key, increments)])


def _bump_many(model: type[models.Model], rows: list[tuple[dict[str, str], dict[str, float]]]) -> None:
    """_bump for several rows in one statement: each ``(key, increments)`` names a different row
    (a statement may not update one row twice), and every row has the same columns."""
    if not rows:
        return
    quote = connection.ops.quote_name
    table = quote(model._meta.db_table)
    now = timezone.now()
    first_key, first_increments = rows[0]
    names = [*first_key, *first_increments, "dirty", "updated_at"]
    columns = ", ".join(quote(name) for name in names)
    marks = ", ".join(["(" + ", ".join(["%s"] * len(names)) + ")"] * len(rows))
    params: list[Any] = []
    for key, increments in rows:
        params += [*key.values(), *increments.values(), True, now]
    sets = [f"{quote(name)} = {table}.{quote(name)} + EXCLUDED.{quote(name)}" for name in first_increments]
    sets += [f"{quote('dirty')} = EXCLUDED.{quote('dirty')}", f"{quote('updated_at')} = EXCLUDED.{quote('updated_at')}"]
    conflict = quote(next(iter(first_key)))
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({columns}) VALUES {marks} "  # noqa: S608 - names are ours, values bound
            f"ON CONFLICT ({conflict}) DO UPDATE SET {', '.join(sets)}",
            params,
        )


def _bump_both(*, origin: str, sender: str, increments: dict[str, float]) -> None:
    sender = sender.lower()
    _bump(OriginReputation, {"domain": origin}, increments)
    _bump(SenderReputation, {"address": sender, "domain": domain_of(sender)}, increments)


def note_read(*, origin: str, sender: str) -> None:
    """A local reader opened a message of this sender for the first time (rescored by the sweep)."""
    note_reads([(origin, sender)])


def note_reads(reads: list[tuple[str, str]]) -> None:
    """First reads, each ``(origin, sender)``: two statements whatever their number, the reads
    summed per origin and per sender (rescored by the sweep)."""
    origins = Counter(origin for origin, _ in reads)
    senders = Counter(sender.lower() for _, sender in reads)
    _bump_many(OriginReputation, [({"domain": origin}, {"reads": n}) for origin, n in sorted(origins.items())])
    _bump_many(
        SenderReputation,
        [({"address": sender, "domain": domain_of(sender)}, {"reads": n}) for sender, n in sorted(senders.items())],
    )


@transaction.atomic
def note_report(*, origin: str, sender: str, spam: bool, weight: float = 1.0, replaces: float | None = None) -> None:
    """A reader's "Report spam" or "Not spam", counting ``weight`` (its reporter's trust, reputation.trust);
    ``replaces`` is the weight of their opposite report it replaces, if any.

    The scores use the weights: a handful of new accounts reporting a sender count a quarter
    each, so they cannot sink its score, nor file its mail to Spam, as trusted readers would.
    Rescored at once, so that the report that earns a refusal is the one that starts it.
    """
    counted, other = ("spam_reports", "not_spam") if spam else ("not_spam", "spam_reports")
    weighed, other_weighed = ("spam_weight", "not_spam_weight") if spam else ("not_spam_weight", "spam_weight")
    _bump_both(origin=origin, sender=sender, increments={counted: 1, weighed: weight})
    if replaces is not None:
        undo = {
            other: Greatest(F(other) - 1, Value(0)),
            other_weighed: Greatest(F(other_weighed) - Value(replaces), Value(0.0)),
        }
        OriginReputation.objects.filter(domain=origin).update(**undo)
        SenderReputation.objects.filter(address=sender.lower()).update(**undo)
    rescore_sender(sender.lower())
    rescore_origin(origin)


@transaction.atomic
def note_unsubscribe(*, origin: str, sender: str) -> None:
    """A reader here left the list ``sender`` (at ``origin``): it counts against both, rescored at once."""
    _bump_both(origin=origin, sender=sender, increments={"unsubscribes": 1})
    rescore_sender(sender.lower())
    rescore_origin(origin)


# --- Rescoring and the decisions it makes ----------------------------------------------------


def _score(computed: float, pinned: float | None) -> float:
    return computed if pinned is None else pinned


def _evidence(rep: OriginReputation | SenderReputation) -> float:
    """Spam reports since an admin last lifted its decisions, weighted by their reporters' trust."""
    return max(0.0, rep.spam_weight - rep.weight_at_lift)


def _standing_decision(
    origin: OriginReputation, kind: str, sender: SenderReputation | None
) -> ReputationDecision | None:
    return ReputationDecision.objects.filter(origin=origin, sender=sender, kind=kind, ended_at__isnull=True).first()


def start_decision(
    origin: OriginReputation, kind: str, reason: str, score: float, sender: SenderReputation | None = None
) -> None:
    if _standing_decision(origin, kind, sender) is None:
        ReputationDecision.objects.create(origin=origin, sender=sender, kind=kind, reason=reason[:400], score=score)


def end_decisions(
    origin: OriginReputation, kinds: list[str], *, sender: SenderReputation | None = None, by: User | None = None
) -> int:
    standing = ReputationDecision.objects.filter(origin=origin, sender=sender, kind__in=kinds, ended_at__isnull=True)
    return standing.update(ended_at=timezone.now(), reversed_by=by)


def _why(rep: OriginReputation | SenderReputation, score: float) -> str:
    pinned = " (pinned by an admin)" if rep.pinned_score is not None else ""
    weighed = "" if rep.spam_weight == rep.spam_reports else f" (weighing {rep.spam_weight:.4g} by trust)"
    left = f", {rep.unsubscribes} readers who left its lists" if rep.unsubscribes else ""
    return (
        f"{rep.spam_reports} spam reports{weighed}{left} against {rep.reads} opens, {rep.replies} replies and "
        f"{rep.not_spam} 'not spam' here: score {score:.2f}{pinned}"
    )


@transaction.atomic
def rescore_origin(domain: str) -> OriginReputation | None:
    """Recompute an origin's score from its counters, and start or end the decisions it makes."""
    rep = lock(OriginReputation.objects.all(), skip_locked=False).filter(domain=domain).first()
    if rep is None:
        return None
    counters = origin_counters(rep)
    rep.score = counters.score
    score = _score(rep.score, rep.pinned_score)
    evidence = _evidence(rep)
    spam_filed = (
        score < settings.PUSHMAIL_REPUTATION_SPAM_BELOW and evidence >= settings.PUSHMAIL_REPUTATION_MIN_REPORTS
    )
    refused = (
        score < settings.PUSHMAIL_REPUTATION_REFUSE_BELOW and evidence >= 2 * settings.PUSHMAIL_REPUTATION_MIN_REPORTS
    )
    why = _why(rep, score)
    if spam_filed and not rep.spam_filed:
        below = settings.PUSHMAIL_REPUTATION_SPAM_BELOW
        start_decision(rep, DecisionKind.SPAM, f"{why}, below {below}: new mail from {domain} goes to Spam", score)
        lowered = f"rate lowered to {lowered_rate()} notifications per minute (was {rate_for(counters)})"
        start_decision(rep, DecisionKind.RATE, f"{why}: {lowered}", score)
    elif rep.spam_filed and not spam_filed:
        end_decisions(rep, [DecisionKind.SPAM, DecisionKind.RATE])
    if refused and not rep.refused:
        below = settings.PUSHMAIL_REPUTATION_REFUSE_BELOW
        refusal = "notifications refused (403 poor_reputation) until an admin lifts it"
        start_decision(rep, DecisionKind.REFUSED, f"{why}, below {below}: {refusal}", score)
    elif rep.refused and not refused:
        end_decisions(rep, [DecisionKind.REFUSED])
    rep.spam_filed, rep.refused, rep.dirty = spam_filed, refused, False
    rep.save(update_fields=["score", "spam_filed", "refused", "dirty", "updated_at"])
    forget_standing(domain)
    transaction.on_commit(lambda: forget_standing(domain))
    return rep


@transaction.atomic
def rescore_sender(address: str) -> SenderReputation | None:
    """The same for a sender address: its new mail to Spam, or not."""
    rep = lock(SenderReputation.objects.all(), skip_locked=False).filter(address=address).first()
    if rep is None:
        return None
    rep.score = sender_counters(rep).score
    score = _score(rep.score, rep.pinned_score)
    spam_filed = (
        not rep.allowed
        and score < settings.PUSHMAIL_REPUTATION_SPAM_BELOW
        and _evidence(rep) >= settings.PUSHMAIL_REPUTATION_MIN_REPORTS
    )
    if spam_filed != rep.spam_filed:
        origin, _ = OriginReputation.objects.get_or_create(domain=rep.domain)
        if spam_filed:
            below = settings.PUSHMAIL_REPUTATION_SPAM_BELOW
            reason = f"{_why(rep, score)}, below {below}: new mail from {address} goes to Spam"
            start_decision(origin, DecisionKind.SPAM, reason, score, sender=rep)
        else:
            end_decisions(origin, [DecisionKind.SPAM], sender=rep)
    rep.spam_filed, rep.dirty = spam_filed, False
    rep.save(update_fields=["score", "spam_filed", "dirty", "updated_at"])
    return rep


def refresh_replies() -> None:
    """Replies: how many local users have written to each sender (and to each origin's senders).

    Two statements: a correlated count per sender row (outbox recipients are indexed by address),
    then each origin's sum of its senders'. Rows whose count changed are marked for rescoring.
    """
    wrote_to = (
        Recipient.objects.filter(address=OuterRef("address"))
        .order_by()
        .values("address")
        .annotate(n=Count("message__sender", distinct=True))
        .values("n")
    )
    replies = Coalesce(Subquery(wrote_to, output_field=models.IntegerField()), 0)
    SenderReputation.objects.exclude(replies=replies).update(replies=replies, dirty=True)
    per_origin = (
        SenderReputation.objects.filter(domain=OuterRef("domain"))
        .order_by()
        .values("domain")
        .annotate(n=Sum("replies"))
        .values("n")
    )
    total = Coalesce(Subquery(per_origin, output_field=models.IntegerField()), 0)
    OriginReputation.objects.exclude(replies=total).update(replies=total, dirty=True)


def refresh_scores(*, limit: int = 1000) -> dict[str, int]:
    """The periodic sweep: replies counted again, then every row whose counters changed rescored."""
    refresh_replies()
    senders = list(SenderReputation.objects.filter(dirty=True).values_list("address", flat=True)[:limit])
    for address in senders:
        rescore_sender(address)
    origins = list(OriginReputation.objects.filter(dirty=True).values_list("domain", flat=True)[:limit])
    # An origin that is unreachable right now loses a little more with every hour.
    origins += list(
        OriginReputation.objects.filter(dirty=False, unreachable_since__isnull=False).values_list("domain", flat=True)[
            :limit
        ]
    )
    for domain in origins:
        rescore_origin(domain)
    return {"senders": len(senders), "origins": len(origins)}


# --- An admin reverses what the scores decided ------------------------------------------------


@transaction.atomic
def lift_origin(*, origin_id: int, by: User | None) -> bool:
    """Lift an origin's refusal and Spam filing: they come back only with new reports. True if any stood."""
    rep = lock(OriginReputation.objects.all(), skip_locked=False).filter(pk=origin_id).first()
    if rep is None:
        return False
    lifted = bool(end_decisions(rep, [DecisionKind.SPAM, DecisionKind.RATE, DecisionKind.REFUSED], by=by))
    rep.spam_filed = rep.refused = False
    rep.reports_at_lift, rep.weight_at_lift = rep.spam_reports, rep.spam_weight
    rep.save(update_fields=["spam_filed", "refused", "reports_at_lift", "weight_at_lift", "updated_at"])
    transaction.on_commit(lambda: forget_standing(rep.domain))
    forget_standing(rep.domain)
    return lifted


@transaction.atomic
def reset_origin(*, origin_id: int, by: User | None) -> None:
    """Start an origin afresh: counters at zero, decisions ended, the new-origin rate again."""
    rep = lock(OriginReputation.objects.all(), skip_locked=False).filter(pk=origin_id).first()
    if rep is None:
        return
    end_decisions(rep, list(DecisionKind.values), by=by)
    OriginReputation.objects.filter(pk=rep.pk).update(
        reads=0, replies=0, spam_reports=0, not_spam=0, spam_weight=0, not_spam_weight=0, unsubscribes=0, outages=0,
        downtime_seconds=0, unreachable_since=None, gone=False, score=0.5, pinned_score=None, spam_filed=False,
        refused=False, reports_at_lift=0, weight_at_lift=0, dirty=False,
    )  # fmt: skip
    transaction.on_commit(lambda: forget_standing(rep.domain))
    forget_standing(rep.domain)


@transaction.atomic
def allow_sender(*, sender_id: int, allowed: bool, by: User | None) -> None:
    """Allow a sender (its mail is never filed to Spam automatically), or stop allowing it."""
    rep = lock(SenderReputation.objects.all(), skip_locked=False).filter(pk=sender_id).first()
    if rep is None:
        return
    rep.allowed = allowed
    if allowed:
        origin, _ = OriginReputation.objects.get_or_create(domain=rep.domain)
        end_decisions(origin, [DecisionKind.SPAM], sender=rep, by=by)
        rep.spam_filed = False
        rep.reports_at_lift, rep.weight_at_lift = rep.spam_reports, rep.spam_weight
    rep.save(update_fields=["allowed", "spam_filed", "reports_at_lift", "weight_at_lift", "updated_at"])


@transaction.atomic
def reset_sender(*, sender_id: int, by: User | None) -> None:
    rep = lock(SenderReputation.objects.all(), skip_locked=False).filter(pk=sender_id).first()
    if rep is None:
        return
    origin, _ = OriginReputation.objects.get_or_create(domain=rep.domain)
    end_decisions(origin, [DecisionKind.SPAM], sender=rep, by=by)
    SenderReputation.objects.filter(pk=rep.pk).update(
        reads=0, replies=0, spam_reports=0, not_spam=0, spam_weight=0, not_spam_weight=0, unsubscribes=0, score=0.5,
        pinned_score=None, spam_filed=False, reports_at_lift=0, weight_at_lift=0, dirty=False,
    )  # fmt: skip
