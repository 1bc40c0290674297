"""Spam reports and the shared verdict they add up to.

A remote message is stored once per instance, and belongs to one campaign (reputation.campaigns),
so the reports of all the local recipients of all the campaign's messages count together, each
weighted by its reporter's trust (reputation.trust): past PUSHMAIL_SPAM_REPORTS, or PUSHMAIL_SPAM_RATIO
of the local users who opened or reported its mail (with a weight of at least two), the campaign is
judged spam and every unopened copy of every message in it is hidden (mailbox.spam does the moving,
in bulk); its new messages go straight to Spam until a domain admin overturns the verdict.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import caches
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import User
from mailbox import selectors as mailbox_selectors
from mailbox import services as mailbox_services
from mailbox.models import EntryState, InboxEntry, RemoteMessage
from pushmail_site import counters
from pushmail_site.jobs import lock

from . import campaigns, scores, trust, verdicts
from .models import Campaign, CampaignMessage, SpamReport, SpamVerdict
from .signals import report_recorded, verdict_overturned


class ReportRefused(Exception):
    """A report that cannot be taken: ``code`` and ``status`` for the API, the message for people;
    ``retry_after`` (seconds) when trying later will do."""

    def __init__(self, code: str, detail: str, *, status: int, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.code, self.detail, self.status, self.retry_after = code, detail, status, retry_after


class EntryNotFound(ReportRefused):
    def __init__(self) -> None:
        super().__init__("not_found", "That message was not found.", status=404)


@dataclass(frozen=True)
class ReportOutcome:
    entry: InboxEntry
    spam: bool
    repeated: bool  # the reader had already said the same about this message
    judged_spam: bool  # the message stands judged spam for this instance

    @property
    def detail(self) -> str:
        said = "Reported as spam" if self.spam else "Marked as not spam"
        if self.repeated:
            said = "You had already reported this as spam" if self.spam else "You had already marked this as not spam"
        return f"{said}; it is in {'Spam' if self.spam else 'your ' + self.entry.get_folder_display()}."


def report_spam(*, user: User, entry_id: int | str) -> ReportOutcome:
    """The reader's "Report spam": their copy to Spam at once, and one report towards a verdict."""
    with _report_budget(user, 1):
        return _report(user, entry_id, spam=True)


def report_not_spam(*, user: User, entry_id: int | str) -> ReportOutcome:
    """The reader's "Not spam": their copy back where it was (the Inbox), replacing any report of theirs."""
    with _report_budget(user, 1):
        return _report(user, entry_id, spam=False)


def report_entries(*, user: User, entry_ids: Iterable[object], spam: bool) -> list[ReportOutcome]:
    """The same report on a selection of the reader's entries: all of them, or (one refused) none."""
    ids = list(dict.fromkeys(str(entry_id) for entry_id in entry_ids))
    if not ids:
        raise ReportRefused("empty", "Select at least one message first.", status=400)
    with _report_budget(user, len(ids)), transaction.atomic():
        return [_report(user, entry_id, spam=spam) for entry_id in ids]


class TooManyReports(ReportRefused):
    def __init__(self, *, limit: int, retry_after: int) -> None:
        minutes = max(1, math.ceil(retry_after / 60))
        later = "in 1 minute" if minutes == 1 else f"in {minutes} minutes"
        super().__init__(
            "too_many_reports",
            f"You have reached the limit of {limit} spam reports an hour; try again {later}.",
            status=429,
            retry_after=retry_after,
        )


@contextmanager
def _report_budget(user: User, reports: int) -> Iterator[None]:
    """Count ``reports`` against the reader's hourly allowance (PUSHMAIL_SPAM_REPORTS_PER_HOUR), or refuse them.

    A flood of reports from one account is refused before it touches a message, so it cannot
    sway verdicts or scores; reports refused for any reason are given back. The count lives in the
    shared cache (two round trips), so every web process counts together.
    """
    limit = settings.PUSHMAIL_SPAM_REPORTS_PER_HOUR
    now = time.time()
    key = f"pm-spam-reports:{user.pk}:{int(now // 3600)}"
    cache = caches["default"]
    cache.add(key, 0, timeout=3700)
    try:
        spent = cache.incr(key, reports)
    except ValueError:  # expired between the two calls
        cache.add(key, reports, timeout=3700)
        spent = reports
    if spent > limit:
        cache.decr(key, reports)
        raise TooManyReports(limit=limit, retry_after=max(1, int(3600 - now % 3600) + 1))
    try:
        yield
    except ReportRefused:
        cache.decr(key, reports)
        raise


