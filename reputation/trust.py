"""How much each report counts: reports weighted by their reporter's trust, against what other readers did.

Collaborative spam filters are attacked two ways: sock-puppet accounts that clear
a spammer's run by clicking "Not spam", and a few accounts that collude to hide
mail everyone else wants (collaborative censorship). So a report does not count
1; it counts by what the instance knows of its reporter, and the readers who
answer a sender speak for it too. The rules, for one campaign (reputation.campaigns;
a message alone is a campaign of one):

1. **A "Report spam" counts its reporter's trust**, from 0 to 1:

   - an account younger than ``PUSHMAIL_SPAM_TRUSTED_AFTER_DAYS`` [7] counts
     ``NEW_ACCOUNT_WEIGHT`` (a quarter): sock puppets are cheap, old accounts are not;
   - each of the reporter's past spam reports (on other campaigns) that a domain
     admin overturned, or that named a sender whom at least ``ANSWERED_BY_MANY`` [5]
     other local users opened and answered (contradicted by its readers), halves it.

2. **A "Not spam" counts against the verdict** by the same account age; but an
   account that only ever receives this origin's mail and has never written to
   anyone (no correspondents: it may well be the origin's own) counts
   ``ORIGIN_BOUND_WEIGHT`` (a tenth), and such accounts' weights are added up and
   rounded down: ten of them together count as one reader, a handful as none.

3. **Readers who answer count as "not spam"**: each local user who opened mail
   from one of the campaign's senders (this campaign's, or earlier mail) and has
   written to that sender, and did not report the campaign, counts
   ``ANSWERED_WEIGHT`` (a whole trusted "Not spam"). Having written to the address
   is not enough: a correspondent who never opened its mail here vouches for
   nothing (their own copy stays in their Inbox whatever the verdict). Earlier mail
   counts so that colluders who report a sender's new letter before its regular
   readers have opened it cannot hide it from the rest (collaborative censorship).

4. **The verdict**: the weighted count is (1) minus (2) minus (3). The campaign
   is judged spam when it reaches ``PUSHMAIL_SPAM_REPORTS`` [3], or when it is at
   least 2 and at least ``PUSHMAIL_SPAM_RATIO`` [0.3] of the local users who opened
   or reported the campaign's mail. So one trusted reporter can never hide anything;
   three trusted reporters do; five colluding accounts cannot hide a sender whom
   fifty others read and answer; and five of a spammer's accounts saying "Not spam"
   do not stop what three trusted readers reported.

5. **Silence counts too**: whichever threshold it reaches, the weighted count must
   also be at least ``PUSHMAIL_SPAM_MIN_SHARE`` [0.05] of those readers. Mail that
   hundreds open without complaint (a newsletter, a school's letter to parents) is
   not hidden from everyone by the few who report it, while a spam run, which
   most of its first readers report, is judged after a handful of opens.

Cheap by construction: :func:`tally` is six aggregate queries whatever the
reporters' history (reports in the campaign, the spam reporters' ages, their
records, the "not spam" reporters' correspondents, the answering readers, the
readers), and runs only when someone reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from accounts.models import User
from mailbox.models import EntryState, InboxEntry
from outbox.models import Recipient

from .models import CampaignMessage, Read, SpamReport

NEW_ACCOUNT_WEIGHT = 0.25
ORIGIN_BOUND_WEIGHT = 0.1
ANSWERED_WEIGHT = 1.0
ANSWERED_BY_MANY = 5
BAD_REPORT_FACTOR = 0.5


@dataclass(frozen=True)
class Tally:
    """A campaign's reports, weighed."""

    spam_reporters: int  # people who reported it spam
    spam_weight: float
    not_spam_weight: float
    answering_readers: int
    readers: int  # local users who opened or reported its mail

    @property
    def weight(self) -> float:
        """The weighted count a verdict needs (rule 4)."""
        return self.spam_weight - self.not_spam_weight - ANSWERED_WEIGHT * self.answering_readers

    def reaches_threshold(self) -> bool:
        return reaches(self.weight, self.readers)


def reaches(weight: float, readers: int) -> bool:
    """Rules 4 and 5: does a weighted count of reports judge mail that ``readers`` opened or reported?"""
    if weight < settings.PUSHMAIL_SPAM_MIN_SHARE * readers:
        return False  # most who opened it did not complain
    if weight >= settings.PUSHMAIL_SPAM_REPORTS:
        return True
    return weight >= 2 and weight >= settings.PUSHMAIL_SPAM_RATIO * readers


def tally(*, campaign_id: int, origin: str) -> Tally:
    """Weigh the reports on a campaign's messages (rules 1-3 of the module docstring)."""
    in_campaign = SpamReport.objects.filter(message__campaign_link__campaign_id=campaign_id)
    stances: dict[int, bool] = {}
    for reporter_id, spam in in_campaign.values_list("reporter_id", "spam"):
        stances[reporter_id] = stances.get(reporter_id, False) or spam  # spam on any of its messages
    spam_ids = [pk for pk, spam in stances.items() if spam]
    not_spam_ids = [pk for pk, spam in stances.items() if not spam]
    campaign_senders = CampaignMessage.objects.filter(campaign_id=campaign_id).values("message__sender")
    return Tally(
        spam_reporters=len(spam_ids),
        spam_weight=_spam_weight(spam_ids, campaign_id) if spam_ids else 0.0,
        not_spam_weight=_not_spam_weight(not_spam_ids, origin) if not_spam_ids else 0.0,
        answering_readers=_answering_readers(campaign_senders, origin=origin, besides=list(stances)),
        readers=_readers(campaign_id),
    )


