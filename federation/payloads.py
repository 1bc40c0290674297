"""Wire payloads: the canonical body, its digest, notifications and withdrawals.

docs/protocol.md §4–§6 define these; this module is their only implementation.
Everything a peer sends is checked here for type, range and characters before
any other code sees it: JSON nesting and numbers (:func:`loads`), each field of
a notification, withdrawal and fetched body, and the text of a peer's answers.
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

from accounts.validators import display_name_problem, normalize_address, normalize_domain

VERSION = 1
DIGEST_PREFIX = "sha-256:"
_DIGEST_RE = re.compile(r"sha-256:[0-9a-f]{64}")
# ASCII digits only: \d would also take "٢٠٢٦", which strptime reads as 2026.
_TIME_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
# The 8-4-4-4-12 hex form, any case (normalized to lower case).
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# RFC 6838 §4.2 restricted names, lowercase, no parameters: "image/png", "application/vnd.oasis.opendocument.text".
_MIME_RE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
MAX_ATTACHMENTS = 100
MAX_ATTACHMENT_NAME = 255
# Nesting deeper than this is refused before anything walks the parsed value (the
# payloads themselves nest three levels; the rest leaves room for extensions, §10).
MAX_DEPTH = 16
# The canonical body's length is stored in a 32-bit column; no body comes near it.
MAX_BODY_SIZE = 2**31 - 1
# A file's size: the largest integer every JSON implementation reads exactly (and
# 100 of them still add up within a signed 64-bit integer).
MAX_FILE_SIZE = 2**53 - 1
MAX_REFERENCES = 100
MAX_ID_CHARS = 400  # message_id, and in_reply_to and references as a notification keeps them
MAX_HEADER_CHARS = 998  # subject; in_reply_to and references entries in a body (RFC 5322 line length)
MAX_BODY_ADDRESSES = 10_000  # to and cc of a body together
# Times from 1970 up to (not including) the year 9999: the last year would overflow
# when shown in a time zone east of UTC.
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9999, 1, 1, tzinfo=UTC)

# C0 and C1 control characters, DEL, and unpaired surrogates (which no UTF-8 text or
# database column can hold). A subject may hold a TAB (RFC 5322 white space).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTROL_BUT_TAB = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")
# What a multi-line text (a body's text and html) may not hold.
_NUL_OR_SURROGATE = re.compile(r"[\x00\ud800-\udfff]")


class PayloadError(ValueError):
    """A payload is malformed. ``field`` names the field (``body`` for the whole document)."""

    def __init__(self, field: str, problem: str) -> None:
        if len(problem) > 300:
            problem = problem[:300] + "…"
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _describe(char: str) -> str:
    code = ord(char)
    if 0xD800 <= code <= 0xDFFF:
        return f"an unpaired surrogate (U+{code:04X})"
    if char in "\r\n":
        return "CR or LF"
    return f"a control character (U+{code:04X})"


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with whole seconds, e.g. ``2026-11-26T10:00:00Z``."""
    v = value.astimezone(UTC)
    return f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}Z"


def parse_time(value: Any, field: str) -> datetime:
    if not isinstance(value, str) or not _TIME_RE.fullmatch(value):
        raise PayloadError(field, "expected a UTC time of the form YYYY-MM-DDTHH:MM:SSZ")
    try:
        # The form is checked above, so ISO 8601 parsing reads it as strptime would, many times faster.
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise PayloadError(field, f"{value!r} is not a valid time of the form YYYY-MM-DDTHH:MM:SSZ") from exc
    parsed = parsed.replace(tzinfo=UTC)
    if not _EARLIEST <= parsed < _LATEST:
        raise PayloadError(field, f"{value} is outside 1970-01-01T00:00:00Z to 9998-12-31T23:59:59Z")
    return parsed


# --- JSON from peers ------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise PayloadError("body", f"{name} is not a JSON number")


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise PayloadError(key[:100], "appears twice in one object")
            seen.add(key)
    return data


