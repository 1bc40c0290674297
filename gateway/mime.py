"""An Internet message (RFC 5322, MIME) read into what a Pushmail reader sees.

Parsed with the standard library's ``email`` package and ``policy.default``.
Everything that comes out fits the body schema of docs/protocol.md §4.1:
addresses normalized (one that is not an address is left out), ids and the
subject on one line within their limits, text without NUL. The original bytes
are kept elsewhere (the .eml download), so nothing a reader could need is lost.
Used for mail received by SMTP, and for mail a mail program submits.

:func:`parse_file` reads a message from a file without holding it whole: one
pass splits the MIME structure line by line, decodes each large attachment
straight into a temporary file of its own and leaves only a skeleton (the
headers, the text parts, the small parts) for ``email`` to parse. A 25 MB
attachment costs a few buffers of memory, not several copies of itself.
"""

from __future__ import annotations

import binascii
import email
import email.parser
import email.policy
import email.utils
import io
import re
import secrets
import tempfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage, Message
from typing import IO, Any

from django.core.exceptions import ValidationError

from accounts.validators import normalize_address
from federation import payloads

__all__ = ["MailPart", "ParsedMail", "parse_file", "parse_message"]

# Ids longer than the body schema's limit are cut: an id that long is junk anyway.
_MAX_ID = payloads.MAX_ID_CHARS
_MSG_ID = re.compile(r"<[^<>\s]{1,398}>")
_TEXT_UNFIT = re.compile(r"[\x00\ud800-\udfff]")
_LINE_UNFIT = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


@dataclass(frozen=True)
class MailPart:
    """One attachment: its cleaned file name, bare lowercase MIME type and bytes.

    A large part read by :func:`parse_file` has its decoded bytes in ``file``
    (a temporary file, at its start) and ``content`` empty.
    """

    name: str
    content_type: str
    content: bytes
    file: IO[bytes] | None = None

    def open(self) -> IO[bytes]:
        """The decoded bytes as a binary file, from the start."""
        if self.file is None:
            return io.BytesIO(self.content)
        self.file.seek(0)
        return self.file


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
    #: The List-Id header's identity (RFC 2919), e.g. "announce.example.org", or "".
    list_id: str = ""
    #: Why the message is automated mail (RFC 3834 ``Auto-Submitted``, ``Precedence: bulk``), or "".
    automated: str = ""

    def close(self) -> None:
        """Remove the temporary files of the large attachments (:func:`parse_file`)."""
        for part in self.attachments:
            if part.file is not None:
                part.file.close()


def parse_message(raw: bytes) -> ParsedMail:
    """The reader's view of ``raw`` (CRLF or LF line ends). Never raises on malformed input:
    what cannot be read is left out (an unreadable header as empty, a part without a name named)."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)  # policy.default makes EmailMessage
    return _read(message, spooled={})


def parse_file(file: IO[bytes], *, spool_over: int = 64 * 1024) -> ParsedMail:
    """:func:`parse_message` for a message in a binary file (CRLF line ends), read once, line by line.

    Each leaf part that is not text (nor multipart, nor an attached message) and
    whose encoded body is over ``spool_over`` bytes is decoded into a temporary
    file as it is read; ``email`` parses the rest. The same reader's view as
    :func:`parse_message`. Call :meth:`ParsedMail.close` when done.
    """
    file.seek(0)
    splitter = _Splitter(file, spool_over=spool_over)
    try:
        skeleton = splitter.skeleton()
        message = email.message_from_bytes(skeleton, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        return _read(message, spooled=splitter.spooled)
    except BaseException:
        for spooled in splitter.spooled.values():
            spooled.close()
        raise


def sender_of(head: bytes) -> str:
    """The From address of a message's header block (as :func:`parse_file` reads it), or ""."""
    message = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(head)
    assert isinstance(message, EmailMessage)  # policy.default makes EmailMessage
    return _from(message)[0]


def _read(message: EmailMessage, *, spooled: dict[str, IO[bytes]]) -> ParsedMail:
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
        attachments=_attachments(message, skip=[p for p in body_parts if p is not None], spooled=spooled),
        list_id=_list_id(message),
        automated=_automated(message),
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


_LIST_ID = re.compile(r"<([^<>\s]{1,250})>")


