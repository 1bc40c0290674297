"""Reputation tasks, taking ids, and its periodic sweeps (Celery beat; see CELERY_BEAT_SCHEDULE in settings)."""

from celery import shared_task

from . import campaigns, reachability, scores, spam


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


@shared_task(name="reputation.refresh_scores")
def refresh_scores() -> dict[str, int]:
    """Count replies again and rescore every sender and origin whose counters changed."""
    return scores.refresh_scores()


@shared_task(name="reputation.check_reachability")
def check_reachability() -> dict[str, int]:
    """Ask origins holding unopened mail here whether they still answer; flag the gone."""
    return reachability.check_reachability()
