"""Key pairs of the hosted domains: creation, rotation, loading.

Each domain has an Ed25519 key (the federation's signatures) and an RSA key
(DKIM, for the mail it sends by SMTP); ``rotatekey`` rotates both.

The private half is stored encrypted (AES-256-GCM) under a key derived with HKDF from the
``PUSHMAIL_KEY_ENCRYPTION_KEY`` setting, and bound to its key id, so a database dump or a
leaked row does not give away a domain's signing key. :func:`private_key_of` is the one way
to get a usable private key from a stored row.
"""

from __future__ import annotations

import base64
import os
import secrets
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone

from .models import DkimKey, SigningKey

if TYPE_CHECKING:
    from accounts.models import Domain


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


# --- the private half, encrypted at rest ---------------------------------------------------

#: Stored private keys start with this; the rest is base64url(nonce || AES-GCM ciphertext).
ENCRYPTED_PREFIX = "aesgcm1:"
_NONCE_BYTES = 12
_HKDF_INFO = b"pushmail signing-key encryption v1"


class KeyDecryptionError(ImproperlyConfigured):
    """A stored private key cannot be decrypted: PUSHMAIL_KEY_ENCRYPTION_KEY is not the one it was stored with."""


def _derive(secret: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO)
    return hkdf.derive(secret.encode("utf-8"))


def _encryption_key() -> bytes:
    secret = str(settings.PUSHMAIL_KEY_ENCRYPTION_KEY or "")
    if not secret:
        raise ImproperlyConfigured("PUSHMAIL_KEY_ENCRYPTION_KEY is not set")
    return _derive(secret)


def _decryption_keys() -> list[bytes]:
    """The current key, then those of PUSHMAIL_KEY_ENCRYPTION_OLD_KEYS (while a rotation is under way)."""
    old = settings.PUSHMAIL_KEY_ENCRYPTION_OLD_KEYS
    return [_encryption_key(), *(_derive(str(secret)) for secret in old if secret)]


def raw_seed(private: Ed25519PrivateKey) -> bytes:
    """The 32-byte Ed25519 seed of ``private``."""
    return private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def encrypt_seed(seed: bytes, *, key_id: str) -> str:
    """The stored form of an Ed25519 seed: encrypted, and valid only for the row of ``key_id``."""
    nonce = os.urandom(_NONCE_BYTES)
    sealed = AESGCM(_encryption_key()).encrypt(nonce, seed, key_id.encode("utf-8"))
    return ENCRYPTED_PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")


def decrypt_seed(stored: str, *, key_id: str) -> bytes:
    """The Ed25519 seed from its stored form (see :func:`encrypt_seed`)."""
    if not stored.startswith(ENCRYPTED_PREFIX):
        raise KeyDecryptionError(f"the private key of {key_id} is not stored encrypted; run `manage.py migrate`")
    try:
        blob = base64.urlsafe_b64decode(stored[len(ENCRYPTED_PREFIX) :].encode("ascii"))
    except ValueError as exc:
        raise KeyDecryptionError(f"the stored private key of {key_id} is damaged") from exc
    for key in _decryption_keys():
        try:
            return AESGCM(key).decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], key_id.encode("utf-8"))
        except (InvalidTag, ValueError):
            continue
    raise KeyDecryptionError(
        f"the private key of {key_id} cannot be decrypted: PUSHMAIL_KEY_ENCRYPTION_KEY differs from the one it "
        "was stored with (during a rotation, list the previous one in PUSHMAIL_KEY_ENCRYPTION_OLD_KEYS)"
    )


def is_sealed_with_current_key(stored: str, *, key_id: str) -> bool:
    """Whether ``stored`` decrypts with PUSHMAIL_KEY_ENCRYPTION_KEY itself (not only with an old key)."""
    try:
        blob = base64.urlsafe_b64decode(stored.removeprefix(ENCRYPTED_PREFIX).encode("ascii"))
        AESGCM(_encryption_key()).decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], key_id.encode("utf-8"))
    except (InvalidTag, ValueError):
        return False
    return stored.startswith(ENCRYPTED_PREFIX)