def _depth_within(value: Any, limit: int) -> bool:
    """Whether ``value`` nests at most ``limit`` arrays or objects deep (without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return True


def loads(content: bytes | str) -> Any:
    """Parse JSON a peer sent: UTF-8, no NaN or Infinity, no member twice, at most MAX_DEPTH deep.

    Raises PayloadError (field ``body``, or the repeated member's name), never
    RecursionError or a bare ValueError, whatever the bytes.
    """
    try:
        text = content.decode("utf-8") if isinstance(content, bytes) else content
        data = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique_members)
    except PayloadError:
        raise
    except UnicodeDecodeError as exc:
        raise PayloadError("body", f"is not UTF-8: {exc.reason} at byte {exc.start}") from exc
    except RecursionError as exc:
        raise PayloadError("body", f"nested more than {MAX_DEPTH} levels deep") from exc
    except ValueError as exc:  # JSONDecodeError, and integers of more than 4300 digits
        raise PayloadError("body", f"is not valid JSON: {exc}") from exc
    if isinstance(data, dict | list) and not _depth_within(data, MAX_DEPTH):
        raise PayloadError("body", f"nested more than {MAX_DEPTH} levels deep")
    return data


def clean_text(value: Any, *, limit: int = 300) -> str:
    """A peer's free text (an error ``detail``, a rejection ``reason``) safe to store and show:
    control characters and unpaired surrogates become spaces, at most ``limit`` characters."""
    if not isinstance(value, str):
        return ""
    return _CONTROL.sub(" ", value[:limit])


def limit_value(value: Any, field: str, default: int) -> int:
    """One of a discovery document's ``limits``: an integer from 1 to 2**31 - 1, or the default."""
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 2**31 - 1:
        raise PayloadError(field, "expected an integer from 1 to 2147483647")
    return value


def unfit_character(value: str, *, multiline: bool = False, tab: bool = False) -> str | None:
    """The first character the wire refuses in ``value``, described (e.g. "a control
    character (U+001B)"), or None. ``multiline`` text (a body's text and html) refuses only
    NUL and unpaired surrogates; other text also refuses control characters (but TAB when
    ``tab``). Senders check their input with this, so peers never refuse what they send."""
    pattern = _NUL_OR_SURROGATE if multiline else _CONTROL_BUT_TAB if tab else _CONTROL
    bad = pattern.search(value)
    if bad is None:
        return None
    return "NUL" if bad.group() == "\x00" and multiline else _describe(bad.group())


# --- Field checks ---------------------------------------------------------------------


def _string(value: Any, field: str, *, max_chars: int, min_chars: int = 0, control: re.Pattern[str] = _CONTROL) -> str:
    """A single-line string: the right type and length, no control characters, no surrogates."""
    if not isinstance(value, str):
        raise PayloadError(field, "expected a string")
    if not min_chars <= len(value) <= max_chars:
        if min_chars:
            raise PayloadError(field, f"must be {min_chars} to {max_chars} characters")
        raise PayloadError(field, f"longer than {max_chars} characters")
    bad = control.search(value)
    if bad:
        raise PayloadError(field, f"contains {_describe(bad.group())}")
    return value


def _version(data: dict[str, Any]) -> None:
    value = data.get("version")
    if type(value) is not int or value != VERSION:
        shown = repr(value)[:40]
        raise PayloadError("version", f"unsupported {shown}; this instance speaks {VERSION}")


def _type(data: dict[str, Any], expected: str) -> None:
    if data.get("type") != expected:
        raise PayloadError("type", f"expected {expected!r}")


def _integer(value: Any, field: str, *, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise PayloadError(field, "expected an integer of at least 0")
    if value > maximum:
        raise PayloadError(field, f"over the limit of {maximum}")
    return value


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
    sender_name: str = "",
    encrypted: bool = False,
) -> bytes:
    """The bytes every reader receives and the digest covers. Bcc is never part of it.

    ``attachments`` (manifest entries, see :class:`ManifestEntry`) is a member
    only when there are some, so a body without attachments has the same bytes
    as before attachments existed (docs/protocol.md §4.4). ``from_name`` (the
    sender's display name) likewise only when there is one (§4.1).
    """
    extra: dict[str, Any] = {"attachments": list(attachments)} if attachments else {}
    if sender_name:
        extra["from_name"] = sender_name
    if encrypted:  # only when encrypted: other bodies keep their bytes (§4.6)
        extra["encrypted"] = True
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


def body_mismatch(body: dict[str, Any], notification: dict[str, Any]) -> str | None:
    """Name the first field where a checked body (:func:`check_body`) disagrees with its notification.

    The digest already pins the bytes; this pins what the inbox showed before opening.
    """
    for name, expected in notification.items():
        actual = body.get(name)
        if name in ("attachments", "from_name", "encrypted"):  # absent and empty are the same
            actual, expected = actual or None, expected or None
        if actual != expected:
            return name
    return None


def parse_body(content: bytes) -> dict[str, Any]:
    """A stored body as a JSON object, without the schema check (see :func:`check_body`)."""
    data = loads(content)
    if not isinstance(data, dict):
        raise PayloadError("body", "is not a JSON object")
    return data


def _address_list(value: Any, field: str, *, limit: int) -> list[str]:
    if not isinstance(value, list):
        raise PayloadError(field, "expected an array of addresses")
    if len(value) > limit:
        raise PayloadError(field, f"{len(value)} addresses exceed the limit of {limit}")
    for index, item in enumerate(value):
        where = f"{field}[{index}]"
        if _address(item, where) != item:
            raise PayloadError(where, "is not in normalized form (§5.1)")
    return value


def check_body(content: bytes) -> dict[str, Any]:
    """A fetched body, checked against the body schema (docs/protocol.md §4.1, §4.4).

    Raises PayloadError naming the first field that breaks it: such a body is
    refused as ``malformed`` and never stored. Unknown members are ignored.
    """
    data = parse_body(content)
    _version(data)
    body_id = _string(data.get("id"), "id", max_chars=36)
    if not _UUID_RE.fullmatch(body_id):
        raise PayloadError("id", "expected a UUID of the form 8-4-4-4-12 hex digits")
    _string(data.get("message_id"), "message_id", min_chars=1, max_chars=MAX_ID_CHARS)
    sender = data.get("from")
    if _address(sender, "from") != sender:
        raise PayloadError("from", "is not in normalized form (§5.1)")
    to = _address_list(data.get("to"), "to", limit=MAX_BODY_ADDRESSES)
    _address_list(data.get("cc"), "cc", limit=MAX_BODY_ADDRESSES - len(to))
    _string(data.get("subject"), "subject", max_chars=MAX_HEADER_CHARS, control=_CONTROL_BUT_TAB)
    parse_time(data.get("date"), "date")
    for name, nullable in (("text", False), ("html", True)):
        value = data.get(name)
        if value is None and nullable and name in data:
            continue
        if not isinstance(value, str):
            raise PayloadError(name, "expected a string" + (" or null" if nullable else ""))
        unfit = unfit_character(value, multiline=True)
        if unfit:
            raise PayloadError(name, f"contains {unfit}")
    _string(data.get("in_reply_to"), "in_reply_to", max_chars=MAX_HEADER_CHARS)
    references = data.get("references")
    if not isinstance(references, list) or len(references) > MAX_REFERENCES:
        raise PayloadError("references", f"expected an array of at most {MAX_REFERENCES} strings")
    for index, item in enumerate(references):
        _string(item, f"references[{index}]", max_chars=MAX_HEADER_CHARS)
    if "attachments" in data:
        parse_manifest(data["attachments"])
    if "from_name" in data:
        display_name(data["from_name"], "from_name")
    if "encrypted" in data:
        check_encrypted_body(data)
    return data


#: The subject an encrypted message carries outside its ciphertext (§4.6): the real one is inside.
ENCRYPTED_SUBJECT = "..."
ARMORED_MESSAGE_BEGIN = "-----BEGIN PGP MESSAGE-----"
ARMORED_MESSAGE_END = "-----END PGP MESSAGE-----"


def is_armored_message(text: str) -> bool:
    """An ASCII-armored OpenPGP message (RFC 4880 §6.2) and nothing else, blank lines around it aside."""
    stripped = text.strip()
    return stripped.startswith(ARMORED_MESSAGE_BEGIN) and stripped.endswith(ARMORED_MESSAGE_END)


def encrypted_body_problem(*, subject: str, text: str, html: str | None) -> tuple[str, str] | None:
    """(field, problem) when an encrypted body breaks the rules of §4.6; None when it keeps them."""
    if subject != ENCRYPTED_SUBJECT:
        return "subject", f"must be {ENCRYPTED_SUBJECT!r} in an encrypted message"
    if html is not None:
        return "html", "must be null in an encrypted message"
    if not is_armored_message(text):
        return "text", "must be one ASCII-armored OpenPGP message in an encrypted message"
    return None


def check_encrypted_body(data: dict[str, Any]) -> None:
    if data.get("encrypted") is not True:
        raise PayloadError("encrypted", "expected true, or no member")
    problem = encrypted_body_problem(subject=data["subject"], text=data["text"], html=data.get("html"))
    if problem:
        raise PayloadError(*problem)


def display_name(value: Any, field: str) -> str:
    """A sender's display name (§4.1): a string of at most 100 characters, no control, line or
    paragraph separator, or bidirectional control character; "" for none. Never identity."""
    if not isinstance(value, str):
        raise PayloadError(field, "expected a string")
    problem = display_name_problem(value)
    if problem:
        raise PayloadError(field, problem)
    if value != value.strip():
        raise PayloadError(field, "must not start or end with white space")
    return value


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
    field_name = f"{where}.name"
    if not isinstance(value, str):
        raise PayloadError(field_name, "expected a string")
    if not value or len(value) > MAX_ATTACHMENT_NAME:
        raise PayloadError(field_name, f"must be 1 to {MAX_ATTACHMENT_NAME} characters")
    if "/" in value or "\\" in value:
        raise PayloadError(field_name, "contains a path separator")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in value):
        raise PayloadError(field_name, "contains a control or formatting character")
    if value.strip(". ") == "" or value != value.strip():
        raise PayloadError(field_name, "must not be only dots, or start or end with white space")
    return value


