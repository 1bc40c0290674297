"""Reads for a user's own account pages."""

from __future__ import annotations

from allauth.mfa.models import Authenticator
from allauth.mfa.recovery_codes.internal.auth import RecoveryCodes
from django.db.models import QuerySet

from .models import ApiToken, User


def api_tokens_for(*, user: User) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user=user).order_by("-created_at", "-pk")


def security_for(*, user: User) -> dict[str, object]:
    """What protects the sign-in: authenticator app on or off, passkeys, unused recovery codes."""
    by_type: dict[str, list[Authenticator]] = {}
    for authenticator in Authenticator.objects.filter(user=user):
        by_type.setdefault(authenticator.type, []).append(authenticator)
    codes = by_type.get(Authenticator.Type.RECOVERY_CODES, [])
    return {
        "totp": bool(by_type.get(Authenticator.Type.TOTP)),
        "passkeys": len(by_type.get(Authenticator.Type.WEBAUTHN, [])),
        "recovery_codes": len(RecoveryCodes(codes[0]).get_unused_codes()) if codes else 0,
    }
