"""Wire payloads: the canonical body, its digest, notifications and withdrawals.

docs/protocol.md §4–§6 define these; this module is their only implementation.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.core.exceptions import ValidationError

from accounts.validators import normalize_address

VERSION = 1
DIGEST_PREFIX = "sha-256:"
_DIGEST_RE = re.compile(r"sha-256:[0-9a-f]{64}")
_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
# RFC 6838 §4.2 restricted names, lowercase, no parameters: "image/png", "application/vnd.oasis.opendocument.text".
_MIME_RE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
MAX_ATTACHMENTS = 100
MAX_ATTACHMENT_NAME = 255


class PayloadError(ValueError):
    """A payload is malformed; the message names the field and the problem."""


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with whole seconds, e.g. ``2026-11-26T10:00:00Z``."""
    return value.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any, field: str) -> datetime:
    if not isinstance(value, str) or not _TIME_RE.fullmatch(value):
        raise PayloadError(f"{field}: expected a UTC time of the form YYYY-MM-DDTHH:MM:SSZ")
    try:
        parsed = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")  # noqa: DTZ007 - the Z is UTC, set below
    except ValueError as exc:
        raise PayloadError(f"{field}: {value!r} is not of the form YYYY-MM-DDTHH:MM:SSZ") from exc
    return parsed.replace(tzinfo=UTC)


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8, no escaping of non-ASCII."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def canonical_body(
    *,
    global_id: uuid.UUID | str,
    message_id: str,
    sender: str,
    to: list[str],
    cc: list[str],
    subject: str,
    date: datetime,
    text: str,
    html: str | None,
    in_reply_to: str,
    references: list[str],
    attachments: list[dict[str, Any]] | None = None,
) -> bytes:
    """The bytes every reader receives and the digest covers. Bcc is never part of it.

    ``attachments`` (manifest entries, see :class:`ManifestEntry`) is a member
    only when there are some, so a body without attachments has the same bytes
    as before attachments existed (docs/protocol.md §4.4).
    """
    extra = {"attachments": list(attachments)} if attachments else {}
    return canonical_json(
        {
            **extra,
            "version": VERSION,
            "id": str(global_id),
            "message_id": message_id,
            "from": sender,
            "to": list(to),
            "cc": list(cc),
            "subject": subject,
            "date": format_time(date),
            "text": text,
            "html": html,
            "in_reply_to": in_reply_to,
            "references": list(references),
        }
    )


def digest(content: bytes) -> str:
    return DIGEST_PREFIX + hashlib.sha256(content).hexdigest()


def is_digest(value: str) -> bool:
    """``sha-256:`` and exactly 64 lowercase hex digits (§4.3)."""
    return bool(_DIGEST_RE.fullmatch(value))


def body_mismatch(content: bytes, notification: dict[str, Any]) -> str | None:
    """Name the first field where a fetched body disagrees with its notification, if any.

    The digest already pins the bytes; this pins what the inbox showed before opening.
    """
    try:
        body = parse_body(content)
    except (ValueError, UnicodeDecodeError):
        return "body is not a JSON object"
    for name, expected in notification.items():
        actual = body.get(name)
        if name == "attachments":  # absent and empty are the same manifest
            actual, expected = actual or None, expected or None
        if actual != expected:
            return name
    return None


def parse_body(content: bytes) -> dict[str, Any]:
    data = json.loads(content.decode("utf-8"))
    if not isinstance(data, dict):
        raise PayloadError("body is not a JSON object")
    return data


# --- Attachment manifest ------------------------------------------------------


@dataclass(frozen=True)
class ManifestEntry:
    """One attachment as the notification and the body announce it (docs/protocol.md §4.4)."""

    name: str
    type: str
    size: int
    digest: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "size": self.size, "digest": self.digest}


def _attachment_name(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise PayloadError(f"{where}.name: expected a string")
    if not value or len(value) > MAX_ATTACHMENT_NAME:
        raise PayloadError(f"{where}.name: must be 1 to {MAX_ATTACHMENT_NAME} characters")
    if "/" in value or "\\" in value:
        raise PayloadError(f"{where}.name: contains a path separator")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in value):
        raise PayloadError(f"{where}.name: contains a control or formatting character")
    if value.strip(". ") == "" or value != value.strip():
        raise PayloadError(f"{where}.name: must not be only dots, or start or end with white space")
    return value


def parse_manifest(value: Any, *, field_name: str = "attachments") -> list[ManifestEntry]:
    """Validate an attachment manifest strictly; errors name the entry and the field."""
    if not isinstance(value, list):
        raise PayloadError(f"{field_name}: expected a list")
    if len(value) > MAX_ATTACHMENTS:
        raise PayloadError(f"{field_name}: {len(value)} exceeds the limit of {MAX_ATTACHMENTS} attachments")
    entries = []
    for index, item in enumerate(value):
        where = f"{field_name}[{index}]"
        if not isinstance(item, dict):
            raise PayloadError(f"{where}: expected an object")
        name = _attachment_name(item.get("name"), where)
        kind = item.get("type")
        if not isinstance(kind, str) or not _MIME_RE.fullmatch(kind):
            raise PayloadError(f"{where}.type: expected a lowercase MIME type such as image/png, without parameters")
        size = item.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise PayloadError(f"{where}.size: expected an integer of at least 0")
        digest_value = item.get("digest")
        if not isinstance(digest_value, str) or not _DIGEST_RE.fullmatch(digest_value):
            raise PayloadError(f"{where}.digest: expected 'sha-256:' followed by 64 lowercase hex digits")
        entries.append(ManifestEntry(name=name, type=kind, size=size, digest=digest_value))
    return entries


