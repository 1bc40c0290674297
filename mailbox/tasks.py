"""Recipient-side tasks: thin wrappers over services, taking ids."""

from celery import shared_task

from . import fetching, folders


@shared_task(name="mailbox.fetch_body")
def fetch_body(remote_id: int) -> None:
    fetching.fetch_body(remote_id)


@shared_task(name="mailbox.requeue_due")
def requeue_due() -> int:
    return fetching.requeue_due()


@shared_task(name="mailbox.housekeeping")
def housekeeping() -> dict[str, int]:
    return {"expired": fetching.expire_unfetched(), "prefetched": fetching.prefetch_from_correspondents()}


@shared_task(name="mailbox.empty_trash")
def empty_trash() -> dict[str, int]:
    """Delete for good what has been in Trash longer than settings.PUSHMAIL_TRASH_DAYS."""
    return folders.empty_trash()
