"""Hosted domains, mailboxes (users) and API tokens."""

from __future__ import annotations

import hashlib

from django.contrib.auth.models import AbstractUser, UserManager
from django.db import models


class Domain(models.Model):
    """A mail domain this instance serves."""

    name = models.CharField(max_length=253, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class MailboxManager(UserManager["User"]):
    def get_by_natural_key(self, username: str | None) -> User:
        return self.get(email__iexact=username)

    def create_user(self, email: str, password: str | None = None, **extra):  # type: ignore[override]
        local_part, _, domain_name = email.rpartition("@")
        extra.setdefault("domain", Domain.objects.get(name=domain_name.lower()))
        user = self.model(email=email.lower(), local_part=local_part.lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra):  # type: ignore[override]
        extra.update(is_staff=True, is_superuser=True)
        return self.create_user(email, password, **extra)


class User(AbstractUser):
    """A mailbox: ``local_part@domain``. The address is the login."""

    username = None  # type: ignore[assignment]
    email = models.EmailField("address", unique=True)
    local_part = models.CharField(max_length=64)
    domain = models.ForeignKey(Domain, on_delete=models.PROTECT, related_name="mailboxes")

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    objects = MailboxManager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["domain", "local_part"], name="unique_mailbox_per_domain")]

    @property
    def address(self) -> str:
        return self.email

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