def parse_manifest(value: Any, *, field_name: str = "attachments") -> list[ManifestEntry]:
    """Validate an attachment manifest strictly; errors name the entry and the field."""
    if not isinstance(value, list):
        raise PayloadError(field_name, "expected a list")
    if len(value) > MAX_ATTACHMENTS:
        raise PayloadError(field_name, f"{len(value)} exceeds the limit of {MAX_ATTACHMENTS} attachments")
    entries = []
    for index, item in enumerate(value):
        where = f"{field_name}[{index}]"
        if not isinstance(item, dict):
            raise PayloadError(where, "expected an object")
        name = _attachment_name(item.get("name"), where)
        kind = item.get("type")
        if not isinstance(kind, str) or not _MIME_RE.fullmatch(kind):
            raise PayloadError(f"{where}.type", "expected a lowercase MIME type such as image/png, without parameters")
        size = _integer(item.get("size"), f"{where}.size", maximum=MAX_FILE_SIZE)
        digest_value = item.get("digest")
        if not isinstance(digest_value, str) or not _DIGEST_RE.fullmatch(digest_value):
            raise PayloadError(f"{where}.digest", "expected 'sha-256:' followed by 64 lowercase hex digits")
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
    sender_name: str = ""  # the sender's display name, "" for none: shown, never trusted (§5.4)
    encrypted: bool = False  # the body is OpenPGP ciphertext, the subject a placeholder (§4.6)

    def to_json(self) -> dict[str, Any]:
        # "attachments" and "sender_name" only when there are some: notifications without them are unchanged.
        extra: dict[str, Any] = {"attachments": [a.to_json() for a in self.attachments]} if self.attachments else {}
        if self.sender_name:
            extra["sender_name"] = self.sender_name
        if self.encrypted:
            extra["encrypted"] = True
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

    def conflict_with(self, first: Notification) -> str | None:
        """The first field, other than ``recipients`` and ``expires``, in which this repeat of
        an already known notification differs from the first one (§5.4); None if none does."""
        for name in (
            "message_id",
            "sender",
            "subject",
            "date",
            "size",
            "digest",
            "in_reply_to",
            "references",
            "attachments",
            "sender_name",
            "encrypted",
        ):
            if getattr(self, name) != getattr(first, name):
                return name
        return None