@transaction.atomic
def _report(user: User, entry_id: int | str, *, spam: bool) -> ReportOutcome:
    """One report, its locks taken in one order: the campaign (reports on one run wait for each
    other), the message, the reader's copy, every copy a verdict hides, and last the sender's
    and origin's scores. Readers opening the run take their copy and then the same scores: taking the
    scores before the copies here would have each wait for the other (a deadlock, a 500)."""
    entry = _reportable(user, entry_id)
    remote = entry.remote
    if remote is None:  # mail between mailboxes here: the reader's own copy is all there is
        mailbox_services.file_own_copy(entry=entry, spam=spam)
        return ReportOutcome(entry, spam, repeated=False, judged_spam=False)
    campaign_id = campaigns.campaign_id_of(remote)
    lock(Campaign.objects.all(), skip_locked=False).filter(pk=campaign_id).first()
    # Before the reader's copy: their own open, in flight, holds the message and then their copy.
    lock(RemoteMessage.objects.all(), skip_locked=False).filter(pk=remote.pk).first()
    mailbox_services.file_own_copy(entry=entry, spam=spam)
    recorded = _record(remote, user, spam=spam, campaign_id=campaign_id)
    judged = _judge(remote, campaign_id) if spam else False
    if recorded is not None:
        scores.note_report(
            origin=remote.origin_domain,
            sender=remote.sender,
            spam=spam,
            weight=recorded.weight,
            replaces=recorded.replaces,
        )
    report_recorded.send(sender=SpamReport, remote_id=remote.pk, spam=spam)
    return ReportOutcome(entry, spam, repeated=recorded is None, judged_spam=judged or bool(remote.spam_verdict))


@dataclass(frozen=True)
class _Recorded:
    weight: float
    replaces: float | None  # the weight of the reader's opposite report it replaces


def _reportable(user: User, entry_id: int | str) -> InboxEntry:
    try:
        entry = mailbox_selectors.entry_for(user=user, entry_id=int(str(entry_id)))
    except (InboxEntry.DoesNotExist, ValueError):
        raise EntryNotFound() from None
    if entry.state == EntryState.NOTICE:
        raise ReportRefused(
            "notice", "This is a notice from this instance, not mail from a sender: it cannot be reported.", status=400
        )
    if entry.state == EntryState.WITHDRAWN:
        raise ReportRefused(
            "withdrawn", "The sender withdrew this message, so there is nothing left to report.", status=409
        )
    return entry


def _record(remote: RemoteMessage, user: User, *, spam: bool, campaign_id: int) -> _Recorded | None:
    """Keep the reader's one report on this message, weighed by their trust; what to count towards
    its sender's and origin's scores, or None when it already said the same (nothing changes)."""
    report = SpamReport.objects.filter(message=remote, reporter=user).first()
    if report is not None and report.spam == spam:
        return None
    weight = trust.report_weight(reporter_id=user.pk, spam=spam, campaign_id=campaign_id, origin=remote.origin_domain)
    replaces = None
    if report is None:
        try:
            with transaction.atomic():
                SpamReport.objects.create(message=remote, reporter=user, spam=spam, weight=weight)
        except IntegrityError:  # a concurrent request of the same reader got there first
            return _record(remote, user, spam=spam, campaign_id=campaign_id)
    else:
        replaces = report.weight
        report.spam, report.weight = spam, weight
        report.save(update_fields=["spam", "weight"])
    return _Recorded(weight=weight, replaces=replaces)


def _judge(remote: RemoteMessage, campaign_id: int) -> bool:
    """Judge the message's campaign spam if its weighted reports now reach a threshold; True if it stands judged."""
    if SpamVerdict.objects.filter(message=remote, campaign__isnull=True).exists():  # from before campaigns
        return bool(RemoteMessage.objects.filter(pk=remote.pk).exclude(spam_verdict="").exists())
    judged = judge_campaign(campaign_id, reached_by=remote)
    if judged:
        remote.spam_verdict = RemoteMessage.objects.values_list("spam_verdict", flat=True).get(pk=remote.pk)
    return judged


