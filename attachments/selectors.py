"""Reads for attachments: how a page lists them, and a mailbox's use of its quota."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pushmail_site.hooks import Hook
from pushmail_site.sizes import human_size

from .filenames import blocked_extension, blocked_reason, clean_filename

if TYPE_CHECKING:
    from accounts.models import User

# Shown in the page: raster images and PDF only. Never SVG, HTML or anything
# else that a browser would run or render as a document of this origin.
PREVIEWABLE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf"})


@dataclass(frozen=True)
class AttachmentItem:
    """One attachment as the message view lists it (templates/webmail/partials/attachments.html)."""

    index: int
    name: str
    content_type: str
    size: int
    digest: str
    url: str
    preview_url: str | None
    at_sender: bool  # not yet fetched to this instance
    blocked: str | None = None  # why the file is refused (a blocked type), or None
    fetch_url: str | None = None  # while at the sender's: where the page starts and follows its fetch

    @property
    def human_size(self) -> str:
        return human_size(self.size)

    @property
    def preview_kind(self) -> str | None:
        """ "image" or "pdf" when the page may show it inline."""
        if self.preview_url is None:
            return None
        return "pdf" if self.content_type == "application/pdf" else "image"


def previewable(content_type: str) -> bool:
    return content_type in PREVIEWABLE_TYPES


def manifest_items(manifest: list[dict[str, Any]], url_for: Any) -> list[AttachmentItem]:
    """The items of a manifest (sent mail), under cleaned names, each at ``url_for(index)``."""
    items = []
    for index, entry in enumerate(manifest):
        url = url_for(index)
        kind = str(entry.get("type") or "application/octet-stream")
        name = clean_filename(entry.get("name"))
        extension = blocked_extension(name)
        items.append(
            AttachmentItem(
                index=index,
                name=name,
                content_type=kind,
                size=int(entry.get("size") or 0),
                digest=str(entry.get("digest") or ""),
                url=url,
                preview_url=f"{url}?inline=1" if previewable(kind) and not extension else None,
                at_sender=False,
                blocked=blocked_reason(name, extension, received=True) if extension else None,
            )
        )
    return items


#: ``usage_bytes(user)``: the bytes that count against ``user``'s quota (``User.effective_quota_bytes``),
#: sent and received mail alike; the mailbox app answers it (mailbox.selectors.usage_bytes says what counts).
usage_bytes: Hook[[Any], int] = Hook("attachments.selectors.usage_bytes")


@dataclass(frozen=True)
class QuotaUsage:
    """What a settings page or the compose form shows: "1.2 MiB of 2.0 GiB used (0%)"."""

    used: int
    quota: int

    @property
    def percent(self) -> int:
        return min(100, round(100 * self.used / self.quota)) if self.quota > 0 else 100

    @property
    def full(self) -> bool:
        return self.used >= self.quota

    def __str__(self) -> str:
        return f"{human_size(self.used)} of {human_size(self.quota)} used ({self.percent}%)"


def quota_for(user: User) -> QuotaUsage:
    """The user's storage use against their quota (see :func:`usage_bytes` for what counts)."""
    return QuotaUsage(used=usage_bytes(user), quota=user.effective_quota_bytes)
