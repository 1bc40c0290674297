"""A message's IMAP ENVELOPE (RFC 3501 §7.4.2) from its header block, as Twisted's IMAP server writes it.

The bytes are those of Twisted's ``spew_envelope`` for the parsed message
(``collapseNestedLists([getEnvelope(message)])``): quoted strings, NIL, and
literals for what a quoted string cannot carry. Most header blocks are read
here without the email package (:func:`head_fields`), which a mailbox of
thousands of messages would spend most of a listing in; an unusual block
(8-bit bytes, a line that is neither a field nor its continuation) is parsed
by the email package as Twisted's own path does.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import functools
import re
from io import BytesIO
from typing import Any

from twisted.mail import imap4

__all__ = ["Part", "ascii_value", "envelope", "envelope_bytes", "head_fields"]


class Part:
    """A message or one of its MIME parts, as Twisted's IMessagePart (headers, body, subparts)."""

    def __init__(self, message: email.message.Message, raw: bytes) -> None:
        self._message = message
        self._raw = raw

    def getHeaders(self, negate: bool, *names: str) -> dict[str, str]:  # noqa: N802 - Twisted's interface
        wanted = {(name.decode("ascii", "replace") if isinstance(name, bytes) else name).lower() for name in names}
        found: dict[str, str] = {}
        for key, value in self._message.items():
            name = key.lower()
            if (name in wanted) != negate or (negate and not wanted):
                found.setdefault(name, ascii_value(str(value)))
        return found

    def getBodyFile(self) -> BytesIO:  # noqa: N802
        _head, sep, body = self._raw.partition(b"\r\n\r\n")
        if not sep:
            _head, sep, body = self._raw.partition(b"\n\n")
        return BytesIO(body if sep else b"")

    def getSize(self) -> int:  # noqa: N802
        return len(self._raw)

    def isMultipart(self) -> bool:  # noqa: N802
        return self._message.is_multipart()

    def getSubPart(self, part: int) -> Part:  # noqa: N802
        payload = self._message.get_payload()
        if not isinstance(payload, list) or not 0 <= part < len(payload):
            raise IndexError(part)
        sub: Any = payload[part]
        return Part(sub, sub.as_bytes(policy=email.policy.compat32.clone(linesep="\r\n")))


def ascii_value(value: str) -> str:
    """A header value Twisted can write (it encodes them as ASCII): folded lines joined, others replaced."""
    return " ".join(value.split()).encode("ascii", "replace").decode("ascii")


# A header line as the email package's feed parser reads one (its headerRE, without "From ").
_HEADER_LINE = re.compile(r"[\041-\071\073-\176]+:")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def head_fields(head: bytes) -> dict[str, str] | None:
    """What ``Part.getHeaders(True)`` gives for this header block (first of each name, lower-cased,
    :func:`ascii_value`), read without the email package; None for a block this reading does not cover
    exactly (8-bit bytes, a line that is neither a field nor its continuation)."""
    if not head.isascii():
        return None
    found: dict[str, str] = {}
    name: str | None = None
    value: list[str] = []
    for line in _LINE_BREAK.split(head.decode("ascii")):
        if not line:
            break
        if line[0] in " \t":
            if name is None:
                return None
            value.append(line)
            continue
        if line.startswith("From ") or not _HEADER_LINE.match(line):
            return None
        if name is not None:
            found.setdefault(name, ascii_value(" ".join(value)))
        key, _colon, rest = line.partition(":")
        name, value = key.lower(), [rest]
    if name is not None:
        found.setdefault(name, ascii_value(" ".join(value)))
    return found


@functools.lru_cache(maxsize=4096)
def _addresses(value: str | None) -> list[Any]:
    """Twisted's ``imap4.parseAddr``, remembered: a mailbox lists the same senders again and again."""
    return imap4.parseAddr(value)


def envelope(headers: dict[str, str]) -> tuple[Any, ...]:
    """Twisted's ``imap4.getEnvelope`` of these header fields."""
    from_ = headers.get("from")
    sender = headers.get("sender", from_)
    reply_to = headers.get("reply-to", from_)
    to = headers.get("to")
    cc = headers.get("cc")
    bcc = headers.get("bcc")
    return (
        headers.get("date"),
        headers.get("subject"),
        _addresses(from_),
        _addresses(sender),
        reply_to and _addresses(reply_to),
        to and _addresses(to),
        cc and _addresses(cc),
        bcc and _addresses(bcc),
        headers.get("in-reply-to"),
        headers.get("message-id"),
    )


def envelope_bytes(head: bytes) -> bytes:
    """The ENVELOPE of the message with this header block, as written after ``ENVELOPE `` in a FETCH answer."""
    fields = head_fields(head)
    if fields is None:
        parsed = Part(email.message_from_bytes(head, policy=email.policy.compat32), head)
        return bytes(imap4.collapseNestedLists([imap4.getEnvelope(parsed)]))
    return bytes(imap4.collapseNestedLists([envelope(fields)]))