def _require(data: dict[str, Any], field: str) -> Any:
    if field not in data:
        raise PayloadError(field, "required field missing")
    return data[field]


def _address(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise PayloadError(field, "expected an address string")
    if len(value) > 400:
        raise PayloadError(field, "longer than any address (at most 64 + 1 + 253 characters)")
    bad = _CONTROL.search(value)
    if bad:
        raise PayloadError(field, f"contains {_describe(bad.group())}")
    try:
        return normalize_address(value)
    except ValidationError as exc:
        raise PayloadError(field, exc.messages[0]) from exc


def _domain(value: Any, field: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 253:
        raise PayloadError(field, "expected a domain name of 1 to 253 characters")
    try:
        return normalize_domain(value)
    except ValidationError as exc:
        raise PayloadError(field, exc.messages[0]) from exc


def _uuid(value: Any, field: str) -> uuid.UUID:
    if not isinstance(value, str):
        raise PayloadError(field, "expected a string")
    if not _UUID_RE.fullmatch(value):
        raise PayloadError(field, f"{value[:60]!r} is not a UUID of the form 8-4-4-4-12 hex digits")
    return uuid.UUID(value)


def _id_list(value: Any, field: str) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_REFERENCES:
        raise PayloadError(field, f"expected a list of at most {MAX_REFERENCES} strings")
    return [
        _string(v, f"{field}[{i}]", max_chars=len(v) if isinstance(v, str) else 0)[:MAX_ID_CHARS]
        for i, v in enumerate(value)
    ]


def is_mime_type(value: str) -> bool:
    """Whether ``value`` is a manifest ``type`` (§4.4): a bare lowercase MIME type such as ``image/png``."""
    return _MIME_RE.fullmatch(value) is not None


def parse_notification(data: Any, *, max_recipients: int) -> Notification:
    """Check a notification (§5.4) field by field; PayloadError names the first bad one."""
    if not isinstance(data, dict):
        raise PayloadError("body", "expected a JSON object")
    _type(data, "notification")
    _version(data)
    recipients = _require(data, "recipients")
    if not isinstance(recipients, list):
        raise PayloadError("recipients", "expected a list of addresses")
    if not recipients:
        raise PayloadError("recipients", "at least one recipient is required")
    if len(recipients) > max_recipients:
        raise PayloadError("recipients", f"{len(recipients)} exceeds the limit of {max_recipients}")
    digest_value = _require(data, "digest")
    if not isinstance(digest_value, str) or not _DIGEST_RE.fullmatch(digest_value):
        raise PayloadError("digest", "expected 'sha-256:' followed by 64 lowercase hex digits")
    size = _integer(_require(data, "size"), "size", maximum=MAX_BODY_SIZE)
    subject = _string(_require(data, "subject"), "subject", max_chars=MAX_HEADER_CHARS, control=_CONTROL_BUT_TAB)
    in_reply_to = data.get("in_reply_to")
    in_reply_to = "" if in_reply_to is None else in_reply_to
    if isinstance(in_reply_to, str):  # cut to what is kept, after the check of every character
        in_reply_to = _string(in_reply_to, "in_reply_to", max_chars=len(in_reply_to))[:MAX_ID_CHARS]
    else:
        raise PayloadError("in_reply_to", "expected a string")
    message_id = _string(_require(data, "message_id"), "message_id", min_chars=1, max_chars=MAX_ID_CHARS)
    # Optional: absent or null is no name, as from an instance that does not send names.
    name = data.get("sender_name")
    sender_name = "" if name is None else display_name(name, "sender_name")
    encrypted = data.get("encrypted", False)
    if encrypted is None:
        encrypted = False
    if not isinstance(encrypted, bool):
        raise PayloadError("encrypted", "expected true or false")
    if encrypted and subject != ENCRYPTED_SUBJECT:
        raise PayloadError("subject", f"must be {ENCRYPTED_SUBJECT!r} in the notification of an encrypted message")
    return Notification(
        global_id=_uuid(_require(data, "id"), "id"),
        message_id=message_id,
        sender=_address(_require(data, "sender"), "sender"),
        recipients=list(dict.fromkeys(_address(r, f"recipients[{i}]") for i, r in enumerate(recipients))),
        subject=subject,
        date=parse_time(_require(data, "date"), "date"),
        size=size,
        digest=digest_value,
        in_reply_to=in_reply_to,
        references=_id_list(data.get("references", []), "references"),
        expires=parse_time(_require(data, "expires"), "expires"),
        attachments=tuple(parse_manifest(data["attachments"])) if "attachments" in data else (),
        sender_name=sender_name,
        encrypted=encrypted,
    )


# --- Notification batch (§5.4.1) ---------------------------------------------

#: A batch answers each of its notifications with what it would have had alone: a PayloadError here.
BatchItem = Notification | PayloadError


def parse_notification_batch(data: Any, *, max_notifications: int, max_recipients: int) -> list[BatchItem]:
    """Check a batch's envelope; each notification is checked on its own, so one bad item is its own answer.

    Raises PayloadError for the envelope (not an object, wrong type or version, ``notifications``
    missing, empty or over ``max_notifications``): the whole batch is refused then.
    """
    if not isinstance(data, dict):
        raise PayloadError("body", "expected a JSON object")
    _type(data, "notification_batch")
    _version(data)
    items = _require(data, "notifications")
    if not isinstance(items, list):
        raise PayloadError("notifications", "expected a list of notifications")
    if not items:
        raise PayloadError("notifications", "at least one notification is required")
    if len(items) > max_notifications:
        raise PayloadError("notifications", f"{len(items)} exceeds the limit of {max_notifications}")
    parsed: list[BatchItem] = []
    for item in items:
        try:
            parsed.append(parse_notification(item, max_recipients=max_recipients))
        except PayloadError as exc:
            parsed.append(exc)
    return parsed


def notification_batch(notifications: list[Notification]) -> dict[str, Any]:
    """The body of a batch of notifications to one recipient domain (§5.4.1)."""
    return {"type": "notification_batch", "version": VERSION, "notifications": [n.to_json() for n in notifications]}


# --- Withdrawal -------------------------------------------------------------


@dataclass(frozen=True)
class Withdrawal:
    global_id: uuid.UUID
    sender: str

    def to_json(self) -> dict[str, Any]:
        return {"type": "withdrawal", "version": VERSION, "id": str(self.global_id), "sender": self.sender}


def parse_withdrawal(data: Any) -> Withdrawal:
    """Check a withdrawal (§5.6) field by field; PayloadError names the first bad one."""
    if not isinstance(data, dict):
        raise PayloadError("body", "expected a JSON object")
    _type(data, "withdrawal")
    _version(data)
    return Withdrawal(global_id=_uuid(_require(data, "id"), "id"), sender=_address(_require(data, "sender"), "sender"))


# --- Spam report (feedback to the origin) ---------------------------------------------------

REPORT_VERDICTS = ("spam", "overturned")
# More reports than any instance has mailboxes is not a count: refused rather than stored.
MAX_REPORTS = 10_000_000


@dataclass(frozen=True)
class Report:
    """A recipient instance's verdict on a message the origin sent (§5.8): never who reported."""

    global_id: uuid.UUID
    verdict: str  # "spam" or "overturned"
    reports: int
    reported_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "report",
            "version": VERSION,
            "id": str(self.global_id),
            "verdict": self.verdict,
            "reports": self.reports,
            "reported_at": format_time(self.reported_at),
        }


def parse_report(data: Any, *, latest: datetime) -> Report:
    """Check a spam report (§5.8) field by field; PayloadError names the first bad one.

    ``reported_at`` may not be later than ``latest`` (now plus the signature window).
    """
    if not isinstance(data, dict):
        raise PayloadError("body", "expected a JSON object")
    _type(data, "report")
    _version(data)
    global_id = _uuid(_require(data, "id"), "id")
    verdict = _require(data, "verdict")
    if verdict not in REPORT_VERDICTS:
        raise PayloadError("verdict", f"expected one of {', '.join(REPORT_VERDICTS)}")
    reports = _integer(_require(data, "reports"), "reports", maximum=MAX_REPORTS)
    reported_at = parse_time(_require(data, "reported_at"), "reported_at")
    if reported_at > latest:
        raise PayloadError("reported_at", f"{format_time(reported_at)} is in the future")
    return Report(global_id=global_id, verdict=verdict, reports=reports, reported_at=reported_at)


# --- Lists: subscriptions and list notifications (docs/protocol.md §13) ------------------------

SUBSCRIPTION_STATES = ("active", "paused", "unsubscribed")


@dataclass(frozen=True)
class Subscription:
    """A reader's instance sets, on the reader's behalf, where their subscription to a list stands (§13.2).

    ``requested_at`` orders requests: the list keeps the latest, so a retried old one changes nothing.
    """

    list_address: str
    subscriber: str
    state: str  # one of SUBSCRIPTION_STATES
    requested_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "subscription",
            "version": VERSION,
            "list": self.list_address,
            "subscriber": self.subscriber,
            "state": self.state,
            "requested_at": format_time(self.requested_at),
        }


