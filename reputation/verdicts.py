"""Reaching a spam verdict: the one service every judge calls.

Three things judge mail spam here: the readers' weighted reports on a campaign
(reputation.spam), the content filter's score alone, and the content filter's
"suspect" added to the readers' reports (reputation.content_filter). Whoever
judges, the verdict is the same few steps, taken here in one transaction:

1. a :class:`~reputation.models.SpamVerdict` row, with the counts and the reason
   the Spam folder and the domain admin see;
2. every unopened copy of the messages it covers hidden, in bulk (mailbox.spam:
   known correspondents keep theirs, with a warning);
3. how many copies were hidden, on the verdict;
4. the verdict announced (``verdict_reached``): each message's origin is told
   (reputation.feedback).
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import QuerySet

from mailbox import services as mailbox_services
from pushmail_site import counters

from .models import SpamVerdict
from .signals import verdict_reached


@transaction.atomic
def reach_verdict(
    *,
    message_id: int,
    remote_ids: list[int] | QuerySet[Any],
    reason: str,
    reports: int,
    readers: int,
    weight: float = 0.0,
    campaign_id: int | None = None,
    judge: str = "reports",
) -> SpamVerdict:
    """Judge ``remote_ids`` spam for everyone here (``message_id`` is the one whose judging reached it).

    ``remote_ids`` is a list or a queryset of ids (a campaign's ``values("message_id")``), expanded
    by the database; the hiding is a few bulk statements whatever the number of copies. The caller
    holds the lock that keeps a second verdict on the same messages out (one verdict per message).
    ``judge`` says who judged, for the metrics: "reports", "content" or "reports_and_content".
    """
    verdict = SpamVerdict.objects.create(
        message_id=message_id,
        campaign_id=campaign_id,
        reports=reports,
        weight=round(weight, 3),
        readers=readers,
        reason=reason[:300],
    )
    verdict.hidden = mailbox_services.hide_as_spam(remote_ids=remote_ids, reason=verdict.reason)
    verdict.save(update_fields=["hidden"])
    ids = list(remote_ids) if isinstance(remote_ids, list) else list(remote_ids.values_list("message_id", flat=True))
    verdict_reached.send(sender=SpamVerdict, remote_ids=ids)
    counters.on_commit(counters.SPAM_VERDICTS.labels(judge=judge).inc)
    return verdict