# --- Notification -------------------------------------------------------------


@dataclass(frozen=True)
class Notification:
    global_id: uuid.UUID
    message_id: str
    sender: str
    recipients: list[str]
    subject: str
    date: datetime
    size: int
    digest: str
    in_reply_to: str
    references: list[str]
    expires: datetime
    attachments: tuple[ManifestEntry, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        # "attachments" only when there are some: notifications without them are unchanged.
        extra = {"attachments": [a.to_json() for a in self.attachments]} if self.attachments else {}
        return {
            "type": "notification",
            "version": VERSION,
            "id": str(self.global_id),
            "message_id": self.message_id,
            "sender": self.sender,
            "recipients": self.recipients,
            "subject": self.subject,
            "date": format_time(self.date),
            "size": self.size,
            "digest": self.digest,
            "in_reply_to": self.in_reply_to,
            "references": self.references,
            "expires": format_time(self.expires),
            **extra,
        }


def _require(data: dict[str, Any], field: str, kind: type | tuple[type, ...]) -> Any:
    if field not in data:
        raise PayloadError(f"{field}: required field missing")
    value = data[field]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise PayloadError(f"{field}: expected {names}")
    return value


def _no_line_breaks(value: str, field: str) -> str:
    if "\r" in value or "\n" in value:
        raise PayloadError(f"{field}: contains CR or LF")
    return value


def _address(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise PayloadError(f"{field}: expected an address string")
    try:
        return normalize_address(value)
    except ValidationError as exc:
        raise PayloadError(f"{field}: {exc.messages[0]}") from exc


def _uuid(value: Any, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError as exc:
        raise PayloadError(f"{field}: {value!r} is not a UUID") from exc


def _id_list(value: Any, field: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or len(value) > 100:
        raise PayloadError(f"{field}: expected a list of at most 100 strings")
    return [_no_line_breaks(v, field)[:400] for v in value]


def parse_notification(data: Any, *, max_recipients: int) -> Notification:
    if not isinstance(data, dict):
        raise PayloadError("body: expected a JSON object")
    if data.get("type") != "notification":
        raise PayloadError("type: expected 'notification'")
    if data.get("version") != VERSION:
        raise PayloadError(f"version: unsupported {data.get('version')!r}; this instance speaks {VERSION}")
    recipients = _require(data, "recipients", list)
    if not recipients:
        raise PayloadError("recipients: at least one recipient is required")
    if len(recipients) > max_recipients:
        raise PayloadError(f"recipients: {len(recipients)} exceeds the limit of {max_recipients}")
    digest_value = _require(data, "digest", str)
    if not _DIGEST_RE.fullmatch(digest_value):
        raise PayloadError("digest: expected 'sha-256:' followed by 64 lowercase hex digits")
    size = _require(data, "size", int)
    if size < 0:
        raise PayloadError("size: must not be negative")
    subject = _no_line_breaks(_require(data, "subject", str), "subject")
    if len(subject) > 998:
        raise PayloadError("subject: longer than 998 characters")
    in_reply_to = data.get("in_reply_to") or ""
    if not isinstance(in_reply_to, str):
        raise PayloadError("in_reply_to: expected a string")
    message_id = _no_line_breaks(_require(data, "message_id", str), "message_id")
    if not message_id or len(message_id) > 400:
        raise PayloadError("message_id: must be 1 to 400 characters")
    return Notification(
        global_id=_uuid(_require(data, "id", str), "id"),
        message_id=message_id,
        sender=_address(data.get("sender"), "sender"),
        recipients=list(dict.fromkeys(_address(r, "recipients[]") for r in recipients)),
        subject=subject,
        date=parse_time(data.get("date"), "date"),
        size=size,
        digest=digest_value.lower(),
        in_reply_to=_no_line_breaks(in_reply_to, "in_reply_to")[:400],
        references=_id_list(data.get("references", []), "references"),
        expires=parse_time(data.get("expires"), "expires"),
        attachments=tuple(parse_manifest(data["attachments"])) if "attachments" in data else (),
    )


# --- Withdrawal -------------------------------------------------------------


@dataclass(frozen=True)
class Withdrawal:
    global_id: uuid.UUID
    sender: str

    def to_json(self) -> dict[str, Any]:
        return {"type": "withdrawal", "version": VERSION, "id": str(self.global_id), "sender": self.sender}


def parse_withdrawal(data: Any) -> Withdrawal:
    if not isinstance(data, dict):
        raise PayloadError("body: expected a JSON object")
    if data.get("type") != "withdrawal":
        raise PayloadError("type: expected 'withdrawal'")
    if data.get("version") != VERSION:
        raise PayloadError(f"version: unsupported {data.get('version')!r}; this instance speaks {VERSION}")
    return Withdrawal(global_id=_uuid(_require(data, "id", str), "id"), sender=_address(data.get("sender"), "sender"))