def parse_subscription(data: Any, *, latest: datetime) -> Subscription:
    """Check a subscription request (§13.2) field by field; PayloadError names the first bad one.

    ``requested_at`` may not be later than ``latest`` (now plus the signature window).
    """
    if not isinstance(data, dict):
        raise PayloadError("body", "expected a JSON object")
    _type(data, "subscription")
    _version(data)
    list_address = _address(_require(data, "list"), "list")
    subscriber = _address(_require(data, "subscriber"), "subscriber")
    state = _require(data, "state")
    if state not in SUBSCRIPTION_STATES:
        raise PayloadError("state", f"expected one of {', '.join(SUBSCRIPTION_STATES)}")
    requested_at = parse_time(_require(data, "requested_at"), "requested_at")
    if requested_at > latest:
        raise PayloadError("requested_at", f"{format_time(requested_at)} is in the future")
    return Subscription(list_address=list_address, subscriber=subscriber, state=state, requested_at=requested_at)


@dataclass(frozen=True)
class ListNotification:
    """An issue of a list, told to one subscriber domain (§13.3): no recipients, the list names them.

    The receiving instance delivers it to its own subscribers of record; the list is the sender.
    """

    global_id: uuid.UUID
    list_address: str
    message_id: str
    subject: str
    date: datetime
    size: int
    digest: str
    expires: datetime
    list_name: str = ""
    attachments: tuple[ManifestEntry, ...] = field(default=())
    #: The subscriber domain this notification is for; "" (absent) means every domain of the receiver.
    domain: str = ""

    def to_json(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"attachments": [a.to_json() for a in self.attachments]} if self.attachments else {}
        if self.list_name:
            extra["list_name"] = self.list_name
        where = {"domain": self.domain} if self.domain else {}
        return {
            "type": "list_notification",
            "version": VERSION,
            "id": str(self.global_id),
            "list": self.list_address,
            **where,
            "message_id": self.message_id,
            "subject": self.subject,
            "date": format_time(self.date),
            "size": self.size,
            "digest": self.digest,
            "expires": format_time(self.expires),
            **extra,
        }

    def for_recipients(self, recipients: list[str]) -> Notification:
        """The same message as an ordinary notification to ``recipients`` (the local subscribers here)."""
        return Notification(
            global_id=self.global_id,
            message_id=self.message_id,
            sender=self.list_address,
            recipients=recipients,
            subject=self.subject,
            date=self.date,
            size=self.size,
            digest=self.digest,
            in_reply_to="",
            references=[],
            expires=self.expires,
            attachments=self.attachments,
            sender_name=self.list_name,
        )


