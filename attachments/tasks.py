"""Attachment tasks, taking ids. The fetch's task sits beside the function it wraps
(so that the function can queue its own next attempt); the sweeps are here."""

from celery import shared_task

from . import fetching, services
from .fetching import fetch_attachment_task as fetch_attachment


@shared_task(name="attachments.requeue_due")
def requeue_due() -> int:
    return fetching.requeue_due()


@shared_task(name="attachments.purge_unused_blobs")
def purge_unused_blobs() -> int:
    return services.purge_unused_blobs()


__all__ = ["fetch_attachment", "purge_unused_blobs", "requeue_due"]
