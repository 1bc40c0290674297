"""What reputation answers and does for the layers below; loaded by ReputationConfig.ready()."""

from typing import Any

from django.dispatch import receiver

from federation import inbound
from mailbox import spam as mailbox_spam
from mailbox.models import RemoteMessage
from mailbox.signals import message_read

from . import feedback, placement, services  # noqa: F401 - feedback receives verdicts (reputation.signals)

inbound.check_origin.register(services.check_origin)
mailbox_spam.spam_reason_for_new.register(placement.spam_reason_for_new)


@receiver(message_read, dispatch_uid="reputation.record_read")
def _record_read(*, message: RemoteMessage, reader_id: int, **kwargs: Any) -> None:
    services.record_read(message=message, reader_id=reader_id)
