"""What reputation answers and does for the layers below; loaded by ReputationConfig.ready()."""

from typing import Any

from django.dispatch import receiver

from federation import inbound
from mailbox import spam as mailbox_spam
from mailbox.models import RemoteMessage
from mailbox.signals import body_fetched, message_read

from . import placement, services, tasks

inbound.check_origin.register(services.check_origin)
mailbox_spam.spam_reason_for_new.register(placement.spam_reason_for_new)


@receiver(message_read, dispatch_uid="reputation.record_read")
def _record_read(*, message: RemoteMessage, reader_id: int, **kwargs: Any) -> None:
    services.record_read(message=message, reader_id=reader_id)


@receiver(body_fetched, dispatch_uid="reputation.join_campaign_by_text")
def _join_campaign_by_text(*, remote_id: int, **kwargs: Any) -> None:
    # Sent after the fetch committed; the fingerprint and any merge are a worker's job.
    tasks.join_campaign_by_text.delay(remote_id)
