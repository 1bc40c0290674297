"""Reads for the recipient side, always scoped to the user."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from federation import payloads

from .models import EntryState, InboxEntry


def inbox_for(*, user) -> QuerySet[InboxEntry]:  # type: ignore[no-untyped-def]
    return InboxEntry.objects.owned_by(user).order_by("-received_at", "-pk")


def entry_for(*, user, entry_id: int) -> InboxEntry:  # type: ignore[no-untyped-def]
    return InboxEntry.objects.owned_by(user).select_related("remote", "local").get(pk=entry_id)


def body_of(entry: InboxEntry) -> dict[str, Any] | None:
    """The body a reader sees, or None while it is not available to this reader."""
    if entry.state == EntryState.NOTICE:
        return {"text": entry.notice_text, "html": None, "to": [], "cc": []}
    if entry.state == EntryState.WITHDRAWN and entry.opened_at is None:
        return None
    if entry.local is not None:
        from outbox.services import canonical_content

        data = payloads.parse_body(canonical_content(entry.local))
    elif entry.remote is not None and entry.remote.content is not None:
        data = payloads.parse_body(bytes(entry.remote.content))
    else:
        return None
    return {
        key: data.get(key) for key in ("text", "html", "to", "cc", "date", "message_id", "in_reply_to", "references")
    }
