"""An Internet message (RFC 5322, MIME) read into what a Pushmail reader sees.

Parsed with the standard library's ``email`` package and ``policy.default``.
Everything that comes out fits the body schema of docs/protocol.md §4.1:
addresses normalized (one that is not an address is left out), ids and the
subject on one line within their limits, text without NUL. The original bytes
are kept elsewhere (the .eml download), so nothing a reader could need is lost.
Used for mail received by SMTP, and for mail a mail program submits.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage, Message
from typing import Any

from django.core.exceptions import ValidationError

from accounts.validators import normalize_address
from federation import payloads

__all__ = ["MailPart", "ParsedMail", "parse_message"]

# Ids longer than the body schema's limit are cut: an id that long is junk anyway.
_MAX_ID = payloads.MAX_ID_CHARS
_MSG_ID = re.compile(r"<[^<>\s]{1,398}>")
_TEXT_UNFIT = re.compile(r"[\x00\ud800-\udfff]")
_LINE_UNFIT = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


@dataclass(frozen=True)
class MailPart:
    """One attachment: its cleaned file name, bare lowercase MIME type and bytes."""

    name: str
    content_type: str
    content: bytes


@dataclass
class ParsedMail:
    sender: str
    """The From address, or "" when the message has no usable one."""
    sender_name: str
    to: list[str]
    cc: list[str]
    subject: str
    date: datetime | None
    message_id: str
    in_reply_to: str
    references: list[str]
    text: str
    html: str | None
    attachments: list[MailPart] = field(default_factory=list)


def parse_message(raw: bytes) -> ParsedMail:
    """The reader's view of ``raw`` (CRLF or LF line ends). Never raises on malformed input:
    what cannot be read is left out (an unreadable header as empty, a part without a name named)."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)  # policy.default makes EmailMessage
    sender, sender_name = _from(message)
    body_parts = _body_parts(message)
    text_part, html_part = body_parts
    return ParsedMail(
        sender=sender,
        sender_name=sender_name,
        to=_addresses(message, "to"),
        cc=_addresses(message, "cc"),
        subject=_one_line(_header(message, "subject"), limit=payloads.MAX_HEADER_CHARS),
        date=_date(message),
        message_id=(_ids(_header(message, "message-id")) or [""])[0],
        in_reply_to=(_ids(_header(message, "in-reply-to")) or [""])[0],
        references=_ids(_header(message, "references"))[-payloads.MAX_REFERENCES :],
        text=_text(text_part) if text_part is not None else "",
        html=_text(html_part) if html_part is not None else None,
        attachments=_attachments(message, skip=[p for p in body_parts if p is not None]),
    )


# --- Headers ------------------------------------------------------------------------------------


def _header(message: EmailMessage, name: str) -> str:
    try:
        value = message.get(name)
    except Exception:  # noqa: BLE001 - a header policy.default cannot parse reads as absent
        return ""
    return "" if value is None else str(value)


def _one_line(value: str, *, limit: int) -> str:
    return " ".join(_LINE_UNFIT.sub(" ", value).split())[:limit]


def _address(value: str) -> str:
    try:
        return normalize_address(value)
    except ValidationError:
        return ""


def _header_addresses(message: EmailMessage, name: str) -> list[Address]:
    try:
        header: Any = message.get(name)
        return list(header.addresses) if header is not None else []
    except Exception:  # noqa: BLE001 - unparseable: no addresses
        return []


def _from(message: EmailMessage) -> tuple[str, str]:
    for found in _header_addresses(message, "from"):
        address = _address(found.addr_spec)
        if address:
            return address, _one_line(found.display_name, limit=100)
    return "", ""


def _addresses(message: EmailMessage, name: str) -> list[str]:
    seen: list[str] = []
    for found in _header_addresses(message, name):
        address = _address(found.addr_spec)
        if address and address not in seen:
            seen.append(address)
    return seen[: payloads.MAX_BODY_ADDRESSES // 2]


def _ids(value: str) -> list[str]:
    return [found for found in _MSG_ID.findall(value) if len(found) <= _MAX_ID]


def _date(message: EmailMessage) -> datetime | None:
    value = _header(message, "date")
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


# --- Body and attachments ----------------------------------------------------------------------


def _body_parts(message: EmailMessage) -> tuple[EmailMessage | None, EmailMessage | None]:
    """The text/plain and text/html parts a mail program would show (either may be None)."""
    try:
        text = message.get_body(preferencelist=("plain",))
        html = message.get_body(preferencelist=("html",))
    except Exception:  # noqa: BLE001 - a broken structure: read what the walk finds
        text = html = None
    if text is not None and text.is_attachment():
        text = None
    if html is not None and html.is_attachment():
        html = None
    return text, html  # type: ignore[return-value]


def _text(part: Message) -> str:
    try:
        content = part.get_content()  # type: ignore[attr-defined]
    except (LookupError, UnicodeError, ValueError, AssertionError):
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else ""
    if isinstance(content, bytes):
        content = content.decode("utf-8", errors="replace")
    content = str(content).replace("\r\n", "\n")
    return _TEXT_UNFIT.sub("\ufffd", content)


def _attachments(message: EmailMessage, *, skip: list[EmailMessage]) -> list[MailPart]:
    found: list[MailPart] = []
    for part in message.walk():
        if part.is_multipart() or any(part is body for body in skip):
            continue
        payload = part.get_payload(decode=True)
        content = payload if isinstance(payload, bytes) else b""
        content_type = part.get_content_type().lower()
        if not payloads.is_mime_type(content_type):
            content_type = "application/octet-stream"
        found.append(MailPart(name=_file_name(part, len(found) + 1), content_type=content_type, content=content))
        if len(found) >= payloads.MAX_ATTACHMENTS:
            break
    return found


def _file_name(part: Message, position: int) -> str:
    """The part's file name cleaned to what a manifest may carry, else ``attachment-N``."""
    try:
        name = part.get_filename() or ""
    except Exception:  # noqa: BLE001 - a name that cannot be decoded is no name
        name = ""
    name = name.replace("/", "_").replace("\\", "_")
    name = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Zl", "Zp"))
    name = name.strip()[: payloads.MAX_ATTACHMENT_NAME].strip()
    if not name.strip(". "):
        subtype = part.get_content_subtype() if payloads.is_mime_type(part.get_content_type().lower()) else "bin"
        name = f"attachment-{position}.{re.sub(r'[^a-z0-9]', '', subtype)[:10] or 'bin'}"
    return name
