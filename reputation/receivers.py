"""What reputation answers and does for the layers below; loaded by ReputationConfig.ready()."""

from typing import Any

from django.db.models.signals import post_save
from django.dispatch import receiver

from federation import inbound
from mailbox import spam as mailbox_spam
from mailbox.models import RemoteMessage
from mailbox.signals import body_fetched, body_unavailable, message_read

from . import placement, reachability, scores, services
from .models import SpamReport

inbound.check_origin.register(services.check_origin)
mailbox_spam.spam_reason_for_new.register(placement.spam_reason_for_new)


@receiver(message_read, dispatch_uid="reputation.record_read")
def _record_read(*, message: RemoteMessage, reader_id: int, **kwargs: Any) -> None:
    services.record_read(message=message, reader_id=reader_id)


@receiver(post_save, sender=SpamReport, dispatch_uid="reputation.score_report")
def _score_report(*, instance: SpamReport, created: bool, update_fields: Any = None, **kwargs: Any) -> None:
    """A new report, or a reader changing their mind, counts towards the sender's and origin's scores."""
    if not created and not (update_fields and "spam" in update_fields):
        return
    message = instance.message
    scores.note_report(
        origin=message.origin_domain, sender=message.sender, spam=instance.spam, changed_mind=not created
    )


@receiver(body_unavailable, dispatch_uid="reputation.origin_unreachable")
def _origin_unreachable(*, origin: str, error: str = "", **kwargs: Any) -> None:
    reachability.note_unreachable(origin=origin, error=error)


@receiver(body_fetched, dispatch_uid="reputation.origin_reached")
def _origin_reached(*, remote_id: int, **kwargs: Any) -> None:
    reachability.note_fetched(remote_id=remote_id)
