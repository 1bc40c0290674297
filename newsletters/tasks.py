"""Newsletter tasks, taking ids: the subscription request sits beside its function; the sweep is here."""

from celery import shared_task

from . import services
from .services import send_subscription_request_task as send_subscription_request


@shared_task(name="newsletters.requeue_due")
def requeue_due() -> int:
    return services.requeue_due()


__all__ = ["requeue_due", "send_subscription_request"]
