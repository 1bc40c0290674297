"""A message as an RFC 5322 ``.eml`` file, for download and use in other mail programs."""

from __future__ import annotations

import binascii
import dataclasses
import email.contentmanager
import email.policy
import email.quoprimime
import email.utils
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage

from django.core.exceptions import SuspiciousFileOperation
from django.utils.text import get_valid_filename

__all__ = ["EmlAttachment", "EmlSource", "build_eml", "eml_filename", "eml_head"]


@dataclass(frozen=True)
class EmlAttachment:
    name: str
    content_type: str
    size: int
    #: The bytes when this instance holds them; None while they are still at the sender's.
    content: bytes | None = None


@dataclass
class EmlSource:
    sender: str
    to: list[str]
    cc: list[str]
    subject: str
    date: datetime | None
    message_id: str
    in_reply_to: str
    references: list[str]
    text: str
    html: str | None
    attachments: list[EmlAttachment] = field(default_factory=list)
    #: The sender's display name, "" for none: the From becomes ``Name <address>``.
    sender_name: str = ""


# RFC 5322 §3.6.4 msg-id: "<" dot-atom-text "@" (dot-atom-text / no-fold-literal) ">", in ASCII.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_MSG_ID = re.compile(rf"<{_ATOM}(?:\.{_ATOM})*@(?:{_ATOM}(?:\.{_ATOM})*|\[[\x21-\x5a\x5e-\x7e]*\])>")


def _msg_id(value: str) -> str:
    """``value`` when it is a msg-id a mail program reads, else "": a peer may send any id without
    control characters (``<`` alone, non-ASCII), which the Message-ID header cannot carry."""
    value = value.strip()
    return value if _MSG_ID.fullmatch(value) else ""


def _one_line(value: str) -> str:
    # Header values never carry line breaks (a header-injection attempt is flattened).
    return " ".join(str(value).split())


def _from(source: EmlSource) -> str | Address:
    """The From header: with the display name as an RFC 5322 phrase (quoted, or RFC 2047
    encoded-words when it is not ASCII, which the policy does on output), else the address."""
    name = _one_line(source.sender_name)
    if name:
        try:
            return Address(display_name=name, addr_spec=_one_line(source.sender))
        except (ValueError, IndexError, HeaderParseError):  # an address the header cannot carry
            pass
    return _one_line(source.sender)


def _headers(source: EmlSource) -> list[tuple[str, str | Address]]:
    """The top-level headers before the MIME ones, in order, as values to set."""
    headers: list[tuple[str, str | Address]] = [("From", _from(source))]
    if source.to:
        headers.append(("To", ", ".join(_one_line(a) for a in source.to)))
    if source.cc:
        headers.append(("Cc", ", ".join(_one_line(a) for a in source.cc)))
    headers.append(("Subject", _one_line(source.subject)))
    if source.date is not None:
        headers.append(("Date", email.utils.format_datetime(source.date)))
    if message_id := _msg_id(source.message_id):
        headers.append(("Message-ID", message_id))
    if source.in_reply_to:
        headers.append(("In-Reply-To", _one_line(source.in_reply_to)))
    if source.references:
        headers.append(("References", " ".join(_one_line(r) for r in source.references)))
    headers.append(("MIME-Version", "1.0"))
    return headers


def _text_with_note(source: EmlSource) -> str:
    text = source.text or ""
    missing = [a for a in source.attachments if a.content is None]
    if missing:
        lines = [f"- {a.name} ({a.content_type}, {a.size} bytes)" for a in missing]
        text += (
            "\n\n-- \nAttachments still at the sender's server (open the message in Pushmail to fetch them):\n"
            + "\n".join(lines)
            + "\n"
        )
    return text


# What the direct path below writes exactly as the email package would: bare addresses, and
# header values of printable ASCII that need no folding, encoding or quoting.
_ADDRESS_ATOM = r"[A-Za-z0-9_+-]+"
_BARE_ADDRESS = re.compile(rf"{_ADDRESS_ATOM}(?:\.{_ADDRESS_ATOM})*@{_ADDRESS_ATOM}(?:\.{_ADDRESS_ATOM})*")
_PLAIN_VALUE = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")
_MAX_LINE = 78  # the email package's SMTP policy folds past this
_POLICY = email.policy.SMTP.clone(cte_type="7bit")  # 7-bit transfer encodings: portable to any program
_LINE_END = re.compile(r"\r\n|\r|\n")


