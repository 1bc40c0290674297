"""A user's OpenPGP key: the public key the instance publishes and the locked secret key it keeps for them."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class OpenPGPKey(models.Model):
    """One key pair of a mailbox. The server never sees it unlocked: the browser locks it before upload.

    ``public_key`` is what the Web Key Directory and the federation endpoint serve: the primary key,
    the user ID for the mailbox's address, the subkeys, and a revocation once there is one.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="openpgp_keys")
    fingerprint = models.CharField(max_length=40, unique=True)
    algorithm = models.CharField(max_length=40)
    uid = models.CharField("user ID", max_length=500)
    key_created_at = models.DateTimeField(help_text="When the key itself was made (from the key).")
    uploaded_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # The Web Key Directory's name for the local part (z-base-32 SHA-1), looked up per domain.
    wkd_hash = models.CharField(max_length=32, db_index=True)
    public_key = models.BinaryField()
    secret_key = models.BinaryField(help_text="Locked with the user's passphrase; never unlocked here.")

    class Meta:
        constraints = [
            # One key in use per mailbox; revoked ones stay published so correspondents learn of it.
            models.UniqueConstraint(fields=["user"], condition=Q(revoked_at__isnull=True), name="one_current_key"),
        ]

    def __str__(self) -> str:
        return f"{self.fingerprint} ({self.uid})"

    @property
    def fingerprint_groups(self) -> str:
        """The fingerprint as people read it aloud: ten groups of four."""
        return " ".join(self.fingerprint[i : i + 4] for i in range(0, 40, 4))


class PinnedKey(models.Model):
    """A correspondent's key as the user first met it (trust on first use).

    A later lookup that finds another key does not replace it: it is kept in ``offered_*`` and the user is
    warned until they accept it (after comparing fingerprints with the correspondent).
    """

    class Source(models.TextChoices):
        LOCAL = "local", "this instance"
        FEDERATION = "federation", "the correspondent's instance (signed)"
        WKD = "wkd", "the Web Key Directory"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="pinned_keys")
    address = models.CharField(max_length=320)
    fingerprint = models.CharField(max_length=40)
    public_key = models.BinaryField()
    source = models.CharField(max_length=10, choices=Source.choices)
    pinned_at = models.DateTimeField(auto_now_add=True)
    checked_at = models.DateTimeField()
    # The key found since, when it differs from the pinned one: shown with a warning until accepted.
    offered_fingerprint = models.CharField(max_length=40, blank=True)
    offered_key = models.BinaryField(null=True, blank=True)
    offered_source = models.CharField(max_length=10, choices=Source.choices, blank=True)
    pinned_revoked = models.BooleanField(default=False, help_text="The pinned key was found revoked.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "address"], name="one_pin_per_correspondent")]

    def __str__(self) -> str:
        return f"{self.address}: {self.fingerprint}"

    @property
    def changed(self) -> bool:
        return bool(self.offered_fingerprint)
