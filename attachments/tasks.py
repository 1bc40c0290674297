"""Attachment tasks, taking ids: the sweep of stored files no message, draft or received manifest uses."""

from celery import shared_task

from . import services


@shared_task(name="attachments.purge_unused_blobs")
def purge_unused_blobs() -> int:
    return services.purge_unused_blobs()


__all__ = ["purge_unused_blobs"]
