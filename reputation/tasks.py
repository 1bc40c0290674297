"""Reputation tasks, taking ids."""

from celery import shared_task

from . import campaigns, spam


@shared_task(name="reputation.join_campaign_by_text")
def join_campaign_by_text(remote_id: int) -> int | None:
    """A body was fetched: fingerprint its text and join its campaign to a near one (reputation.campaigns)."""
    return spam.join_by_text(remote_id=remote_id)


@shared_task(name="reputation.requeue_unfingerprinted")
def requeue_unfingerprinted() -> int:
    """The sweep: fetched messages whose fingerprint task the broker lost are queued again."""
    due = campaigns.requeue_unfingerprinted()
    for remote_id in due:
        join_campaign_by_text.delay(remote_id)
    return len(due)