def _plain_eml(source: EmlSource) -> bytes | None:
    """The bytes of :func:`build_eml` for a text-only message whose headers need no folding,
    encoding or quoting (most mail), written without building an ``EmailMessage``: the email
    package's header objects take milliseconds a message, which a mail program downloading a
    whole maildrop feels. None for any other message. tests/unit/test_eml_plain.py holds the two
    ways to the same bytes.
    """
    head = _plain_head(source)
    if head is None:
        return None
    # The body as the email package encodes it (7bit, quoted-printable or base64: its own choice),
    # with its line ends written as the generator writes them.
    cte, payload = email.contentmanager._encode_text(  # type: ignore[attr-defined]  # no public equivalent
        _text_with_note(source), "utf-8", None, _POLICY
    )
    return (head(cte) + "\r\n".join(_LINE_END.split(payload))).encode("ascii")


def _plain_head(source: EmlSource) -> Callable[[str], str] | None:
    """For a message :func:`_plain_eml` writes: its header block given the body's transfer encoding."""
    if source.html or any(a.content is not None for a in source.attachments):
        return None
    headers = _headers(source)
    for name, value in headers:
        if not isinstance(value, str):  # a display name: the email package quotes and encodes it
            return None
        if len(name) + 2 + len(value) > _MAX_LINE or "=?" in value:
            return None
        if name in ("From", "To", "Cc"):
            if not all(_BARE_ADDRESS.fullmatch(a) for a in value.split(", ")):
                return None
        elif value and not _PLAIN_VALUE.fullmatch(value):
            return None
    fields = "".join(f"{name}: {value}\r\n" if value else f"{name}:\r\n" for name, value in headers)
    return lambda cte: fields + f'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: {cte}\r\n\r\n'


def eml_head(source: EmlSource) -> bytes:
    """The header block of :func:`build_eml` (its bytes up to and with the blank line), without
    encoding the body when the message is plain text: what a mail program listing a mailbox reads."""
    head = _plain_head(source)
    if head is None:
        eml = build_eml(source)
        return eml[: eml.index(b"\r\n\r\n") + 4]
    return head(_transfer_encoding(_text_with_note(source))).encode("ascii")


def _transfer_encoding(text: str) -> str:
    """The transfer encoding the email package gives this text (``contentmanager._encode_text``), decided
    as it decides it: 7bit when it can, else whichever of quoted-printable and base64 encodes the first
    ten lines shorter; without encoding the rest."""
    lines = text.encode("utf-8").splitlines()
    limit = _POLICY.max_line_length or _MAX_LINE  # 78 in this policy
    if text.isascii() and max((len(line) for line in lines), default=0) <= limit:
        return "7bit"
    sniff = b"\r\n".join(lines[:10]) + b"\r\n"
    quoted = email.quoprimime.body_encode(sniff.decode("latin-1"), limit)
    return "base64" if len(quoted) > len(binascii.b2a_base64(sniff)) else "quoted-printable"


def build_eml(source: EmlSource) -> bytes:
    """The message as bytes: text/plain with an HTML alternative and the attachments held here.

    Attachments still at the sender's are listed in a note at the end of the text.
    """
    plain = _plain_eml(source)
    return plain if plain is not None else _email_package_eml(source)


def _email_package_eml(source: EmlSource) -> bytes:
    try:
        return _email_package_message(source)
    except TypeError:
        # The email package's header parser fails on a few unusual headers; should a display name
        # be the cause, the download carries the address alone rather than fail.
        if not source.sender_name:
            raise
        return _email_package_message(dataclasses.replace(source, sender_name=""))


def _email_package_message(source: EmlSource) -> bytes:
    msg = EmailMessage(policy=_POLICY)
    for name, value in _headers(source):
        msg[name] = value
    text = _text_with_note(source)
    msg.set_content(text, subtype="plain", charset="utf-8")
    if source.html:
        msg.add_alternative(source.html, subtype="html", charset="utf-8")
    for attachment in source.attachments:
        if attachment.content is None:
            continue
        maintype, _, subtype = attachment.content_type.partition("/")
        if not maintype or not subtype or maintype == "text":
            maintype, subtype = "application", "octet-stream"  # bytes as they are, no charset guessing
        msg.add_attachment(attachment.content, maintype=maintype, subtype=subtype, filename=attachment.name)
    return msg.as_bytes()


def eml_filename(subject: str) -> str:
    """``<subject>.eml`` with only characters that are safe in a file name."""
    try:
        stem = get_valid_filename(_one_line(subject)[:80])
    except SuspiciousFileOperation:  # nothing usable left, e.g. only punctuation
        stem = ""
    stem = re.sub(r"_{2,}", "_", stem).strip("._")
    return f"{stem or 'message'}.eml"