def _list_id(message: EmailMessage) -> str:
    """The list identity of a List-Id header (RFC 2919: ``Name <id>``), lowercased, or ""."""
    value = _header(message, "list-id")
    found = _LIST_ID.search(value)
    return _one_line(found.group(1).lower(), limit=250) if found else ""


def _automated(message: EmailMessage) -> str:
    """Why automatic replies must not answer this message (RFC 3834 §2), or "" for a person's mail."""
    auto = _one_line(_header(message, "auto-submitted"), limit=60).lower()
    if auto and auto.split(";")[0].strip() != "no":
        return f"Auto-Submitted: {auto}"
    precedence = _one_line(_header(message, "precedence"), limit=20).lower()
    if precedence in ("bulk", "list", "junk"):
        return f"Precedence: {precedence}"
    for name in ("list-id", "list-unsubscribe", "x-auto-response-suppress"):
        if _header(message, name):
            return f"{name} header"
    return ""


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


def _attachments(message: EmailMessage, *, skip: list[EmailMessage], spooled: dict[str, IO[bytes]]) -> list[MailPart]:
    found: list[MailPart] = []
    used: set[str] = set()
    for part in message.walk():
        if part.is_multipart() or any(part is body for body in skip):
            continue
        marker = next((str(value) for name, value in part.items() if name.lower() == _SPOOL_HEADER), "")
        file = spooled.get(marker.strip())
        if file is not None:
            used.add(marker.strip())
            content = b""
        else:
            payload = part.get_payload(decode=True)
            content = payload if isinstance(payload, bytes) else b""
        content_type = part.get_content_type().lower()
        if not payloads.is_mime_type(content_type):
            content_type = "application/octet-stream"
        found.append(
            MailPart(name=_file_name(part, len(found) + 1), content_type=content_type, content=content, file=file)
        )
        if len(found) >= payloads.MAX_ATTACHMENTS:
            break
    for key, file in spooled.items():  # past the attachment limit: not kept
        if key not in used:
            file.close()
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


# --- Reading a message from a file, large parts straight to temporary files ---------------------

# The marker a spooled part carries in the skeleton: a header name no sender can guess, made anew
# for each process, whose value names the part's temporary file.
_SPOOL_HEADER = f"x-pushmail-spooled-{secrets.token_hex(8)}"
_MAX_DEPTH = 20  # nested multiparts deeper than this are read as one leaf part
_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")
_BOUNDARY = re.compile(rb'boundary\s*=\s*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))', re.IGNORECASE)


class _Splitter:
    """One pass over a message: the skeleton for ``email``, the large parts decoded to files."""

    def __init__(self, file: IO[bytes], *, spool_over: int) -> None:
        self._lines: Iterator[bytes] = iter(file)
        self._pending: bytes | None = None
        self._spool_over = spool_over
        self._out = io.BytesIO()
        self.spooled: dict[str, IO[bytes]] = {}

    def skeleton(self) -> bytes:
        self._entity(boundaries=[], depth=0)
        return self._out.getvalue()

    def _next(self) -> bytes | None:
        if self._pending is not None:
            line, self._pending = self._pending, None
            return line
        return next(self._lines, None)

    def _entity(self, *, boundaries: list[bytes], depth: int) -> bytes | None:
        """Copy (or spool) one entity; return the boundary line that ended it, or None at the end."""
        head: list[bytes] = []
        while True:
            line = self._next()
            if line is None or _closes(line, boundaries):
                self._out.write(b"".join(head))
                return line
            if line in (b"\r\n", b"\n"):
                break
            head.append(line)
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(b"".join(head))
        maintype = headers.get_content_maintype()
        boundary = _boundary_of(b"".join(head)) if maintype == "multipart" else None
        if boundary is not None and depth < _MAX_DEPTH:
            self._out.write(b"".join(head) + b"\r\n")
            return self._multipart(boundaries=[*boundaries, boundary], outer=boundaries, depth=depth)
        encoding = str(headers.get("content-transfer-encoding", "7bit")).strip().lower()
        spoolable = maintype not in ("text", "multipart", "message") and encoding in (
            "base64",
            "quoted-printable",
            "7bit",
            "8bit",
            "binary",
        )
        return self._leaf(head, boundaries=boundaries, spoolable=spoolable, encoding=encoding)

    def _multipart(self, *, boundaries: list[bytes], outer: list[bytes], depth: int) -> bytes | None:
        own = boundaries[-1]
        line = self._copy_until(boundaries)  # the preamble
        while line is not None:
            if _is_boundary(line, own):
                self._out.write(line)
                if _is_close(line, own):
                    # The epilogue, up to the enclosing multipart's next boundary.
                    return self._copy_until(outer)
                line = self._entity(boundaries=boundaries, depth=depth + 1)
            else:
                return line  # an enclosing multipart's boundary: this one ends unclosed
        return None

    def _copy_until(self, boundaries: list[bytes]) -> bytes | None:
        while True:
            line = self._next()
            if line is None or _closes(line, boundaries):
                return line
            self._out.write(line)

    def _leaf(self, head: list[bytes], *, boundaries: list[bytes], spoolable: bool, encoding: str) -> bytes | None:
        body: list[bytes] = []
        size = 0
        while True:
            line = self._next()
            if line is None or _closes(line, boundaries):
                self._out.write(b"".join(head) + b"\r\n" + b"".join(body))
                return line
            body.append(line)
            size += len(line)
            if spoolable and size > self._spool_over:
                return self._spool(head, body, boundaries=boundaries, encoding=encoding)

    def _spool(self, head: list[bytes], body: list[bytes], *, boundaries: list[bytes], encoding: str) -> bytes | None:
        key = str(len(self.spooled) + 1)
        file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by ParsedMail.close()
        self.spooled[key] = file
        decoder = _Decoder(encoding, file)
        for held in body:
            decoder.feed(held)
        body.clear()
        while True:
            line = self._next()
            if line is None or _closes(line, boundaries):
                break
            decoder.feed(line)
        decoder.finish()
        # The part as email sees it: its own headers and the marker, no body. The line end before a
        # boundary belongs to the boundary, so the empty body still ends with one.
        self._out.write(b"".join(head) + f"{_SPOOL_HEADER}: {key}\r\n\r\n".encode())
        return line