def judge_campaign(campaign_id: int, *, reached_by: RemoteMessage | None = None) -> bool:
    """Weigh a campaign's reports and judge it spam if they reach a threshold; True if it stands judged.

    One verdict per campaign, ever: an overturned campaign is not judged again.
    """
    with transaction.atomic():
        # One verdict at a time per campaign: concurrent last reports must not both apply it.
        campaign = lock(Campaign.objects.all(), skip_locked=False).filter(pk=campaign_id).first()
        if campaign is None:
            return False
        verdict = SpamVerdict.objects.filter(campaign=campaign).first()
        if verdict is not None:
            return verdict.overturned_at is None
        tally = trust.tally(campaign_id=campaign.pk, origin=campaign.origin_domain)
        if not tally.reaches_threshold():
            return False
        members = CampaignMessage.objects.filter(campaign=campaign)
        message = reached_by or RemoteMessage.objects.get(pk=members.values_list("message_id", flat=True)[:1])
        many = members.exclude(message=message).exists()
        said = "reported mail from this campaign" if many else "reported this"
        verdicts.reach_verdict(
            message_id=message.pk,
            campaign_id=campaign.pk,
            remote_ids=members.values("message_id"),
            reason=f"{tally.spam_reporters} people at {message.local_domain} {said}",
            reports=tally.spam_reporters,
            weight=tally.weight,
            readers=tally.readers,
        )
    return True


def merge_campaigns(first_id: int, second_id: int) -> int | None:
    """Two campaigns found to be one run (by their texts): one takes the other's messages; returns it.

    A campaign judged spam takes in the other, whose unopened copies are hidden at once; with no
    verdict the older one does, and the reports of both are weighed together. Campaigns an admin
    cleared (overturned), or both judged, stay as they are.
    """
    with transaction.atomic():
        pair = list(lock(Campaign.objects.all(), skip_locked=False).filter(pk__in=[first_id, second_id]).order_by("pk"))
        if len(pair) != 2:
            return None
        verdicts = {v.campaign_id: v for v in SpamVerdict.objects.filter(campaign__in=pair)}
        if any(v.overturned_at is not None for v in verdicts.values()) or len(verdicts) == 2:
            return None
        survivor, merged = (pair[1], pair[0]) if pair[1].pk in verdicts else (pair[0], pair[1])
        moved = CampaignMessage.objects.filter(campaign=merged)
        moving = list(moved.values_list("message_id", flat=True))
        moved.update(campaign=survivor)
        merged.delete()
        verdict = verdicts.get(survivor.pk)
        if verdict is not None:
            hidden = mailbox_services.hide_as_spam(remote_ids=moving, reason=verdict.reason)
            SpamVerdict.objects.filter(pk=verdict.pk).update(hidden=verdict.hidden + hidden)
            return survivor.pk
    judge_campaign(survivor.pk)
    return survivor.pk


def join_by_text(*, remote_id: int) -> int | None:
    """After a fetch: fingerprint the text, and bring the message's campaign into a near one's."""
    found = campaigns.fingerprint(remote_id=remote_id)
    return merge_campaigns(*found) if found else None


@transaction.atomic
def overturn_verdict(*, verdict_id: int, by: User | None) -> int:
    """A domain admin overturns a verdict: every copy it hid, of every message of its campaign, goes back.

    Returns how many copies; new messages of the campaign go to the Inbox again.
    """
    verdict = lock(SpamVerdict.objects.all(), skip_locked=False).filter(pk=verdict_id).first()
    if verdict is None or verdict.overturned_at is not None:
        return 0
    verdict.overturned_at, verdict.overturned_by = timezone.now(), by
    verdict.save(update_fields=["overturned_at", "overturned_by"])
    counters.on_commit(counters.SPAM_VERDICTS_OVERTURNED.inc)
    if verdict.campaign_id is None:
        verdict_overturned.send(sender=SpamVerdict, remote_ids=[verdict.message_id])
        return mailbox_services.lift_spam_verdict(remote_id=verdict.message_id)
    members = CampaignMessage.objects.filter(campaign_id=verdict.campaign_id).values("message_id")
    verdict_overturned.send(sender=SpamVerdict, remote_ids=list(members.values_list("message_id", flat=True)))
    return mailbox_services.lift_spam_verdict(remote_ids=members)
