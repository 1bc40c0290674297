"""Ed25519 key pairs of the hosted domains: creation, rotation, loading."""

from __future__ import annotations

import base64
import secrets
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .models import SigningKey

if TYPE_CHECKING:
    from accounts.models import Domain


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def create_signing_key(*, domain: Domain) -> SigningKey:
    """Make a new current key for ``domain``. The caller retires the old one first."""
    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key_id = f"{domain.name}#{timezone.now():%Y%m%d}-{secrets.token_hex(4)}"
    return SigningKey.objects.create(domain=domain, key_id=key_id, private_key=b64(seed), public_key=b64(public))


@transaction.atomic
def rotate_key(*, domain: Domain) -> SigningKey:
    """Retire the current key (still published until its expiry) and make a new one."""
    now = timezone.now()
    SigningKey.objects.select_for_update().filter(domain=domain, retired_at__isnull=True).update(
        retired_at=now, expires_at=now + settings.PUSHMAIL_KEY_GRACE
    )
    return create_signing_key(domain=domain)


def current_key(domain_name: str) -> SigningKey:
    return SigningKey.objects.select_related("domain").current().get(domain__name=domain_name)


def private_key_of(key: SigningKey) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(unb64(key.private_key))


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(unb64(text))
