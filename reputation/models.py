"""Read counts per message and policy per origin domain."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Read(models.Model):
    """A local reader opened a remote message. Counting rows gives readers per message."""

    message = models.ForeignKey("mailbox.RemoteMessage", on_delete=models.CASCADE, related_name="reads")
    reader = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    read_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["message", "reader"], name="one_read_per_reader")]


class OriginPolicy(models.Model):
    """What a domain admin decided about a peer domain."""

    domain = models.CharField(max_length=253, unique=True)
    blocked = models.BooleanField(default=False, help_text="Refuse every notification from this domain.")
    rate_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Notifications accepted per minute; empty uses the instance default."
    )
    note = models.CharField(max_length=300, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "origin policies"

    def __str__(self) -> str:
        return self.domain + (" (blocked)" if self.blocked else "")
