"""Reads for attachments: what a page lists, and what counts against a mailbox's quota."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db.models import Sum
from django.urls import reverse

from mailbox.content import readable_content_for
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


def _items(manifest: list[dict[str, Any]], url_for: Any) -> list[AttachmentItem]:
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


def _message_manifest(message: Any) -> list[dict[str, Any]]:
    from outbox.services import manifest_of

    return manifest_of(message)


def manifest_for_entry(entry: Any) -> list[dict[str, Any]]:
    """The manifest a reader of ``entry`` may see, under cleaned names; [] while the message is hidden from them."""
    return [item.manifest_item() for item in readable_content_for(entry=entry).attachments]


def attachment_items_for_entry(entry: Any) -> list[AttachmentItem]:
    """Attachments of an inbox entry, each with its download URL and whether it is still at the sender's.

    "At the sender's" means this message's own fetch has not brought the bytes
    yet, whatever else is stored here: the same file held for another message
    must not show (it would tell the reader what others hold).
    """
    items = []
    for item in readable_content_for(entry=entry).attachments:
        kwargs = {"entry_id": entry.pk, "index": item.index}
        url = reverse("webmail:entry-attachment", kwargs=kwargs)
        at_sender = item.blob is None
        items.append(
            AttachmentItem(
                index=item.index,
                name=item.name,
                content_type=item.content_type,
                size=item.size,
                digest=item.digest,
                url=url,
                preview_url=f"{url}?inline=1" if previewable(item.content_type) and not item.blocked else None,
                at_sender=at_sender,
                blocked=blocked_reason(item.name, item.blocked, received=True) if item.blocked else None,
                fetch_url=reverse("webmail:entry-attachment-fetch", kwargs=kwargs)
                if at_sender and not item.blocked
                else None,
            )
        )
    return items


def attachment_items_for_message(message: Any) -> list[AttachmentItem]:
    """Attachments of a sent message, for its sender."""
    return _items(
        _message_manifest(message),
        lambda i: reverse("webmail:sent-attachment", kwargs={"message_id": message.pk, "index": i}),
    )


def attachment_items_for_draft(draft: Any) -> list[AttachmentItem]:
    """Attachments of a draft; ``index`` here is the DraftAttachment id (the URL's ``attachment_id``)."""
    from outbox.models import DraftAttachment

    items = []
    for a in DraftAttachment.objects.filter(draft=draft).select_related("blob"):
        url = reverse("webmail:draft-attachment", kwargs={"draft_id": draft.pk, "attachment_id": a.pk})
        items.append(
            AttachmentItem(
                index=a.pk,
                name=a.name,
                content_type=a.content_type,
                size=a.size,
                digest=a.blob.digest,
                url=url,
                preview_url=f"{url}?inline=1" if previewable(a.content_type) else None,
                at_sender=False,
            )
        )
    return items


def usage_bytes(user: User) -> int:
    """Bytes that count against ``user``'s quota (``User.effective_quota_bytes``).

    The sum of:

    - the size of every message the user sent that is still in their mailbox
      (Sent and Trash; the canonical body size, so the text and HTML), however
      long ago recipients fetched it or its retention for them ended;
    - the size of every attachment of those messages, counted per message even
      when the bytes are shared with other messages (dedupe saves disk for the
      instance, not quota for the user);
    - the size of every attachment on the user's unsent drafts;
    - the size of every received message whose body has been fetched to this
      instance (remote entries in state "fetched").

    Not counted: received messages still at the sender's, notices, mail from
    the same instance (it counts for its sender), attachments fetched for
    received mail (stored once for the whole instance), and sent messages the
    user deleted for good whose rows stay only for their recipients.
    """
    from mailbox.models import EntryState, InboxEntry
    from outbox.models import DraftAttachment, MessageAttachment
    from outbox.selectors import sent_messages_for

    def total(queryset: Any, field: str) -> int:
        return int(queryset.aggregate(n=Sum(field))["n"] or 0)

    sent = sent_messages_for(user=user)
    return (
        total(sent, "size")
        + total(MessageAttachment.objects.filter(message__in=sent.values("pk")), "size")
        + total(DraftAttachment.objects.filter(draft__owner=user, draft__sent_message__isnull=True), "size")
        + total(
            InboxEntry.objects.filter(owner=user, remote__isnull=False, state=EntryState.FETCHED),
            "size",
        )
    )


@dataclass(frozen=True)
class QuotaUsage:
    """What a settings page or the compose form shows: "1.2 MB of 2.0 GB used (0%)"."""

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