def reencrypt_private_keys() -> int:
    """Re-encrypt every stored private key with the current PUSHMAIL_KEY_ENCRYPTION_KEY; return how many changed.

    The second step of a rotation: set the new key, list the old one in PUSHMAIL_KEY_ENCRYPTION_OLD_KEYS,
    run this, then drop the old one.
    """
    changed = 0
    with transaction.atomic():
        for key in SigningKey.objects.select_for_update().order_by("pk"):
            if is_sealed_with_current_key(key.private_key, key_id=key.key_id):
                continue
            key.private_key = encrypt_seed(decrypt_seed(key.private_key, key_id=key.key_id), key_id=key.key_id)
            key.save(update_fields=["private_key"])
            changed += 1
        for dkim in DkimKey.objects.select_for_update().order_by("pk"):
            aad = _dkim_aad(dkim)
            if is_sealed_with_current_key(dkim.private_key, key_id=aad):
                continue
            dkim.private_key = encrypt_seed(decrypt_seed(dkim.private_key, key_id=aad), key_id=aad)
            dkim.save(update_fields=["private_key"])
            changed += 1
    return changed


def create_signing_key(*, domain: Domain) -> SigningKey:
    """Make a new current key for ``domain``. The caller retires the old one first."""
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key_id = f"{domain.name}#{timezone.now():%Y%m%d}-{secrets.token_hex(4)}"
    return SigningKey.objects.create(
        domain=domain,
        key_id=key_id,
        private_key=encrypt_seed(raw_seed(private), key_id=key_id),
        public_key=b64(public),
    )


@transaction.atomic
def rotate_key(*, domain: Domain) -> SigningKey:
    """Retire the current keys, Ed25519 and DKIM (still published until their expiry), and make new ones."""
    now = timezone.now()
    SigningKey.objects.select_for_update().filter(domain=domain, retired_at__isnull=True).update(
        retired_at=now, expires_at=now + settings.PUSHMAIL_KEY_GRACE
    )
    DkimKey.objects.select_for_update().filter(domain=domain, retired_at__isnull=True).update(
        retired_at=now, expires_at=now + settings.PUSHMAIL_KEY_GRACE
    )
    create_dkim_key(domain=domain)
    return create_signing_key(domain=domain)


def current_key(domain_name: str) -> SigningKey:
    return SigningKey.objects.select_related("domain").current().get(domain__name=domain_name)


def private_key_of(key: SigningKey) -> Ed25519PrivateKey:
    """The usable private key of a stored key pair (decrypted here, never kept in plain text)."""
    return Ed25519PrivateKey.from_private_bytes(decrypt_seed(key.private_key, key_id=key.key_id))


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(unb64(text))


# --- DKIM ------------------------------------------------------------------------------------


def _dkim_aad(key: DkimKey) -> str:
    # The encrypted private key is bound to its record name, so it cannot be moved to another row.
    return f"dkim:{key.selector}._domainkey.{key.domain_id}"


def create_dkim_key(*, domain: Domain) -> DkimKey:
    """Make a new current DKIM key for ``domain`` under a new selector. The caller retires the old one first.

    Selectors are ``pm`` + date + random hex, so every rotation gets a new DNS
    name and the old record can stay published beside it until it expires.
    """
    private = rsa.generate_private_key(public_exponent=65537, key_size=settings.PUSHMAIL_DKIM_KEY_BITS)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key = DkimKey(
        domain=domain,
        selector=f"pm{timezone.now():%Y%m%d}{secrets.token_hex(3)}",
        public_key=b64(public),
    )
    key.private_key = encrypt_seed(pem, key_id=_dkim_aad(key))
    key.save()
    return key


def current_dkim_key(domain: Domain) -> DkimKey:
    """The key ``domain`` signs its SMTP mail with; made now if the domain has none yet (created before DKIM)."""
    with transaction.atomic():
        key = DkimKey.objects.current().filter(domain=domain).first()
        return key or create_dkim_key(domain=domain)


def dkim_private_pem(key: DkimKey) -> bytes:
    """The usable private key (PEM) of a stored DKIM key (decrypted here, never kept in plain text)."""
    return decrypt_seed(key.private_key, key_id=_dkim_aad(key))
