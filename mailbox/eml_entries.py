"""A received entry as the ``.eml`` its reader downloads: the one rendering the webmail and POP3 share."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from attachments.models import Blob
from federation import payloads

from .content import ReadableContent, readable_content_for
from .eml import EmlAttachment, EmlSource, build_eml, eml_head
from .models import InboxEntry

if TYPE_CHECKING:
    from outbox.models import Message

__all__ = ["entry_eml", "entry_eml_head", "entry_eml_source", "sent_eml_source"]


def _blob_bytes(blob: Blob | None) -> bytes | None:
    if blob is None:
        return None
    with blob.file.open("rb") as handle:
        return handle.read()


def _date(value: Any) -> datetime | None:
    if isinstance(value, str) and value:
        try:
            return payloads.parse_time(value, "date")
        except payloads.PayloadError:
            return None
    return value or None


def entry_eml_source(entry: InboxEntry, content: ReadableContent, body: dict[str, Any]) -> EmlSource:
    """What the .eml of an entry holds: its body, and the attachments whose bytes this reader may have.

    A blocked type is never handed out, in an export either; attachments still at
    the sender's are listed in the text (mailbox.eml).
    """
    return EmlSource(
        sender=entry.sender,
        sender_name=entry.sender_name,
        to=list(body.get("to") or []),
        cc=list(body.get("cc") or []),
        subject=entry.subject,
        date=_date(body.get("date")) or entry.received_at,
        message_id=str(body.get("message_id") or ""),
        in_reply_to=str(body.get("in_reply_to") or ""),
        references=[str(r) for r in body.get("references") or []],
        text=body.get("text") or "",
        html=body.get("html"),
        attachments=[
            EmlAttachment(a.name, a.content_type, a.size, None if a.blocked else _blob_bytes(a.blob))
            for a in content.attachments
        ],
    )


def entry_eml(entry: InboxEntry) -> bytes | None:
    """The entry's .eml bytes, or None while its body is not here (or not for this reader).

    A message received by SMTP is given as it arrived, with the headers this instance added.
    """
    content = readable_content_for(entry=entry)
    body = content.body
    if body is None:
        return None
    if content.original is not None:
        return _blob_bytes(content.original)
    return build_eml(entry_eml_source(entry, content, body))


def sent_eml_source(message: Message) -> EmlSource:
    """What the .eml of a sent message holds, for its sender (the webmail's download, IMAP's Sent):
    the name it went out with (or the sender's current one, for mail sent before names were kept)
    and every attachment, which the sender's instance always holds."""
    rows = message.attachments.select_related("blob").order_by("position")
    return EmlSource(
        sender=message.sender_address,
        sender_name=message.sender_name or message.sender.display_name,
        to=list(message.to),
        cc=list(message.cc),
        subject=message.subject,
        date=message.date,
        message_id=message.message_id,
        in_reply_to=message.in_reply_to,
        references=[str(r) for r in message.references],
        text=message.text,
        html=message.html,
        attachments=[EmlAttachment(a.name, a.content_type, a.size, _blob_bytes(a.blob)) for a in rows],
    )


def entry_eml_head(entry: InboxEntry) -> bytes | None:
    """The header block of :func:`entry_eml` (through the blank line), or None when that is None.

    A mail program listing a mailbox reads only this: no attachment's bytes are read
    unless they shape the header block (an attachment makes the message multipart).
    """
    content = readable_content_for(entry=entry)
    body = content.body
    if body is None:
        return None
    if content.original is not None:
        eml = _blob_bytes(content.original) or b""
        if not eml:
            return None  # as entry_eml gives it: nothing to read
    elif body.get("html") or any(not a.blocked and a.blob is not None for a in content.attachments):
        eml = build_eml(entry_eml_source(entry, content, body))
    else:
        return eml_head(entry_eml_source(entry, content, body))  # reads no attachment: none is here
    head, sep, _body = eml.partition(b"\r\n\r\n")
    if not sep:
        head, _sep, _body = eml.partition(b"\n\n")
    return head + b"\r\n\r\n"
