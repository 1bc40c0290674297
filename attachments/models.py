"""Attachment bytes, stored once per instance and addressed by their SHA-256."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


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
