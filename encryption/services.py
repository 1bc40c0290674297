"""Writes of OpenPGP keys: store a locked key made in the browser or imported, and revoke it."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import User

from . import openpgp
from .models import OpenPGPKey
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


__all__ = ["KeyConflict", "KeyProblem", "NoKey", "revoke_key", "store_key"]
