"""Attachment bytes, stored once per instance and addressed by their SHA-256."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from .states import AttachmentFetchState


def blob_path(instance: Blob, filename: str) -> str:
    # Fan out by the first bytes of the digest so no directory grows huge.
    return f"blobs/{instance.sha256[:2]}/{instance.sha256[2:4]}/{instance.sha256}"


class Blob(models.Model):
    """One file's bytes, whatever name or message it is attached under.

    A row exists only once its bytes are stored and their SHA-256 checked, so
    a recipient instance holding the row holds a verified copy.
    """

    sha256 = models.CharField(max_length=64, unique=True)
    size = models.BigIntegerField()
    file = models.FileField(upload_to=blob_path, max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    last_stored_at = models.DateTimeField(
        default=timezone.now, help_text="Last time these bytes were uploaded or fetched; the unused-file sweep waits."
    )

    def __str__(self) -> str:
        return f"{self.sha256[:12]}… ({self.size} bytes)"

    @property
    def digest(self) -> str:
        """The wire form, as in manifests: ``sha-256:<hex>``."""
        return "sha-256:" + self.sha256


class AttachmentFetch(models.Model):
    """One attachment served to one recipient domain (sender side), like outbox.BodyFetch."""

    attachment = models.ForeignKey("outbox.MessageAttachment", on_delete=models.CASCADE, related_name="fetches")
    domain = models.CharField(max_length=253)
    fetched_at = models.DateTimeField(auto_now_add=True)
    bytes = models.BigIntegerField()

    class Meta:
        indexes = [models.Index(fields=["attachment", "domain"])]

    def __str__(self) -> str:
        return f"{self.attachment_id} fetched by {self.domain}"


class ReceivedAttachmentQuerySet(models.QuerySet["ReceivedAttachment"]):
    def verified(self) -> ReceivedAttachmentQuerySet:
        """Rows whose fetch from the message's own sender brought and verified the bytes."""
        return self.filter(state=AttachmentFetchState.FETCHED, blob__isnull=False)


class ReceivedAttachment(models.Model):
    """Attachment ``position`` of a received message: the job that fetches it, and then the proof.

    Blobs are shared by the whole instance and found by digest, so holding a
    Blob says nothing about who may read it: a manifest can name any digest.
    This row, once ``fetched``, is the proof that these bytes came from this
    message's sender (checked against its manifest's size and digest); only
    then are they served for the message. ``blob`` is set by that fetch alone,
    in the same move to ``fetched``. Before, the row is the fetch job
    (attachments/states.py): a reader's download creates it, a worker claims it,
    and failures are retried with backoff until the message expires.
    """

    remote = models.ForeignKey("mailbox.RemoteMessage", on_delete=models.CASCADE, related_name="received_attachments")
    position = models.PositiveSmallIntegerField()
    state = models.CharField(max_length=11, choices=AttachmentFetchState.choices, default=AttachmentFetchState.WANTED)
    blob = models.ForeignKey(Blob, on_delete=models.PROTECT, related_name="received_uses", null=True, blank=True)
    requested_at = models.DateTimeField(default=timezone.now)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    fetched_at = models.DateTimeField(null=True, blank=True)

    objects = ReceivedAttachmentQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["remote", "position"], name="unique_received_attachment_position")
        ]
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="received_attachment_due")]

    def __str__(self) -> str:
        return f"attachment {self.position} of {self.remote_id} ({self.state})"
