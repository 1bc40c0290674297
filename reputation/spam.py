"""Spam reports and the shared verdict they add up to.

A remote message is stored once per instance, so its local recipients' reports
count together: past PUSHMAIL_SPAM_REPORTS, or PUSHMAIL_SPAM_RATIO of the local
users who opened or reported it (with at least two reports), the message is
judged spam and every unopened copy is hidden (mailbox.spam does the moving).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from mailbox import selectors as mailbox_selectors
from mailbox import services as mailbox_services
from mailbox.models import EntryState, InboxEntry, RemoteMessage
from pushmail_site.jobs import lock

from .models import Read, SpamReport, SpamVerdict
from .signals import report_recorded, verdict_overturned, verdict_reached


class ReportRefused(Exception):
    """A report that cannot be taken: ``code`` and ``status`` for the API, the message for people."""

    def __init__(self, code: str, detail: str, *, status: int) -> None:
        super().__init__(detail)
        self.code, self.detail, self.status = code, detail, status


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
    return _report(user, entry_id, spam=True)


def report_not_spam(*, user: User, entry_id: int | str) -> ReportOutcome:
    """The reader's "Not spam": their copy back where it was (the Inbox), replacing any report of theirs."""
    return _report(user, entry_id, spam=False)


@transaction.atomic
def report_entries(*, user: User, entry_ids: Iterable[object], spam: bool) -> list[ReportOutcome]:
    """The same report on a selection of the reader's entries: all of them, or (one refused) none."""
    ids = list(dict.fromkeys(str(entry_id) for entry_id in entry_ids))
    if not ids:
        raise ReportRefused("empty", "Select at least one message first.", status=400)
    return [_report(user, entry_id, spam=spam) for entry_id in ids]


@transaction.atomic
def _report(user: User, entry_id: int | str, *, spam: bool) -> ReportOutcome:
    entry = _reportable(user, entry_id)
    mailbox_services.file_own_copy(entry=entry, spam=spam)
    remote = entry.remote
    if remote is None:  # mail between mailboxes here: the reader's own copy is all there is
        return ReportOutcome(entry, spam, repeated=False, judged_spam=False)
    repeated = _record(remote, user, spam=spam)
    judged = _judge(remote) if spam else False
    report_recorded.send(sender=SpamReport, remote_id=remote.pk, spam=spam)
    return ReportOutcome(entry, spam, repeated=repeated, judged_spam=judged or bool(remote.spam_verdict))


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


def _record(remote: RemoteMessage, user: User, *, spam: bool) -> bool:
    """Keep the reader's one report on this message; True when it already said the same."""
    report, created = SpamReport.objects.get_or_create(message=remote, reporter=user, defaults={"spam": spam})
    if created:
        return False
    if report.spam == spam:
        return True
    report.spam = spam
    report.save(update_fields=["spam"])
    return False


def _judge(remote: RemoteMessage) -> bool:
    """Judge the message spam if its reports now reach a threshold; True if it is (or was already) judged."""
    # One verdict at a time per message: concurrent last reports must not both apply it.
    lock(RemoteMessage.objects.all(), skip_locked=False).filter(pk=remote.pk).first()
    if SpamVerdict.objects.filter(message=remote).exists():
        return bool(RemoteMessage.objects.filter(pk=remote.pk).exclude(spam_verdict="").exists())
    reports = SpamReport.objects.filter(message=remote, spam=True).count()
    readers = _readers_or_reporters(remote)
    if not _reaches_threshold(reports, readers):
        return False
    reason = f"{reports} people at {remote.local_domain} reported this"
    verdict = SpamVerdict.objects.create(message=remote, reports=reports, readers=readers, reason=reason)
    verdict.hidden = mailbox_services.hide_as_spam(remote_id=remote.pk, reason=reason)
    verdict.save(update_fields=["hidden"])
    remote.spam_verdict = reason
    verdict_reached.send(sender=SpamVerdict, remote_ids=[remote.pk])
    return True


def _readers_or_reporters(remote: RemoteMessage) -> int:
    opened = Read.objects.filter(message=remote).values("reader_id")
    reported = SpamReport.objects.filter(message=remote).values("reporter_id")
    return opened.union(reported).count()


def _reaches_threshold(reports: int, readers: int) -> bool:
    if reports >= settings.PUSHMAIL_SPAM_REPORTS:
        return True
    return reports >= 2 and reports >= settings.PUSHMAIL_SPAM_RATIO * readers


@transaction.atomic
def overturn_verdict(*, verdict_id: int, by: User | None) -> int:
    """A domain admin overturns a verdict: every copy it hid goes back to its folder; returns how many."""
    verdict = lock(SpamVerdict.objects.all(), skip_locked=False).filter(pk=verdict_id).first()
    if verdict is None or verdict.overturned_at is not None:
        return 0
    verdict.overturned_at, verdict.overturned_by = timezone.now(), by
    verdict.save(update_fields=["overturned_at", "overturned_by"])
    verdict_overturned.send(sender=SpamVerdict, remote_ids=[verdict.message_id])
    return mailbox_services.lift_spam_verdict(remote_id=verdict.message_id)
