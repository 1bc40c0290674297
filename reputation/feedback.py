"""Spam feedback to the origin (docs/protocol.md §5.8): when a message is judged spam here, or the
verdict is overturned, its origin's instance gets a signed report saying so, never who reported.

Each report is a FeedbackReport row (one per message and verdict) that ``send_feedback`` claims,
posts and moves along ``reputation.states.FEEDBACK``, retried like a withdrawal; the sweep re-queues
rows the broker lost. The rows are made when reputation announces a verdict (reputation.signals),
in the transaction that reached it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from celery import shared_task
from django.db import transaction
from django.db.models import Count
from django.dispatch import receiver
from django.utils import timezone

from federation import client, discovery, payloads
from mailbox.models import RemoteMessage, Transport
from pushmail_site.jobs import claim_until, enqueue, lock, overdue_ids
from pushmail_site.states import retry_delay, retry_window, transition

from .models import FeedbackReport, FeedbackState, FeedbackVerdict, SpamReport
from .signals import verdict_overturned, verdict_reached
from .states import FEEDBACK

LEGACY_ORIGIN = "legacy domain: the origin has no Pushmail instance now"
# A campaign verdict may cover thousands of messages: wake a worker for this many at once and leave
# the rest to the sweep (every PUSHMAIL_SWEEP_SECONDS, a thousand at a time), so the commit stays quick.
QUEUE_AT_ONCE = 200


@shared_task(name="reputation.send_feedback")
def send_feedback_task(report_id: int) -> None:
    send_feedback(report_id)


@shared_task(name="reputation.requeue_due_feedback")
def requeue_due_feedback_task() -> int:
    return requeue_due_feedback()


def requeue_due_feedback(*, limit: int = 1000) -> int:
    """Queue every report that is due, whatever the broker holds."""
    due = overdue_ids(FeedbackReport.objects.filter(state=FeedbackState.PENDING), task=send_feedback_task, limit=limit)
    for report_id in due:
        enqueue(send_feedback_task, report_id)
    return len(due)


@receiver(verdict_reached, dispatch_uid="reputation.feedback.verdict_reached")
def _verdict_reached(*, remote_ids: Iterable[int], **kwargs: Any) -> None:
    queue_feedback(remote_ids=remote_ids, verdict=FeedbackVerdict.SPAM)


@receiver(verdict_overturned, dispatch_uid="reputation.feedback.verdict_overturned")
def _verdict_overturned(*, remote_ids: Iterable[int], **kwargs: Any) -> None:
    queue_feedback(remote_ids=remote_ids, verdict=FeedbackVerdict.OVERTURNED)


def queue_feedback(*, remote_ids: Iterable[int], verdict: str) -> list[int]:
    """A report of ``verdict`` to the origin of each message, sent once the transaction commits.

    An overturn is reported only where the spam verdict was (the origin heard of
    nothing else), and always dated after it, so the origin applies the two in order
    whichever arrives first. Returns the reports queued.
    """
    # Only a Pushmail origin has a reports endpoint: mail that came by SMTP has no one to tell.
    ids = list(
        RemoteMessage.objects.filter(pk__in=list(dict.fromkeys(remote_ids)), transport=Transport.PUSHMAIL)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    now = timezone.now().replace(microsecond=0)  # the wire has whole seconds
    when: dict[int, datetime] = dict.fromkeys(ids, now)
    if verdict == FeedbackVerdict.OVERTURNED:
        judged = FeedbackReport.objects.filter(message_id__in=ids, verdict=FeedbackVerdict.SPAM)
        when = {m: max(now, at + timedelta(seconds=1)) for m, at in judged.values_list("message_id", "reported_at")}
        ids = [i for i in ids if i in when]
    if not ids:
        return []
    counts = dict(
        SpamReport.objects.filter(message_id__in=ids, spam=True)
        .values("message_id")
        .annotate(n=Count("id"))
        .values_list("message_id", "n")
    )
    existing = {
        row.message_id: row
        for row in lock(FeedbackReport.objects.filter(message_id__in=ids, verdict=verdict), skip_locked=False)
    }
    created = FeedbackReport.objects.bulk_create(
        FeedbackReport(
            message_id=i, verdict=verdict, reports=counts.get(i, 0), reported_at=when[i], next_attempt_at=now
        )
        for i in ids
        if i not in existing
    )
    queued = [row.pk for row in created]
    for row in existing.values():
        # The same verdict again (after an overturn): report it anew, with its new date.
        fields = {"reports": counts.get(row.message_id, 0), "reported_at": when[row.message_id]}
        fields.update(next_attempt_at=now, attempts=0, last_error="", answer="", sent_at=None)
        if row.state == FeedbackState.PENDING:
            for name, value in fields.items():
                setattr(row, name, value)
            row.save(update_fields=list(fields))
        else:
            transition(row, FEEDBACK, FeedbackState.PENDING, fields=fields)
        queued.append(row.pk)
    for report_id in queued[:QUEUE_AT_ONCE]:
        enqueue(send_feedback_task, report_id)
    return queued


def send_feedback(report_id: int) -> None:
    """Post one signed report to the message's origin; safe to repeat."""
    row = _claim(report_id)
    if row is None:
        return
    message = row.message
    report = payloads.Report(
        global_id=message.global_id, verdict=row.verdict, reports=row.reports, reported_at=row.reported_at
    )
    try:
        instance = discovery.discover(message.origin_domain)
        if instance is None:
            _finish(row, FeedbackState.FAILED, error=LEGACY_ORIGIN)
            return
        answer = client.send_report(instance=instance, as_domain=message.local_domain, report=report)
    except (discovery.DiscoveryError, client.PeerError) as exc:
        _failed_attempt(row, exc)
        return
    _finish(row, FeedbackState.SENT, answer=answer["status"][:40], sent_at=timezone.now())


def _claim(report_id: int) -> FeedbackReport | None:
    with transaction.atomic():
        row = (
            lock(FeedbackReport.objects.select_related("message"))
            .filter(pk=report_id, state=FeedbackState.PENDING, next_attempt_at__lte=timezone.now())
            .first()
        )
        if row is None:
            return None
        row.attempts += 1
        row.next_attempt_at = claim_until()
        row.save(update_fields=["attempts", "next_attempt_at"])
        return row


def _finish(
    row: FeedbackReport, state: str, *, error: str = "", answer: str = "", sent_at: datetime | None = None
) -> None:
    fields: dict[str, object] = {"last_error": error[:500], "next_attempt_at": None, "answer": answer}
    if sent_at is not None:
        fields["sent_at"] = sent_at
    transition(row, FEEDBACK, state, fields=fields)


def _failed_attempt(row: FeedbackReport, exc: discovery.DiscoveryError | client.PeerError) -> None:
    now = timezone.now()
    if not exc.retryable or now >= row.reported_at + retry_window(FEEDBACK, FeedbackState.PENDING):
        _finish(row, FeedbackState.FAILED, error=str(exc))
        return
    delay = retry_delay(FEEDBACK, FeedbackState.PENDING, attempts=row.attempts, retry_after=exc.retry_after)
    transition(
        row, FEEDBACK, FeedbackState.PENDING, fields={"next_attempt_at": now + delay, "last_error": str(exc)[:500]}
    )
    enqueue(send_feedback_task, row.pk, countdown=delay.total_seconds())
