"""What the processes count as they work, for the ``/metrics`` page (pushmail_site.metrics).

The counters live here, at the bottom, so that every app may count what it does without
knowing about the page above. A web server has several worker processes and the Celery
worker its pool: with ``PROMETHEUS_MULTIPROC_DIR`` set (production, see docs/operations.md)
prometheus-client keeps each process's counts in a file there, and the page adds them up.
Without it (development, unit tests) each process counts for itself.

The state of the job rows is not counted here: the page reads it from the database when it
is scraped (pushmail_site.queues).
"""

from __future__ import annotations

from collections.abc import Callable

from django.db import transaction
from prometheus_client import Counter, Histogram

NOTIFICATIONS_RECEIVED = Counter(
    "pushmail_notifications_received",
    "Notifications from other instances answered 200 (each recipient accepted or rejected).",
)
NOTIFICATIONS_REFUSED = Counter(
    "pushmail_notifications_refused",
    "Notifications from other instances refused as a whole, by the error code answered (docs/protocol.md §5).",
    ["code"],
)
NOTIFICATION_RECIPIENTS = Counter(
    "pushmail_notification_recipients",
    "Recipients of received notifications, by status and the rejection reason answered.",
    ["status", "reason"],
)
SIGNATURE_FAILURES = Counter(
    "pushmail_signature_failures",
    "Signed requests from other instances refused for their signature, by the error code answered.",
    ["code"],
)
FETCH_SECONDS = Histogram(
    "pushmail_fetch_seconds",
    "Time to pull a message body from its sender's instance (discovery and download), by outcome.",
    ["outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
SPAM_VERDICTS = Counter(
    "pushmail_spam_verdicts",
    "Spam verdicts reached here, by who judged: readers' reports, the content filter, or both.",
    ["judge"],
)
SPAM_VERDICTS_OVERTURNED = Counter(
    "pushmail_spam_verdicts_overturned",
    "Spam verdicts a domain admin overturned.",
)


def on_commit(count: Callable[[], None]) -> None:
    """Count once the current transaction commits: work rolled back never happened."""
    transaction.on_commit(count)
