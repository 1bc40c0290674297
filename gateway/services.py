"""Mail received by SMTP: which recipients are taken, and the message checked, stored and answered.

The SMTP server (gateway.server) asks these synchronous functions, in a worker
thread, for the answer to each RCPT TO and DATA. :func:`receive_message`
answers 250 only once the message's rows are committed: the row is the truth,
so a crash before the answer loses nothing that was acknowledged (the sending
server retries what it was not told was taken).

The spam checks of the reputation app apply through the mailbox: the message
becomes a ``RemoteMessage`` (transport "smtp") like one notified by another
instance, so what judges new mail judges this too; its row carries the
Authentication-Results for those checks to read.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import io
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import IO, Any
from urllib.parse import urlparse

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connections
from django.db.models.sql.compiler import SQLCompiler
from django.utils import timezone

from accounts.models import Domain, User
from accounts.validators import clean_display_name, domain_of, normalize_address
from attachments import selectors as attachment_selectors
from attachments import services as attachment_services
from attachments.models import Blob
from federation import discovery, payloads
from mailbox import services as mailbox_services
from pushmail_site.hooks import Hook

from . import auth, mime, progressive, spool
from .models import SpooledMessage

__all__ = [
    "Envelope",
    "Reply",
    "file_spooled",
    "forget_usage",
    "hostname",
    "import_message",
    "line_end_problem",
    "receive_message",
    "recipient_reply",
]

MAX_RECIPIENTS = 100


@dataclass(frozen=True)
class Reply:
    """An SMTP answer: a code and its text (with the enhanced status code first)."""

    code: int
    text: str
    #: For a recipient taken at RCPT TO: the bytes its mailbox holds, for DATA's quota check.
    used_bytes: int | None = field(default=None, compare=False)
    #: For a recipient taken at RCPT TO: its mailbox, so that DATA need not look it up again.
    user: User | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.code} {self.text}"

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300


@dataclass(frozen=True)
class Envelope:
    """What the client said before DATA, as the server checked it."""

    client_ip: str
    helo: str
    mail_from: str  # "" for the null sender <>
    recipients: list[str]
    tls: bool = False
    #: Each recipient's quota usage as measured at RCPT TO (from :attr:`Reply.used_bytes`).
    used_bytes: dict[str, int] = field(default_factory=dict)
    #: Each recipient's mailbox as found at RCPT TO (from :attr:`Reply.user`).
    users: dict[str, User] = field(default_factory=dict)


#: ``is_list_unsubscribe_address(address)``: whether ``address`` is where a list hosted here takes
#: unsubscribes by mail, the mailto of its issues' List-Unsubscribe (the newsletters app answers).
is_list_unsubscribe_address: Hook[[str], bool] = Hook("gateway.is_list_unsubscribe_address")
#: ``unsubscribe_by_mail(address=..., subject=...)``: act on a mail to such an address, whose subject
#: names the subscriber's token; True when it did.
unsubscribe_by_mail: Hook[..., bool] = Hook("gateway.unsubscribe_by_mail")

# How much of the message's start is searched for its own header fields (the header block).
_HEADER_SCAN_BYTES = 256 * 1024


def hostname() -> str:
    """The name this gateway greets with and writes in its trace headers."""
    configured = settings.PUSHMAIL_SMTP_HOSTNAME or urlparse(settings.PUSHMAIL_BASE_URL or "").hostname
    return configured or socket.getfqdn()


# --- RCPT TO ------------------------------------------------------------------------------------


class _Usage:
    """Each mailbox's quota usage as this process last measured it, plus what it spooled for it since.

    Measuring costs a query with a subquery per kind of stored mail (the most expensive step of a
    message's dialogue), and the figure was only ever taken moments before the message anyway: it
    is measured again after ``PUSHMAIL_SMTP_USAGE_SECONDS``, and each message this process spools
    is added meanwhile. What other processes take, or a user deletes, shows at the next measure.
    """

    _LIMIT = 10_000  # mailboxes remembered at most: then all are forgotten and measured afresh

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[int, tuple[float, int]] = {}

    def used(self, user: User) -> int:
        now = time.monotonic()
        with self._lock:
            found = self._seen.get(user.pk)
        if found is not None and now - found[0] < settings.PUSHMAIL_SMTP_USAGE_SECONDS:
            return found[1]
        used = attachment_selectors.usage_bytes(user)
        with self._lock:
            if len(self._seen) >= self._LIMIT:
                self._seen.clear()
            self._seen[user.pk] = (now, used)
        return used

    def add(self, user_ids: list[int], size: int) -> None:
        with self._lock:
            for pk in user_ids:
                if pk in self._seen:
                    measured, used = self._seen[pk]
                    self._seen[pk] = (measured, used + size)

    def forget(self) -> None:
        with self._lock:
            self._seen.clear()


_usage = _Usage()


def forget_usage() -> None:
    """Measure every mailbox's usage afresh at its next RCPT TO."""
    _usage.forget()


class _MailboxLookup:
    """The active mailbox of an address with its domain: the ORM's query, compiled once per thread.

    The dearest step of ``RCPT TO`` was Django building this same SQL afresh for every recipient
    (about 3 ms of CPU, against 0.7 to run it): it is built once per worker thread (and database
    connection), run with each address, and its row converted and made into the same model
    instances the ORM would make.
    """

    _PROBE = "probe@compiling.invalid"

    def __init__(self) -> None:
        self._local = threading.local()

    def _compiled(self, connection: Any) -> tuple[str, list[Any], int, SQLCompiler, Any]:
        found = getattr(self._local, "compiled", None)
        if found is not None and found[0] is connection:
            return found[1]
        query = User.objects.filter(email=self._PROBE, is_active=True).select_related("domain").query
        compiler = query.get_compiler(connection=connection)
        sql, params = compiler.as_sql()
        converters = compiler.get_converters([column for column, _, _ in compiler.select])
        position = list(params).index(self._PROBE)
        # The user's columns, then its domain's, in the order the model instances are made from.
        [domain] = compiler.klass_info["related_klass_infos"]
        assert compiler.klass_info["select_fields"] == list(range(len(_USER_FIELDS)))
        assert domain["select_fields"] == list(range(len(_USER_FIELDS), len(_USER_FIELDS) + len(_DOMAIN_FIELDS)))
        compiled = (sql, list(params), position, compiler, converters)
        self._local.compiled = (connection, compiled)
        return compiled

    def find(self, address: str) -> User | None:
        connection = connections[User.objects.db]
        sql, params, position, compiler, converters = self._compiled(connection)
        params = [*params[:position], address, *params[position + 1 :]]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchmany(1)
        if not rows:
            return None
        [row] = list(compiler.apply_converters(rows, converters)) if converters else rows
        split = len(_USER_FIELDS)
        user = User.from_db(connection.alias, _USER_FIELDS, row[:split])
        user.domain = Domain.from_db(connection.alias, _DOMAIN_FIELDS, row[split:])
        return user


_USER_FIELDS = [f.attname for f in User._meta.concrete_fields]
_DOMAIN_FIELDS = [f.attname for f in Domain._meta.concrete_fields]


_mailbox_lookup = _MailboxLookup()


def _active_mailbox(normalized: str) -> User | None:
    """The active mailbox whose address is ``normalized``, its domain with it, or None."""
    return _mailbox_lookup.find(normalized)


def recipient_reply(address: str, *, accepted: int = 0) -> Reply:
    """The answer to ``RCPT TO:<address>``: 250, or why this server does not take mail for it."""
    try:
        normalized = normalize_address(address)
    except ValidationError:
        return Reply(501, f"5.1.3 Bad recipient address syntax: {auth.safe_token(address)}")
    if accepted >= MAX_RECIPIENTS:
        return Reply(452, f"4.5.3 Too many recipients: at most {MAX_RECIPIENTS} a message")
    domain = domain_of(normalized)
    if domain not in discovery.local_domain_names():
        return Reply(550, f"5.1.1 <{normalized}>: this server does not take mail for {domain}")
    user = _active_mailbox(normalized)
    if user is None:
        if _is_unsubscribe_address(normalized):
            return Reply(250, f"2.1.5 <{normalized}> OK")
        return Reply(550, f"5.1.1 <{normalized}>: no such mailbox here")
    used = _usage.used(user)
    if used > user.effective_quota_bytes:
        return Reply(452, f"4.2.2 <{normalized}>: mailbox full, try again later")
    return Reply(250, f"2.1.5 <{normalized}> OK", used_bytes=used, user=user)


# --- DATA ---------------------------------------------------------------------------------------

# A CR not before LF, or an LF not after CR: what SMTP smuggling hides a second message behind.
_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_CHUNK = 1024 * 1024


def line_end_problem(raw: bytes | IO[bytes]) -> Reply | None:
    """A refusal for a message with a bare CR or LF (RFC 5321 §2.3.8), else None.

    Servers disagree on whether ``\\n.\\n`` or ``\\n.\\r\\n`` ends a message, so
    a message holding one could be read as two by the next server (SMTP
    smuggling). It is refused whole; nothing of it is stored. ``raw`` may be a
    file, read from its start a megabyte at a time.
    """
    file = io.BytesIO(raw) if isinstance(raw, bytes) else raw
    file.seek(0)
    offset, carry = 0, b""  # the last byte of the previous chunk, so a CRLF split between two is whole
    while chunk := file.read(_CHUNK):
        # The carried byte is looked behind, and looked at only if it is a CR not yet judged.
        found = _BARE.search(carry + chunk, 0 if carry == b"\r" else len(carry))
        # A CR at the very end may be followed by LF in the next chunk: judged with that chunk.
        if found is not None and not (found.group() == b"\r" and found.end() == len(carry) + len(chunk)):
            what = "CR (carriage return)" if found.group() == b"\r" else "LF (line feed)"
            at = offset - len(carry) + found.start()
            return Reply(550, f"5.6.0 Message refused: it contains a bare {what} at byte {at}; lines must end in CRLF")
        offset += len(chunk)
        carry = chunk[-1:]
    if carry == b"\r":
        return Reply(
            550,
            f"5.6.0 Message refused: it contains a bare CR (carriage return) at byte {offset - 1}; "
            "lines must end in CRLF",
        )
    return None


def receive_message(*, envelope: Envelope, raw: bytes | IO[bytes], group: spool.GroupCommit | None = None) -> Reply:
    """Check and spool one message (CRLF line ends, dot-unstuffed: bytes, or a binary file); the answer.

    Refused without keeping anything: a bare CR or LF (550), a DMARC failure
    where the From domain's policy is reject (550), a recipient whose mailbox it
    would overfill (552), DNS that does not answer for DMARC (451). Otherwise the
    message, with the trace headers added, is committed to the spool
    (:class:`~gateway.models.SpooledMessage`) before the ``250``, and filed into
    the mailboxes by the filing loop (gateway.filing): a DMARC failure under a
    quarantine policy goes to Spam there, its reason shown. Only the header
    block is parsed here; the message is read from the file a megabyte at a
    time, never held whole in memory (but for DKIM verification of a signed message).
    With ``group`` the spool row is committed with those of other sessions
    (gateway.spool.GroupCommit); a failure of that commit raises here.
    """
    file = io.BytesIO(raw) if isinstance(raw, bytes) else raw
    problem = line_end_problem(file)
    if problem is not None:
        return problem
    size = file.seek(0, io.SEEK_END)
    users = _recipients(envelope)
    head = _header_block(file)
    unsubscribes = [a for a in envelope.recipients if a not in envelope.users and _is_unsubscribe_address(a)]
    if unsubscribes:
        # A list's unsubscribe by mail (RFC 2369): done at once; the token in the subject is the proof.
        subject = str(email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(head)["Subject"] or "")
        for address in unsubscribes:
            unsubscribe_by_mail(address=address, subject=subject)
        if not users:
            return Reply(250, "2.0.0 OK: unsubscribe requests handled")
    if not users:
        return Reply(554, "5.5.1 No valid recipients")
    sender = mime.sender_of(head)
    results = auth.authenticate(
        raw=file,
        client_ip=envelope.client_ip,
        mail_from=envelope.mail_from,
        helo=envelope.helo,
        from_domain=domain_of(sender) if sender else "",
    )
    dmarc = results.dmarc
    if dmarc.result == "temperror":
        return Reply(451, f"4.4.3 DNS lookup for the DMARC policy of {dmarc.domain} failed; try again later")
    spam_reason = ""
    if dmarc.result == "fail" and dmarc.policy == "reject":
        return Reply(
            550,
            f"5.7.1 Message refused: it fails the DMARC check of {dmarc.domain}, whose policy is reject "
            f"(SPF {results.spf}, DKIM {_dkim_summary(results)}, neither aligned with the From domain)",
        )
    if dmarc.result == "fail" and dmarc.policy == "quarantine":
        spam_reason = (
            f"it failed the DMARC check of {dmarc.domain}, whose policy is quarantine "
            f"(SPF {results.spf}, DKIM {_dkim_summary(results)}): the sender may be forged"
        )
    for user in users:
        used = envelope.used_bytes.get(user.email)
        # The usage measured at RCPT TO, moments ago, saves measuring it again (several queries).
        if used is None:
            used = attachment_selectors.usage_bytes(user)
        if used + size > user.effective_quota_bytes:
            return Reply(552, f"5.2.2 <{user.email}>: mailbox full, this message does not fit")
    authserv_id = hostname()
    header = results.header_value(authserv_id)
    trace = _trace_headers(envelope, header, authserv_id)
    spooled = spool.spool(
        file=io.BufferedReader(_Chain(trace, *_without_forged_results(file, authserv_id))),
        fields={
            "client_ip": envelope.client_ip,
            "helo": envelope.helo[:255],
            "mail_from": envelope.mail_from,
            "recipient_ids": [user.pk for user in users],
            "authentication_results": header.replace("\r\n\t", " "),
            "spam_reason": spam_reason[:300],
        },
        group=group,
    )
    _usage.add([user.pk for user in users], size)
    # The sender runs Pushmail, says its header: replies go over the federation API once discovery agrees.
    file.seek(0)
    progressive.learn_from_header(
        raw=file.read(_HEADER_SCAN_BYTES), results=results, sender=sender or _fallback_sender(envelope)
    )
    return Reply(250, f"2.0.0 OK: queued as {spooled}")


def _is_unsubscribe_address(address: str) -> bool:
    return is_list_unsubscribe_address.answered and is_list_unsubscribe_address(address)


def _recipients(envelope: Envelope) -> list[User]:
    """The active mailboxes of the envelope's recipients: as found at RCPT TO, moments ago, else looked up."""
    missing = [address for address in envelope.recipients if address not in envelope.users]
    found = {address: envelope.users[address] for address in envelope.recipients if address in envelope.users}
    if missing:
        for user in User.objects.filter(email__in=missing, is_active=True).select_related("domain"):
            found[user.email] = user
    return list(found.values())


def _header_block(file: IO[bytes]) -> bytes:
    """The message's header block (up to the empty line, at most a megabyte)."""
    file.seek(0)
    head = b""
    while len(head) < _MAX_HEAD and (line := file.readline(_MAX_HEAD)):
        head += line
        if line == b"\r\n":
            break
    return head


def file_spooled(*, row: SpooledMessage, file: IO[bytes], users: list[User]) -> mailbox_services.SmtpFiling:
    """A spooled message made ready to file for ``users``: parsed, its attachments stored once, the raw
    message written to storage (its Blob row not yet saved: the filing loop inserts a batch's at once,
    ``attachment_services.save_written``).

    Raises PayloadError when it cannot be read as mail (nothing of it is kept).
    """
    parsed = mime.parse_file(file)
    try:
        # Its trace header (the time, the client) makes the raw message new bytes every time.
        raw = attachment_services.written_upload(file=_rewound(file), max_bytes=row.size + 1)
        try:
            envelope = Envelope(client_ip=row.client_ip, helo=row.helo, mail_from=row.mail_from, recipients=[])
            delivery = _delivery(
                envelope, parsed, raw, _stored_attachments(parsed), row.authentication_results, row.spam_reason
            )
            return mailbox_services.smtp_filing(delivery=delivery, users=users)
        except BaseException:
            attachment_services.discard_written(raw)
            raise
    finally:
        parsed.close()


# --- Import of the user's own mail (an mbox or .eml file, from Settings) --------------------------


def import_message(*, user: User, file: IO[bytes]) -> str:
    """Store one message of the user's own (a binary file, CRLF line ends) as mail received here.

    Parsed and stored as inbound SMTP mail is (the same parser, blobs and
    mailbox service), filed read in the Archive, without spam checks nor
    filters: the user is bringing their own mail. Call inside
    ``attachment_services.storing_atomically()``. Returns the stored message's
    subject; raises PayloadError or ValidationError (a size limit) when it cannot be stored.
    """
    parsed = mime.parse_file(file)
    try:
        if not parsed.sender:
            raise payloads.PayloadError("from", "the message has no From address")
        stored = attachment_services.store_upload(file=_rewound(file), max_bytes=settings.PUSHMAIL_SMTP_MAX_BYTES)
        attachments = _stored_attachments(parsed)
        envelope = Envelope(client_ip="", helo="", mail_from=parsed.sender, recipients=[user.email])
        delivery = _delivery(envelope, parsed, stored, attachments, "", "")
        mailbox_services.accept_smtp_message(delivery=delivery, users=[user], imported=True)
        return parsed.subject
    finally:
        parsed.close()


def _rewound(file: IO[bytes]) -> IO[bytes]:
    file.seek(0)
    return file


def _stored_attachments(parsed: mime.ParsedMail) -> list[mailbox_services.SmtpAttachment]:
    """Each attachment of a parsed message in the content-addressed store (once, however often sent)."""
    return [
        mailbox_services.SmtpAttachment(
            name=part.name,
            content_type=part.content_type,
            blob=attachment_services.store_upload(file=part.open(), max_bytes=settings.PUSHMAIL_SMTP_MAX_BYTES),
        )
        for part in parsed.attachments
    ]


def _dkim_summary(results: auth.AuthResults) -> str:
    return ", ".join(d.result for d in results.dkim)


def _delivery(
    envelope: Envelope,
    parsed: mime.ParsedMail,
    raw: Blob,
    attachments: list[mailbox_services.SmtpAttachment],
    header: str,
    spam_reason: str,
) -> mailbox_services.SmtpDelivery:
    sender = parsed.sender or _fallback_sender(envelope)
    return mailbox_services.SmtpDelivery(
        origin_domain=domain_of(sender),
        message_id=parsed.message_id or f"<{email.utils.make_msgid(domain=hostname())[1:-1]}>",
        sender=sender,
        to=parsed.to,
        cc=parsed.cc,
        subject=parsed.subject,
        date=_sane_date(parsed.date),
        text=parsed.text,
        html=parsed.html,
        in_reply_to=parsed.in_reply_to,
        references=parsed.references,
        raw=raw,
        authentication_results=header.replace("\r\n\t", " "),
        attachments=attachments,
        spam_reason=spam_reason,
        # The From's name only with the From's address: never beside a fallback sender.
        sender_name=clean_display_name(parsed.sender_name) if parsed.sender else "",
        list_id=parsed.list_id,
        automated=parsed.automated,
    )


def _fallback_sender(envelope: Envelope) -> str:
    """No usable From: the envelope sender, else the sending server's postmaster."""
    for candidate in (envelope.mail_from, f"mailer-daemon@{envelope.helo}", f"mailer-daemon@{hostname()}"):
        try:
            return normalize_address(candidate)
        except ValidationError:
            continue
    return "mailer-daemon@invalid.invalid"


def _sane_date(date: datetime | None) -> datetime:
    """The Date header, unless it is missing or absurd (before 1970, or more than a day ahead)."""
    now = timezone.now()
    if date is None or date.year < 1970 or date > now + timedelta(days=1):
        return now
    return date


def _trace_headers(envelope: Envelope, results: str, authserv_id: str) -> bytes:
    helo = auth.safe_token(envelope.helo) or "unknown"
    protocol = "ESMTPS" if envelope.tls else "ESMTP"
    recipient = f"\r\n\tfor <{envelope.recipients[0]}>" if len(envelope.recipients) == 1 else ""
    stamp = email.utils.format_datetime(timezone.now())
    received = (
        f"from {helo} ({envelope.client_ip})\r\n\tby {authserv_id} (Pushmail) with {protocol}{recipient}; {stamp}"
    )
    return f"Authentication-Results: {results}\r\nReceived: {received}\r\n".encode("ascii", "replace")


def _without_forged_results(file: IO[bytes], authserv_id: str) -> tuple[bytes, IO[bytes]]:
    """The message's header without Authentication-Results fields that claim to be ours (RFC 8601 §5),
    and the file positioned after that header: only the header is read into memory."""
    file.seek(0)
    head = b""
    while len(head) < _MAX_HEAD and (line := file.readline(_MAX_HEAD)):
        head += line
        if line == b"\r\n":
            break
    if b"authentication-results" not in head.lower():
        return head, file
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    ours = authserv_id.lower().encode()
    kept = [
        field
        for field in fields
        if not (
            field.lower().startswith(b"authentication-results:")
            and field.split(b":", 1)[1].split(b";", 1)[0].strip().lower() == ours
        )
    ]
    return b"\r\n".join(kept), file


# A header larger than this is read on as body: no mail program writes one, and it bounds memory.
_MAX_HEAD = 1024 * 1024


class _Chain(io.RawIOBase):
    """The trace headers, the message's header, then the rest of its file, read as one file."""

    def __init__(self, *parts: bytes | IO[bytes]) -> None:
        self._parts = list(parts)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while self._parts:
            part = self._parts[0]
            if isinstance(part, bytes):
                count = min(len(buffer), len(part))
                buffer[:count] = part[:count]
                self._parts[0] = part[count:]
            else:
                count = part.readinto(buffer)  # type: ignore[attr-defined]
            if count:
                return count
            self._parts.pop(0)
        return 0
