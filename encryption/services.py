"""Writes of OpenPGP keys: store a locked key made in the browser or imported, and revoke it."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import User
from accounts.validators import normalize_address

from . import openpgp
from .lookup import FoundKey, LookupUnavailable, find_keys
from .models import OpenPGPKey, PinnedKey
from .openpgp import KeyProblem


class KeyConflict(Exception):
    """The user already has a key in use, or the key is stored already."""


class NoKey(Exception):
    """The user has no key in use."""


def store_key(*, user: User, uploaded: str | bytes) -> OpenPGPKey:
    """Store the user's locked secret key (armored or binary) and publish its public part.

    Raises KeyProblem naming what is wrong with the key (not locked, another address, unreadable),
    KeyConflict when the user has a key in use already or the key is someone's already.
    """
    checked = openpgp.check_secret_key(openpgp.read_armored_or_binary(uploaded), address=user.email)
    try:
        with transaction.atomic():
            if OpenPGPKey.objects.select_for_update().filter(user=user, revoked_at__isnull=True).exists():
                raise KeyConflict("you have a key in use already: revoke it before you create or import another")
            return OpenPGPKey.objects.create(
                user=user,
                fingerprint=checked.fingerprint,
                algorithm=checked.algorithm,
                uid=checked.user_id[:500],
                key_created_at=checked.created,
                wkd_hash=openpgp.wkd_hash(user.local_part),
                public_key=checked.public,
                secret_key=checked.secret,
            )
    except IntegrityError as exc:
        raise KeyConflict(f"key {checked.fingerprint} is stored here already") from exc


def revoke_key(*, user: User, uploaded: str | bytes) -> OpenPGPKey:
    """Add a revocation made in the browser to the user's key in use; the published key carries it from now on.

    ``uploaded`` is the revoked key or a revocation certificate, armored or binary. Raises NoKey, or
    KeyProblem when it holds no revocation signed by that key.
    """
    data = openpgp.read_armored_or_binary(uploaded)
    with transaction.atomic():
        key = OpenPGPKey.objects.select_for_update().filter(user=user, revoked_at__isnull=True).first()
        if key is None:
            raise NoKey("you have no key in use to revoke")
        revocation = openpgp.find_revocation(data, public=bytes(key.public_key))
        key.public_key = openpgp.with_revocation(bytes(key.public_key), revocation)
        key.secret_key = openpgp.with_revocation(bytes(key.secret_key), revocation)
        key.revoked_at = timezone.now()
        key.save(update_fields=["public_key", "secret_key", "revoked_at"])
    return key


class NoPublishedKey(Exception):
    """The correspondent publishes no usable key (and none was pinned)."""


def look_up_correspondent(*, user: User, address: str) -> PinnedKey:
    """The correspondent's key as pinned for ``user``: pinned on first use, never replaced silently.

    Looks the key up (this instance, the correspondent's instance through federation, or their Web Key
    Directory). The first key found is pinned. A different key found later is recorded as offered, and
    ``changed`` is true until the user accepts it. Raises NoPublishedKey, or LookupUnavailable when
    nothing is pinned and the lookup cannot be made now (a pinned key is answered from the pin then).
    """
    address = normalize_address(address)
    pinned = PinnedKey.objects.filter(user=user, address=address).first()
    try:
        found = find_keys(address)
    except LookupUnavailable:
        if pinned is not None:
            return pinned
        raise
    current: FoundKey | None = next((k for k in found if not k.revoked), None)
    now = timezone.now()
    with transaction.atomic():
        if pinned is None:
            if current is None:
                raise NoPublishedKey(f"{address} publishes no OpenPGP key")
            pinned, _ = PinnedKey.objects.get_or_create(
                user=user,
                address=address,
                defaults={
                    "fingerprint": current.fingerprint,
                    "public_key": current.key,
                    "source": current.source,
                    "checked_at": now,
                },
            )
            return pinned
        pinned = PinnedKey.objects.select_for_update().get(pk=pinned.pk)
        pinned.checked_at = now
        pinned.pinned_revoked = any(k.revoked and k.fingerprint == pinned.fingerprint for k in found)
        if pinned.pinned_revoked:
            # Keep the revocation with the pinned key, so the browser refuses to encrypt to it.
            pinned.public_key = next(k.key for k in found if k.fingerprint == pinned.fingerprint)
        if current is not None and current.fingerprint != pinned.fingerprint:
            pinned.offered_fingerprint = current.fingerprint
            pinned.offered_key = current.key
            pinned.offered_source = current.source
        elif current is not None:
            pinned.offered_fingerprint, pinned.offered_key, pinned.offered_source = "", None, ""
        pinned.save(
            update_fields=[
                "checked_at",
                "pinned_revoked",
                "public_key",
                "offered_fingerprint",
                "offered_key",
                "offered_source",
            ]
        )
    return pinned


def accept_offered_key(*, user: User, address: str, fingerprint: str) -> PinnedKey:
    """Pin the key offered in place of the pinned one, once the user has compared ``fingerprint``."""
    with transaction.atomic():
        pinned = PinnedKey.objects.select_for_update().get(user=user, address=normalize_address(address))
        if not pinned.offered_fingerprint or pinned.offered_fingerprint != fingerprint.replace(" ", "").upper():
            raise KeyConflict("that is not the key offered for this correspondent")
        pinned.fingerprint = pinned.offered_fingerprint
        pinned.public_key = bytes(pinned.offered_key or b"")
        pinned.source = pinned.offered_source
        pinned.pinned_revoked = False
        pinned.offered_fingerprint, pinned.offered_key, pinned.offered_source = "", None, ""
        pinned.pinned_at = timezone.now()
        pinned.save(
            update_fields=[
                "fingerprint",
                "public_key",
                "source",
                "pinned_revoked",
                "offered_fingerprint",
                "offered_key",
                "offered_source",
                "pinned_at",
            ]
        )
    return pinned


__all__ = [
    "KeyConflict",
    "KeyProblem",
    "LookupUnavailable",
    "NoKey",
    "NoPublishedKey",
    "accept_offered_key",
    "look_up_correspondent",
    "revoke_key",
    "store_key",
]
