"""Recipient-side tasks, taking ids. The body's and the attachments' fetch tasks sit beside the
functions they wrap (so that each can queue its own next attempt); the sweeps are here."""

from celery import shared_task

from . import attachment_fetching, fetching, folders
from .attachment_fetching import fetch_attachment_task as fetch_attachment
from .fetching import fetch_body_task as fetch_body


@shared_task(name="mailbox.requeue_due")
def requeue_due() -> int:
    return fetching.requeue_due()


@shared_task(name="mailbox.requeue_due_attachments")
def requeue_due_attachments() -> int:
    return attachment_fetching.requeue_due()


@shared_task(name="mailbox.housekeeping")
def housekeeping() -> dict[str, int]:
    return {"expired": fetching.expire_unfetched(), "prefetched": fetching.prefetch_from_correspondents()}


@shared_task(name="mailbox.empty_trash")
def empty_trash() -> dict[str, int]:
    """Delete for good what has been in Trash longer than settings.PUSHMAIL_TRASH_DAYS."""
    return folders.empty_trash()


__all__ = ["empty_trash", "fetch_attachment", "fetch_body", "housekeeping", "requeue_due", "requeue_due_attachments"]