class _Decoder:
    """A part's body decoded line by line into a file (RFC 2045: the line end before a boundary is not data)."""

    def __init__(self, encoding: str, out: IO[bytes]) -> None:
        self._encoding = encoding
        self._out = out
        self._rest = b""  # base64 characters not yet a multiple of 4; or the identity encodings' held line end

    def feed(self, line: bytes) -> None:
        if self._encoding == "base64":
            data = self._rest + _B64_JUNK.sub(b"", line.split(b"=", 1)[0])
            whole = len(data) - len(data) % 4
            if whole:
                self._out.write(binascii.a2b_base64(data[:whole]))
            self._rest = data[whole:]
        elif self._encoding == "quoted-printable":
            self._out.write(self._rest)
            text, end = (line[:-2], b"\r\n") if line.endswith(b"\r\n") else (line.rstrip(b"\n"), b"\n")
            # As email decodes a whole body (binascii.a2b_qp): a final "=" is a soft line break.
            self._out.write(binascii.a2b_qp(text))
            self._rest = end if line.endswith(b"\n") and not text.endswith(b"=") else b""
        else:
            self._out.write(self._rest)
            if line.endswith(b"\r\n"):
                self._out.write(line[:-2])
                self._rest = b"\r\n"
            else:
                self._out.write(line)
                self._rest = b""

    def finish(self) -> None:
        if self._encoding == "base64" and self._rest:
            padded = self._rest + b"=" * (-len(self._rest) % 4)
            try:
                self._out.write(binascii.a2b_base64(padded))
            except binascii.Error:
                pass  # one stray character at the end: no byte in it
        self._out.seek(0)


def _boundary_of(head: bytes) -> bytes | None:
    for field_ in re.split(rb"\r?\n(?![ \t])", head):
        if field_.lower().startswith(b"content-type:"):
            found = _BOUNDARY.search(re.sub(rb"\r?\n[ \t]", b" ", field_))
            if found:
                return found.group(1) or found.group(2)
    return None


def _is_boundary(line: bytes, boundary: bytes) -> bool:
    return line.startswith(b"--" + boundary) and line[len(boundary) + 2 :].rstrip() in (b"", b"--")


def _is_close(line: bytes, boundary: bytes) -> bool:
    return line[len(boundary) + 2 :].rstrip() == b"--"


def _closes(line: bytes, boundaries: list[bytes]) -> bool:
    return line.startswith(b"--") and any(_is_boundary(line, boundary) for boundary in boundaries)
