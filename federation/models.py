"""Signing keys of the hosted domains."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone


class SigningKeyQuerySet(models.QuerySet["SigningKey"]):
    def published(self) -> SigningKeyQuerySet:
        """Keys other instances may still verify with: current, or retired but unexpired."""
        return self.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))

    def current(self) -> SigningKeyQuerySet:
        return self.filter(retired_at__isnull=True)


class SigningKey(models.Model):
    """An Ed25519 key pair of one hosted domain. The private half never leaves the instance."""

    domain = models.ForeignKey("accounts.Domain", on_delete=models.CASCADE, related_name="signing_keys")
    key_id = models.CharField(max_length=300, unique=True)
    private_key = models.TextField(
        help_text="The 32-byte Ed25519 seed, encrypted with PUSHMAIL_KEY_ENCRYPTION_KEY (federation.keys)."
    )
    public_key = models.CharField(max_length=64, help_text="Raw 32-byte Ed25519 public key, base64.")
    created_at = models.DateTimeField(default=timezone.now)
    retired_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    objects = SigningKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["domain"], condition=Q(retired_at__isnull=True), name="one_current_key_per_domain"
            )
        ]

    def __str__(self) -> str:
        return self.key_id
