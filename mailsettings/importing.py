"""Import of the user's existing mail from an mbox or .eml file (uploaded in Settings).

The file is read as a stream, a line at a time: an mbox is split at its
``From `` separator lines (mboxo and mboxrd quoting, ``>From `` unquoted once)
into one temporary file per message, with CRLF line ends, and each message is
parsed and stored by the same code as inbound SMTP mail (gateway.mime, then
the mailbox's storage service). The standard library's mbox reader is not
used: this project's ``mailbox`` app shadows that module's name, and the
reader wants a file path rather than an upload stream.

All or nothing: the whole file is stored in one transaction (its blobs with
it), or refused with the message and line at fault. A message already in the
mailbox (the same Message-ID) is skipped, so importing a file twice adds nothing.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import Q

from accounts.models import User
from attachments import services as attachment_services
from attachments.selectors import usage_bytes
from federation import payloads
from gateway import mime
from gateway import services as gateway_services
from mailbox.models import InboxEntry
from pushmail_site.sizes import human_size

MAX_MESSAGES = 20_000
_FROM_LINE = re.compile(rb"^From \S*")
_QUOTED_FROM = re.compile(rb"^>+From ")
_HEADER_LINE = re.compile(rb"^[!-9;-~]+:")  # a header field name (RFC 5322 §2.2), then a colon
_SPOOL = 1024 * 1024


class ImportRefused(ValidationError):
    """The file cannot be imported; the message says why (and which message, where)."""


@dataclass
class ImportResult:
    imported: int = 0
    skipped: int = 0
    subjects: list[str] = field(default_factory=list)


def import_mail(*, user: User, file: IO[bytes], name: str = "", size: int | None = None) -> ImportResult:
    """Import every message of an mbox or .eml ``file`` into the user's Archive; raises ImportRefused."""
    limit = settings.PUSHMAIL_IMPORT_MAX_BYTES
    if size is None:
        size = file.seek(0, 2)
    if size == 0:
        raise ImportRefused("The file is empty (0 bytes): choose an mbox or .eml file with mail in it.")
    if size > limit:
        raise ImportRefused(f"The file is {human_size(size)}; at most {human_size(limit)} can be imported at once.")
    used, quota = usage_bytes(user), user.effective_quota_bytes
    if used + size > quota:
        raise ImportRefused(
            f"Nothing was imported: the file is {human_size(size)}, and your mailbox has "
            f"{human_size(max(0, quota - used))} left of its {human_size(quota)} quota."
        )
    file.seek(0)
    first = file.readline(4096)
    file.seek(0)
    if _FROM_LINE.match(first):
        messages = _split_mbox(file)
    elif _HEADER_LINE.match(first):
        messages = _single(file)
    else:
        raise ImportRefused(
            f"{name or 'The file'} is not an mbox or .eml file: an mbox starts with a “From ” line, "
            "an .eml file with a header such as “From:” or “Received:”."
        )
    result = ImportResult()
    seen: set[str] = set()
    with attachment_services.storing_atomically():
        for number, (line, message) in enumerate(messages, start=1):
            with message:
                if number > MAX_MESSAGES:
                    raise ImportRefused(
                        f"The file holds more than {MAX_MESSAGES} messages; split it and import the parts."
                    )
                where = f"message {number} (line {line})" if line else "the message"
                _import_one(user, message, where=where, seen=seen, result=result)
    return result


def _import_one(user: User, message: IO[bytes], *, where: str, seen: set[str], result: ImportResult) -> None:
    if message.seek(0, 2) == 0 or not _HEADER_LINE.match(_first_line(message)):
        raise ImportRefused(f"Nothing was imported: {where} has no header; is this really an mbox file?")
    parsed = mime.parse_file(message)
    message_id = parsed.message_id
    parsed.close()
    if message_id and (message_id in seen or _already_here(user, message_id)):
        result.skipped += 1
        return
    try:
        subject = gateway_services.import_message(user=user, file=message)
    except (payloads.PayloadError, ValidationError) as exc:
        problem = "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
        raise ImportRefused(f"Nothing was imported: {where} cannot be read ({problem}).") from None
    if message_id:
        seen.add(message_id)
    result.imported += 1
    if len(result.subjects) < 5:
        result.subjects.append(subject)


def _already_here(user: User, message_id: str) -> bool:
    return (
        InboxEntry.objects.owned_by(user)
        .filter(Q(remote__message_id=message_id) | Q(local__message_id=message_id))
        .exists()
    )


def _first_line(message: IO[bytes]) -> bytes:
    message.seek(0)
    line = message.readline(4096)
    message.seek(0)
    return line


def _spool() -> IO[bytes]:
    return tempfile.SpooledTemporaryFile(max_size=_SPOOL)  # noqa: SIM115 - closed by the caller


def _crlf(line: bytes) -> bytes:
    return line.rstrip(b"\r\n") + b"\r\n"


def _single(file: IO[bytes]) -> Iterator[tuple[int, IO[bytes]]]:
    out = _spool()
    for line in file:
        out.write(_crlf(line))
    yield 0, out


def _split_mbox(file: IO[bytes]) -> Iterator[tuple[int, IO[bytes]]]:
    """Each message of an mbox, as a file with CRLF line ends, with the line its ``From `` separator is on."""
    out: IO[bytes] | None = None
    start = 0
    blank_before = True
    pending_blank = False
    for number, line in enumerate(file, start=1):
        bare = line.rstrip(b"\r\n")
        if blank_before and _FROM_LINE.match(bare):
            if out is not None:
                yield start, out
            out, start, pending_blank = _spool(), number, False
            blank_before = False
            continue
        if out is None:
            continue
        # The blank line before a separator belongs to the mbox, not the message: held back one line.
        if pending_blank:
            out.write(b"\r\n")
        pending_blank = bare == b""
        blank_before = pending_blank
        if not pending_blank:
            out.write((bare[1:] if _QUOTED_FROM.match(bare) else bare) + b"\r\n")
    if out is not None:
        yield start, out
