"""A sent message's canonical body and attachment manifest (docs/protocol.md §4), as peers get them."""

from __future__ import annotations

from federation import payloads

from .models import Message, MessageAttachment


def manifest_of(message: Message) -> list[dict[str, object]]:
    """The attachment manifest (name, type, size, digest) in position order; [] when none."""
    return [
        {"name": a.name, "type": a.content_type, "size": a.size, "digest": "sha-256:" + a.blob.sha256}
        for a in MessageAttachment.objects.filter(message=message).select_related("blob").order_by("position")
    ]


def canonical_content(message: Message, *, manifest: list[dict[str, object]] | None = None) -> bytes:
    """The bytes of the body that recipient domains fetch, and whose digest the notification carries."""
    return payloads.canonical_body(
        global_id=message.id,
        message_id=message.message_id,
        sender=message.sender_address,
        to=message.to,
        cc=message.cc,
        subject=message.subject,
        date=message.date,
        text=message.text,
        html=message.html,
        in_reply_to=message.in_reply_to,
        references=message.references,
        attachments=manifest_of(message) if manifest is None else manifest,
        sender_name=message.sender_name,
        encrypted=message.encrypted,
    )
