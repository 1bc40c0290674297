"""Attachment tasks: thin wrappers over services, taking ids."""

from celery import shared_task

from . import fetching, services


@shared_task(name="attachments.fetch_attachment")
def fetch_attachment(job_id: int) -> None:
    fetching.fetch_attachment(job_id)


@shared_task(name="attachments.requeue_due")
def requeue_due() -> int:
    return fetching.requeue_due()


@shared_task(name="attachments.purge_unused_blobs")
def purge_unused_blobs() -> int:
    return services.purge_unused_blobs()
