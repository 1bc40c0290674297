"""Reads for a user's own account pages."""

from __future__ import annotations

from django.db.models import QuerySet

from .models import ApiToken, User


def api_tokens_for(*, user: User) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user=user).order_by("-created_at", "-pk")


def storage_for(*, user: User) -> dict[str, int] | None:
    """Bytes used and the quota, or None while the attachments store cannot count usage."""
    try:
        from attachments.selectors import usage_bytes
    except ImportError:
        return None
    used = usage_bytes(user=user)
    quota = user.effective_quota_bytes
    return {"used": used, "quota": quota, "percent": min(100, round(100 * used / quota)) if quota else 100}
