"""Attachment tasks: thin wrappers over services."""

from celery import shared_task

from . import services


@shared_task(name="attachments.purge_unused_blobs")
def purge_unused_blobs() -> int:
    return services.purge_unused_blobs()
