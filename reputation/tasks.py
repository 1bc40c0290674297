"""Reputation tasks, taking ids."""

from celery import shared_task

from . import spam


@shared_task(name="reputation.join_campaign_by_text")
def join_campaign_by_text(remote_id: int) -> int | None:
    """A body was fetched: fingerprint its text and join its campaign to a near one (reputation.campaigns)."""
    return spam.join_by_text(remote_id=remote_id)
