"""Sender side: each message stored once, one Delivery per recipient domain."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class Message(models.Model):
    """A sent message. ``id`` is its global id on the wire."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    sender = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sent_messages")
    sender_address = models.CharField(max_length=320)
    subject = models.CharField(max_length=998, blank=True)
    text = models.TextField(blank=True)
    html = models.TextField(null=True, blank=True)
    to = models.JSONField(default=list)
    cc = models.JSONField(default=list)
    bcc = models.JSONField(default=list)
    message_id = models.CharField(max_length=400, unique=True)
    in_reply_to = models.CharField(max_length=400, blank=True)
    references = models.JSONField(default=list)
    date = models.DateTimeField()
    size = models.PositiveIntegerField()
    digest = models.CharField(max_length=80)
    expires_at = models.DateTimeField()
    withdrawn_at = models.DateTimeField(null=True, blank=True)
    body_purged_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-date"]
        indexes = [models.Index(fields=["sender", "-date"]), models.Index(fields=["expires_at"])]

    def __str__(self) -> str:
        return f"{self.subject!r} from {self.sender_address}"

    @property
    def gone_reason(self) -> str | None:
        """Why the body can no longer be fetched: 'withdrawn', 'expired' or None."""
        if self.withdrawn_at:
            return "withdrawn"
        if self.body_purged_at:
            return "expired"
        return None


class RecipientKind(models.TextChoices):
    TO = "to"
    CC = "cc"
    BCC = "bcc"


class RecipientStatus(models.TextChoices):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class Recipient(models.Model):
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="recipients")
    address = models.CharField(max_length=320)
    domain = models.CharField(max_length=253)
    kind = models.CharField(max_length=3, choices=RecipientKind.choices)
    status = models.CharField(max_length=8, choices=RecipientStatus.choices, default=RecipientStatus.PENDING)
    reason = models.CharField(max_length=300, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["message", "address"], name="unique_recipient_per_message")]
        indexes = [models.Index(fields=["address"])]

    def __str__(self) -> str:
        return f"{self.address} ({self.status})"


class DeliveryState(models.TextChoices):
    PENDING = "pending"
    NOTIFIED = "notified"
    RETRYING = "retrying"
    FAILED = "failed"


class WithdrawalState(models.TextChoices):
    NONE = "none"
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class Delivery(models.Model):
    """The notification of one message to one recipient domain, and its withdrawal."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="deliveries")
    domain = models.CharField(max_length=253)
    local = models.BooleanField(default=False, help_text="Recipient domain hosted here: no federation round trip.")
    state = models.CharField(max_length=8, choices=DeliveryState.choices, default=DeliveryState.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    notified_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    withdrawal = models.CharField(max_length=8, choices=WithdrawalState.choices, default=WithdrawalState.NONE)
    withdrawal_attempts = models.PositiveIntegerField(default=0)
    withdrawal_next_attempt_at = models.DateTimeField(null=True, blank=True)
    withdrawal_error = models.CharField(max_length=500, blank=True)
    withdrawn_at = models.DateTimeField(null=True, blank=True, help_text="When the domain acknowledged the withdrawal.")

    class Meta:
        verbose_name_plural = "deliveries"
        constraints = [models.UniqueConstraint(fields=["message", "domain"], name="unique_delivery_per_domain")]
        indexes = [
            models.Index(fields=["state", "next_attempt_at"]),
            models.Index(fields=["withdrawal", "withdrawal_next_attempt_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.message_id} → {self.domain} ({self.state})"


class BodyFetch(models.Model):
    """One body served to one recipient domain."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="fetches")
    domain = models.CharField(max_length=253)
    fetched_at = models.DateTimeField(auto_now_add=True)
    bytes = models.PositiveIntegerField()

    class Meta:
        indexes = [models.Index(fields=["message", "domain"])]

    def __str__(self) -> str:
        return f"{self.message_id} fetched by {self.domain}"
