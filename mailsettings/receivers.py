"""What this app does when the mailbox announces new mail or a fetched body; loaded by ready()."""

from typing import Any

from django.dispatch import receiver

from mailbox.signals import attachment_settled, body_fetched, mail_arrived, mails_arrived

from . import arrivals, forwarding


@receiver(mail_arrived, dispatch_uid="mailsettings.apply_on_arrival")
def _apply_on_arrival(*, remote_id: int | None, local_id: object | None, owner_ids: list[int], **kwargs: Any) -> None:
    arrivals.apply_on_arrival(remote_id=remote_id, local_id=local_id, owner_ids=owner_ids)


@receiver(mails_arrived, dispatch_uid="mailsettings.apply_on_arrivals")
def _apply_on_arrivals(**kwargs: Any) -> None:
    arrivals.apply_on_arrivals(arrivals=kwargs["arrivals"])


@receiver(body_fetched, dispatch_uid="mailsettings.wake_forwards")
def _wake_forwards(*, remote_id: int, **kwargs: Any) -> None:
    forwarding.wake_forwards(remote_id=remote_id)


@receiver(attachment_settled, dispatch_uid="mailsettings.wake_forwards_for_files")
def _wake_forwards_for_files(*, remote_id: int, **kwargs: Any) -> None:
    forwarding.wake_forwards(remote_id=remote_id)
