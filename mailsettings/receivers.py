"""What this app does when the mailbox announces new mail or a fetched body; loaded by ready()."""

from typing import Any

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from mailbox.signals import attachment_settled, body_fetched, mail_arrived, mails_arrived

from . import arrivals, forwarding
from .models import Filter, Vacation


@receiver(mail_arrived, dispatch_uid="mailsettings.apply_on_arrival")
def _apply_on_arrival(*, remote_id: int | None, local_id: object | None, owner_ids: list[int], **kwargs: Any) -> None:
    arrivals.apply_on_arrival(remote_id=remote_id, local_id=local_id, owner_ids=owner_ids, owners=kwargs.get("owners"))


@receiver(mails_arrived, dispatch_uid="mailsettings.apply_on_arrivals")
def _apply_on_arrivals(**kwargs: Any) -> None:
    arrivals.apply_on_arrivals(arrivals=kwargs["arrivals"], owners=kwargs.get("owners"))


@receiver(post_save, sender=Filter, dispatch_uid="mailsettings.filter_saved")
@receiver(post_delete, sender=Filter, dispatch_uid="mailsettings.filter_deleted")
@receiver(post_save, sender=Vacation, dispatch_uid="mailsettings.vacation_saved")
@receiver(post_delete, sender=Vacation, dispatch_uid="mailsettings.vacation_deleted")
def _rules_changed(*, instance: Filter | Vacation, **kwargs: Any) -> None:
    arrivals.note_rules_changed(owner_id=instance.owner_id)


@receiver(body_fetched, dispatch_uid="mailsettings.wake_forwards")
def _wake_forwards(*, remote_id: int, **kwargs: Any) -> None:
    forwarding.wake_forwards(remote_id=remote_id)


@receiver(attachment_settled, dispatch_uid="mailsettings.wake_forwards_for_files")
def _wake_forwards_for_files(*, remote_id: int, **kwargs: Any) -> None:
    forwarding.wake_forwards(remote_id=remote_id)
