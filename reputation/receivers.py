"""What reputation answers and does for the layers below; loaded by ReputationConfig.ready()."""

from typing import Any

from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from accounts.validators import domain_of
from federation import inbound
from mailbox import spam as mailbox_spam
from mailbox.models import RemoteMessage
from mailbox.signals import body_fetched, body_unavailable, list_left, message_read

from . import (
    content_filter,
    feedback,  # noqa: F401 - its receivers tell origins about verdicts (reputation.signals)
    placement,
    reachability,
    services,
    tasks,
)
from .models import SpamVerdict
from .scores import note_unsubscribe
from .signals import report_recorded

inbound.check_origin.register(services.check_origin)
mailbox_spam.spam_reason_for_new.register(placement.spam_reason_for_new)
mailbox_spam.spam_reasons_for_new.register(placement.spam_reasons_for_new)


@receiver(message_read, dispatch_uid="reputation.record_read")
def _record_reads(*, messages: list[RemoteMessage], reader_id: int, **kwargs: Any) -> None:
    services.record_reads(messages=messages, reader_id=reader_id)


@receiver(body_fetched, dispatch_uid="reputation.check_content")
def _check_content(*, remote_id: int, **kwargs: Any) -> None:
    content_filter.queue_check(remote_id=remote_id)


@receiver(report_recorded, dispatch_uid="reputation.learn_from_report")
def _learn_from_report(*, remote_id: int, spam: bool, **kwargs: Any) -> None:
    content_filter.queue_lesson(remote_id=remote_id, spam=spam)
    if spam:
        content_filter.reconsider(remote_id=remote_id)
        if SpamVerdict.objects.filter(message_id=remote_id, overturned_at__isnull=True).exists():
            content_filter.queue_fuzzy(remote_id=remote_id)


@receiver(post_save, sender=SpamVerdict, dispatch_uid="reputation.unlearn_overturned")
def _unlearn_overturned(*, instance: SpamVerdict, update_fields: Any = None, **kwargs: Any) -> None:
    # The overturn saves exactly these columns; after commit, so a rolled-back overturn teaches nothing.
    if instance.overturned_at is not None and update_fields and "overturned_at" in update_fields:
        remote_id = instance.message_id
        transaction.on_commit(lambda: content_filter.unlearn_overturned(remote_id=remote_id))


@receiver(body_fetched, dispatch_uid="reputation.join_campaign_by_text")
def _join_campaign_by_text(*, remote_id: int, **kwargs: Any) -> None:
    # Sent after the fetch committed; the fingerprint and any merge are a worker's job.
    tasks.join_campaign_by_text.delay(remote_id)


@receiver(body_unavailable, dispatch_uid="reputation.origin_unreachable")
def _origin_unreachable(*, origin: str, error: str = "", **kwargs: Any) -> None:
    reachability.note_unreachable(origin=origin, error=error)


@receiver(body_fetched, dispatch_uid="reputation.origin_reached")
def _origin_reached(*, remote_id: int, **kwargs: Any) -> None:
    reachability.note_fetched(remote_id=remote_id)


@receiver(list_left, dispatch_uid="reputation.count_unsubscribe")
def _count_unsubscribe(*, list_address: str, **kwargs: Any) -> None:
    # Like a spam report, against the list (the sender of its issues) and its domain.
    note_unsubscribe(origin=domain_of(list_address), sender=list_address)