def _age_weight(date_joined: object, now: object) -> float:
    trusted_after = timedelta(days=settings.PUSHMAIL_SPAM_TRUSTED_AFTER_DAYS)
    return 1.0 if date_joined <= now - trusted_after else NEW_ACCOUNT_WEIGHT  # type: ignore[operator]


def _spam_weight(reporter_ids: list[int], campaign_id: int) -> float:
    """Rule 1: each spam reporter's trust, from their age and one aggregate over their past reports."""
    now = timezone.now()
    joined = dict(User.objects.filter(pk__in=reporter_ids).values_list("pk", "date_joined"))
    past = (
        SpamReport.objects.filter(reporter_id__in=reporter_ids, spam=True)
        .exclude(message__campaign_link__campaign_id=campaign_id)
        .values("reporter_id")
        .annotate(
            bad=Count(
                "pk",
                filter=Q(message__campaign_link__campaign__verdict__overturned_at__isnull=False)
                | Q(message__spam_verdict_row__overturned_at__isnull=False)
                | Q(message__sender__in=_answered_by_many(reporter_ids, campaign_id)),
            )
        )
    )
    bad = {row["reporter_id"]: row["bad"] for row in past}
    return sum(_age_weight(joined[pk], now) * BAD_REPORT_FACTOR ** bad.get(pk, 0) for pk in joined)


def _answered_by_many(reporter_ids: list[int], campaign_id: int) -> QuerySet[Any]:
    """Senders these reporters reported before whom at least ANSWERED_BY_MANY local users read and answered."""
    reported = (
        SpamReport.objects.filter(reporter_id__in=reporter_ids, spam=True)
        .exclude(message__campaign_link__campaign_id=campaign_id)
        .values("message__sender")
    )
    return (
        Read.objects.filter(message__sender__in=reported)
        .filter(_answered())
        .values("message__sender")
        .annotate(answering=Count("reader_id", distinct=True))
        .filter(answering__gte=ANSWERED_BY_MANY)
        .values("message__sender")
    )


def _answered() -> Exists:
    """The Read's reader has written to the sender of the message read."""
    wrote = Recipient.objects.filter(address__iexact=OuterRef("message__sender"), message__sender=OuterRef("reader_id"))
    return Exists(wrote)


def _not_spam_weights(reporter_ids: list[int], origin: str) -> tuple[float, float]:
    """Rule 2, per account: the trusted accounts' weights added up, and the origin-bound ones'."""
    now = timezone.now()
    other_mail = InboxEntry.objects.filter(owner=OuterRef("pk")).exclude(state=EntryState.NOTICE)
    rows = User.objects.filter(pk__in=reporter_ids).annotate(
        elsewhere=Exists(other_mail.exclude(remote__origin_domain=origin)),
        wrote=Exists(Recipient.objects.filter(message__sender=OuterRef("pk"))),
    )
    strong = bound = 0.0
    for joined, elsewhere, wrote in rows.values_list("date_joined", "elsewhere", "wrote"):
        if elsewhere or wrote:
            strong += _age_weight(joined, now)
        else:
            bound += ORIGIN_BOUND_WEIGHT * _age_weight(joined, now)
    return strong, bound


def _not_spam_weight(reporter_ids: list[int], origin: str) -> float:
    """Rule 2: trusted "not spam" counts whole; origin-bound accounts' weights add up, rounded down."""
    strong, bound = _not_spam_weights(reporter_ids, origin)
    return strong + math.floor(bound + 1e-9)


def report_weight(*, reporter_id: int, spam: bool, campaign_id: int | None, origin: str) -> float:
    """What one report counts, by the rules that weigh it in a verdict (1 and 2), for the sender's
    and origin's scores (reputation.scores): so colluding new accounts, or a reporter whose past
    reports were overturned, cannot sink a sender's score any more than they can judge its mail.

    An origin-bound account's "not spam" counts its tenth here (a score has no rounding down
    together: it adds up over time, never past what those accounts are worth).
    """
    if spam:
        return _spam_weight([reporter_id], campaign_id if campaign_id is not None else 0)
    strong, bound = _not_spam_weights([reporter_id], origin)
    return strong + bound


def _answering_readers(senders: QuerySet[Any], *, origin: str, besides: list[int]) -> int:
    """Rule 3: local users (not reporters) who opened mail from these senders and have written to them."""
    reads = Read.objects.filter(message__origin_domain=origin, message__sender__in=senders).filter(_answered())
    return reads.exclude(reader_id__in=besides).values("reader_id").distinct().count()


def _readers(campaign_id: int) -> int:
    """Local users who opened or reported the campaign's mail."""
    opened = Read.objects.filter(message__campaign_link__campaign_id=campaign_id).values("reader_id")
    reported = SpamReport.objects.filter(message__campaign_link__campaign_id=campaign_id).values("reporter_id")
    return opened.union(reported).count()
