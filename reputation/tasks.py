"""Reputation's periodic sweeps (Celery beat; see CELERY_BEAT_SCHEDULE in settings)."""

from celery import shared_task

from . import reachability, scores


@shared_task(name="reputation.refresh_scores")
def refresh_scores() -> dict[str, int]:
    """Count replies again and rescore every sender and origin whose counters changed."""
    return scores.refresh_scores()


@shared_task(name="reputation.check_reachability")
def check_reachability() -> dict[str, int]:
    """Ask origins holding unopened mail here whether they still answer; flag the gone."""
    return reachability.check_reachability()
