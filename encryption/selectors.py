"""Reads of OpenPGP keys: a user's own, and the published ones of an address."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import User

from .models import OpenPGPKey, PinnedKey


def current_key_for(*, user: User) -> OpenPGPKey | None:
    """The user's key in use (not revoked), if any."""
    return OpenPGPKey.objects.filter(user=user, revoked_at__isnull=True).first()


def keys_for(*, user: User) -> QuerySet[OpenPGPKey]:
    """Every key of the user, the one in use first, then revoked ones, newest first."""
    return OpenPGPKey.objects.filter(user=user).order_by("revoked_at", "-uploaded_at", "-pk")


def published_keys(*, domain: str, wkd_hash: str) -> list[OpenPGPKey]:
    """The keys published for a local part (by its WKD hash) at a hosted domain: the one in use first."""
    found = OpenPGPKey.objects.filter(
        user__domain__name=domain.lower(), user__is_active=True, wkd_hash=wkd_hash
    ).order_by("revoked_at", "-uploaded_at", "-pk")
    return list(found)


def published_keys_for_address(*, address: str) -> list[OpenPGPKey]:
    """The keys published for a hosted address: the one in use first, then revoked ones."""
    found = OpenPGPKey.objects.filter(user__email=address.lower(), user__is_active=True)
    return list(found.order_by("revoked_at", "-uploaded_at", "-pk"))


def pinned_keys_for(*, user: User) -> QuerySet[PinnedKey]:
    """The correspondents' keys the user pinned, changed ones first."""
    return PinnedKey.objects.filter(user=user).order_by("offered_fingerprint", "address").reverse()
