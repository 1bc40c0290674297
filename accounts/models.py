"""Hosted domains, mailboxes (users) and API tokens."""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

from django.contrib.auth.models import AbstractUser, UserManager
from django.db import models


class FetchPolicy(models.TextChoices):
    ON_OPEN = "on_open", "Fetch when I open a message"
    ON_NOTIFY = "on_notify", "Fetch as soon as notified (the sender cannot tell when I read)"


class RemoteContentPolicy(models.TextChoices):
    ASK = "ask", "Block remote images until I allow them"
    ALWAYS = "always", "Always show remote images (through this server's image proxy)"


DEFAULT_QUOTA_BYTES = 2 * 1024**3


class Domain(models.Model):
    """A mail domain this instance serves."""

    name = models.CharField(max_length=253, unique=True)
    default_fetch_policy = models.CharField(
        max_length=9, choices=FetchPolicy.choices, default=FetchPolicy.ON_OPEN, help_text="For mailboxes that set none."
    )
    default_quota_bytes = models.BigIntegerField(
        default=DEFAULT_QUOTA_BYTES, help_text="Storage per mailbox unless the mailbox sets its own."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class MailboxManager(UserManager["User"]):
    def get_by_natural_key(self, username: str | None) -> User:
        return self.get(email__iexact=username)

    # The stub's create_user takes a username first; here the address is the login.
    def create_user(self, email: str, password: str | None = None, **extra: Any) -> User:  # type: ignore[override]
        local_part, _, domain_name = email.rpartition("@")
        extra.setdefault("domain", Domain.objects.get(name=domain_name.lower()))
        user = self.model(email=email.lower(), local_part=local_part.lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra: Any) -> User:  # type: ignore[override]
        extra.update(is_staff=True, is_superuser=True)
        return self.create_user(email, password, **extra)


class User(AbstractUser):
    """A mailbox: ``local_part@domain``. The address is the login."""

    username = None  # type: ignore[assignment]  # no username field: the address is the login
    email = models.EmailField("address", unique=True)
    local_part = models.CharField(max_length=64)
    domain = models.ForeignKey(Domain, on_delete=models.PROTECT, related_name="mailboxes")
    display_name = models.CharField(max_length=100, blank=True)
    signature = models.TextField(blank=True, max_length=2000)
    fetch_policy = models.CharField(
        max_length=9, choices=FetchPolicy.choices, blank=True, help_text="Blank: the domain's default."
    )
    remote_content = models.CharField(
        max_length=6, choices=RemoteContentPolicy.choices, default=RemoteContentPolicy.ASK
    )
    recovery_address = models.EmailField(blank=True, help_text="Where password reset links are sent.")
    quota_bytes = models.BigIntegerField(null=True, blank=True, help_text="Blank: the domain's default.")
    has_mail_rules = models.BooleanField(
        default=False,
        editable=False,
        help_text="Has filters or a vacation reply turned on: new mail runs them (kept by the mail settings).",
    )

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    objects: ClassVar[MailboxManager] = MailboxManager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["domain", "local_part"], name="unique_mailbox_per_domain")]

    @property
    def address(self) -> str:
        return self.email

    @property
    def effective_fetch_policy(self) -> str:
        return self.fetch_policy or self.domain.default_fetch_policy

    @property
    def effective_quota_bytes(self) -> int:
        return self.quota_bytes if self.quota_bytes is not None else self.domain.default_quota_bytes

    def __str__(self) -> str:
        return self.email


class ApiToken(models.Model):
    """A bearer token for the user API. Only its SHA-256 is stored."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    key_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=8)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @staticmethod
    def hash(raw: str) -> str:
        return hashlib.sha256(raw.encode()).hexdigest()