def parse_list_notification(data: Any) -> ListNotification:
    """Check a list notification (§13.3) field by field; PayloadError names the first bad one."""
    if not isinstance(data, dict):
        raise PayloadError("body", "expected a JSON object")
    _type(data, "list_notification")
    _version(data)
    if "recipients" in data:
        raise PayloadError("recipients", "a list notification names no recipients: the list's subscribers of record")
    digest_value = _require(data, "digest")
    if not isinstance(digest_value, str) or not _DIGEST_RE.fullmatch(digest_value):
        raise PayloadError("digest", "expected 'sha-256:' followed by 64 lowercase hex digits")
    name = data.get("list_name")
    domain = data.get("domain")
    return ListNotification(
        global_id=_uuid(_require(data, "id"), "id"),
        list_address=_address(_require(data, "list"), "list"),
        message_id=_string(_require(data, "message_id"), "message_id", min_chars=1, max_chars=MAX_ID_CHARS),
        subject=_string(_require(data, "subject"), "subject", max_chars=MAX_HEADER_CHARS, control=_CONTROL_BUT_TAB),
        date=parse_time(_require(data, "date"), "date"),
        size=_integer(_require(data, "size"), "size", maximum=MAX_BODY_SIZE),
        digest=digest_value,
        expires=parse_time(_require(data, "expires"), "expires"),
        list_name="" if name is None else display_name(name, "list_name"),
        attachments=tuple(parse_manifest(data["attachments"])) if "attachments" in data else (),
        domain="" if domain is None else _domain(domain, "domain"),
    )
