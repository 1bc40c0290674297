"""Signing keys of the hosted domains: Ed25519 for the federation, RSA for DKIM."""

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


class DkimKeyQuerySet(models.QuerySet["DkimKey"]):
    def published(self) -> DkimKeyQuerySet:
        """Keys whose DNS record must stay: current, or retired but unexpired."""
        return self.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))

    def current(self) -> DkimKeyQuerySet:
        return self.filter(retired_at__isnull=True)


class DkimKey(models.Model):
    """An RSA key a hosted domain signs its outgoing SMTP mail with (DKIM), published at ``selector._domainkey``.

    Like the Ed25519 keys: one current key per domain; a rotation retires it and it
    stays published (``manage.py dnsrecords`` lists it) until ``expires_at``, so
    mail signed with it just before still verifies.
    """

    domain = models.ForeignKey("accounts.Domain", on_delete=models.CASCADE, related_name="dkim_keys")
    selector = models.CharField(max_length=63, help_text="The DNS label before ._domainkey.DOMAIN.")
    private_key = models.TextField(
        help_text="The RSA private key (PEM), encrypted with PUSHMAIL_KEY_ENCRYPTION_KEY (federation.keys)."
    )
    public_key = models.TextField(help_text="The RSA public key (DER, base64): the p= of the DKIM record.")
    created_at = models.DateTimeField(default=timezone.now)
    retired_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    objects = DkimKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["domain", "selector"], name="unique_dkim_selector_per_domain"),
            models.UniqueConstraint(
                fields=["domain"], condition=Q(retired_at__isnull=True), name="one_current_dkim_key_per_domain"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.selector}._domainkey.{self.domain_id}"

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain.name}"

    @property
    def record_value(self) -> str:
        """The TXT record that publishes this key."""
        return f"v=DKIM1; k=rsa; p={self.public_key}"


class SignedRequest(models.Model):
    """A signed notification or withdrawal kept exactly as received: evidence that its origin sent it.

    Written once per accepted request (federation/evidence.py) and deleted after
    PUSHMAIL_EVIDENCE_DAYS. The body bytes and the signature headers, with the
    request target and the public key the signature verified with, are enough for
    anyone to rebuild the signature base (docs/protocol.md §3.2, Appendix C) and
    check it, even after the origin rotated its key.
    """

    class Kind(models.TextChoices):
        NOTIFICATION = "notification"
        WITHDRAWAL = "withdrawal"

    kind = models.CharField(max_length=12, choices=Kind.choices)
    origin_domain = models.CharField(max_length=253, help_text="The signing domain.")
    global_id = models.UUIDField()
    sender = models.CharField(max_length=320)
    local_domain = models.CharField(max_length=253, help_text="Our domain of the first accepted recipient.")
    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    method = models.CharField(max_length=8)
    authority = models.CharField(max_length=300, help_text="@authority as the signature base has it.")
    path = models.CharField(max_length=2000)
    query = models.CharField(max_length=2000, default="?", help_text="@query: '?' and the query string.")
    content_digest = models.CharField(max_length=300, blank=True)
    signature_input = models.TextField()
    signature = models.TextField()
    headers = models.JSONField(default=dict, help_text="Other headers as received: Host, Date, Content-Type.")
    key_id = models.CharField(max_length=300)
    public_key = models.CharField(max_length=64, help_text="Raw 32-byte Ed25519 public key, base64.")
    body = models.BinaryField()

    class Meta:
        constraints = [
            # A retried request carries the same body: keep the first. Parts of a split notification differ.
            models.UniqueConstraint(
                fields=["origin_domain", "global_id", "kind", "content_digest"], name="one_signed_request_per_body"
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.global_id} from {self.origin_domain}"


class LearnedDomainState(models.TextChoices):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    NOT_PUSHMAIL = "not_pushmail"


class LearnedDomain(models.Model):
    """A domain that an authenticated SMTP message said runs Pushmail (its ``Pushmail`` header).

    The header alone proves nothing: the row is pending until discovery of the
    domain returns a valid document listing it (docs/protocol.md, "Mail by
    SMTP"); then the next send to it goes over the federation API, whatever a
    process had cached. Its state moves only through ``federation.states.LEARNED``.
    """

    domain = models.CharField(max_length=253, unique=True)
    state = models.CharField(max_length=12, choices=LearnedDomainState.choices, default=LearnedDomainState.PENDING)
    heard_from = models.CharField(max_length=320, help_text="The From address of the last message that said so.")
    authenticated_by = models.CharField(max_length=300, help_text="The SPF or DKIM pass that vouched for the header.")
    first_heard_at = models.DateTimeField(default=timezone.now)
    last_heard_at = models.DateTimeField(default=timezone.now)
    times_heard = models.PositiveIntegerField(default=1)
    checked_at = models.DateTimeField(null=True, blank=True, help_text="When discovery last answered.")
    confirmed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True, db_index=True)
    last_error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-last_heard_at"]

    def __str__(self) -> str:
        return f"{self.domain} ({self.state})"
