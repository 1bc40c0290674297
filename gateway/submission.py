"""Submission: a mail program signs in with an app password and sends, exactly as the webmail would.

The submission server (gateway.submission_server, ``manage.py submission``)
asks these synchronous functions, in a worker thread, for the answer to AUTH,
MAIL FROM, RCPT TO and DATA. A submitted message is parsed with ``email``
(``policy.default``, gateway.mime), its attachments are stored once through
the same content-addressed store and limits as webmail uploads, and it is sent
with the outbox's :func:`~outbox.services.send_message`: pull-on-read to
Pushmail domains, whatever the outbox does for the others, a copy in Sent.

What a mail program is told, and why:

- AUTH: 235, or 535 5.7.8 for an unknown address and a wrong password alike;
  454 4.7.0 once a client address or an account has had too many failures in
  the window (the password is then not checked at all).
- MAIL FROM other than the signed-in address: 553 5.7.1. The From header must
  name that address too (553 5.7.1 otherwise): a mail program sends as you.
- Recipients are the envelope's RCPT TO: To and Cc headers name who is shown,
  an envelope recipient in neither is a Bcc, and the Bcc header itself is
  never passed on (the message is rebuilt from its parts, not relayed whole).
- Malformed MIME: 554 5.6.0 naming the problem; attachment limits 552 5.3.4; a
  blocked file type 554 5.7.0; a full mailbox 552 5.2.2; sending paused 550
  5.7.1. Nothing is stored then.
"""

from __future__ import annotations

import email
import email.errors
import email.policy
import logging
from dataclasses import dataclass
from email.message import EmailMessage

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile

from accounts.mail_logins import check_mail_login
from accounts.models import User
from accounts.validators import normalize_address
from attachments.services import AttachmentInput, check_new_files, store_upload, storing_atomically
from outbox import services as outbox_services

from . import mime
from .server import listen_address
from .services import Reply, hostname

__all__ = [
    "Login",
    "MailProgramSettings",
    "check_login",
    "mail_program_settings",
    "mime_problem",
    "recipient_reply",
    "sender_reply",
    "split_recipients",
    "submit_message",
]

log = logging.getLogger(__name__)

INVALID_LOGIN = Reply(535, "5.7.8 Authentication credentials invalid")

# Structural faults after which the parts a mail program meant cannot be told apart, or their bytes read.
_BROKEN_MIME: dict[type[email.errors.MessageDefect], str] = {
    email.errors.NoBoundaryInMultipartDefect: "a multipart part has no boundary parameter",
    email.errors.StartBoundaryNotFoundDefect: "a multipart part's boundary never appears in its body",
    email.errors.CloseBoundaryNotFoundDefect: "a multipart part is not closed by its final boundary (truncated?)",
    email.errors.MultipartInvariantViolationDefect: "a part says it is multipart but has no parts",
    email.errors.InvalidMultipartContentTransferEncodingDefect: "a multipart part has a transfer encoding",
    email.errors.MissingHeaderBodySeparatorDefect: "a header line is not a header (no blank line before the body?)",
    email.errors.InvalidBase64CharactersDefect: "a base64 part holds characters that are not base64",
    email.errors.InvalidBase64LengthDefect: "a base64 part is cut short",
}


@dataclass(frozen=True)
class Login:
    """Who signed in: the mailbox's id and address."""

    user_id: int
    address: str


@dataclass(frozen=True)
class MailProgramSettings:
    """What a user types into a mail program's outgoing server settings."""

    host: str
    starttls_port: int
    tls_port: int | None
    encrypted: bool  # False: no certificate is set, so only a program on this machine can sign in


def mail_program_settings() -> MailProgramSettings:
    """The submission server as a mail program reaches it: this instance's mail host and listening ports."""
    _host, starttls_port = listen_address(settings.PUSHMAIL_SUBMISSION_LISTEN, setting="PUSHMAIL_SUBMISSION_LISTEN")
    implicit = settings.PUSHMAIL_SUBMISSION_TLS_LISTEN
    tls_port = listen_address(implicit, setting="PUSHMAIL_SUBMISSION_TLS_LISTEN")[1] if implicit else None
    encrypted = bool(settings.PUSHMAIL_SUBMISSION_TLS_CERT and settings.PUSHMAIL_SUBMISSION_TLS_KEY)
    return MailProgramSettings(host=hostname(), starttls_port=starttls_port, tls_port=tls_port, encrypted=encrypted)


# --- AUTH ---------------------------------------------------------------------------------------


def check_login(*, login: str, password: str, client_ip: str) -> tuple[Login | None, Reply]:
    """The answer to AUTH with ``login`` (an address) and ``password`` (one of its app passwords).

    Failures count per client address and per account name in the shared cache,
    together with POP3's (accounts.mail_logins); past either limit the password
    is not checked until the window ends. An unknown address and a wrong
    password get the same 535.
    """
    outcome = check_mail_login(login=login, password=password, client_ip=client_ip)
    if outcome.throttled:
        log.warning("submission AUTH refused: too many failures (client %s)", client_ip)
        return None, Reply(454, "4.7.0 Too many failed logins; try again later")
    user = outcome.user
    if user is None:
        log.warning("submission AUTH failed from %s", client_ip)
        return None, INVALID_LOGIN
    return Login(user_id=user.pk, address=user.email), Reply(235, "2.7.0 Authentication successful")


# --- MAIL FROM and RCPT TO ----------------------------------------------------------------------


def _address_or_empty(value: str) -> str:
    try:
        return normalize_address(value)
    except ValidationError:
        return ""


def sender_reply(*, login: Login, address: str) -> Reply:
    """MAIL FROM must be the signed-in mailbox's own address."""
    if _address_or_empty(address) != login.address:
        return Reply(553, f"5.7.1 Sender address <{address}> is not yours: send as <{login.address}>")
    return Reply(250, "2.1.0 OK")


def recipient_reply(*, address: str, accepted: int) -> Reply:
    """RCPT TO: any well-formed address, up to the outbox's recipient cap."""
    if not _address_or_empty(address):
        return Reply(501, f"5.1.3 Bad recipient address syntax: <{address}>")
    cap = outbox_services.max_recipients()
    if accepted >= cap:
        return Reply(452, f"4.5.3 Too many recipients: at most {cap} per message")
    return Reply(250, "2.1.5 OK")


# --- DATA ---------------------------------------------------------------------------------------


def mime_problem(message: EmailMessage) -> str | None:
    """Why a submitted message cannot be read as its mail program meant it, or None."""
    for part in message.walk():
        if not part.is_multipart():
            part.get_payload(decode=True)  # decoding records the base64 defects on the part
        for defect in part.defects:
            for kind, problem in _BROKEN_MIME.items():
                if isinstance(defect, kind):
                    return problem
    return None


def _from_problem(message: EmailMessage, *, login: Login) -> str | None:
    try:
        header = message.get("from")
        addresses = list(header.addresses) if header is not None else []
    except Exception:  # noqa: BLE001 - a From that policy.default cannot parse is no From
        addresses = []
    if not addresses:
        return f"the message has no readable From header: it must be From: <{login.address}>"
    found = [_address_or_empty(a.addr_spec) for a in addresses]
    if found != [login.address]:
        shown = ", ".join(a.addr_spec for a in addresses)
        return f"From: {shown} is not your address: it must be From: <{login.address}>"
    return None


def split_recipients(*, to: list[str], cc: list[str], envelope: list[str]) -> tuple[list[str], list[str], list[str]]:
    """To, Cc and Bcc from the envelope: the headers' addresses the envelope names; every other envelope address is Bcc.

    A header address the envelope does not name is not sent to (the mail program
    chose its recipients; a Cc it left out of the envelope was meant to be shown only).
    """
    wanted = list(dict.fromkeys(envelope))
    to_list = [a for a in to if a in wanted]
    cc_list = [a for a in cc if a in wanted and a not in to_list]
    shown = set(to_list) | set(cc_list)
    return to_list, cc_list, [a for a in wanted if a not in shown]


def _refusal(exc: ValidationError) -> Reply:
    problems = exc.message_dict if hasattr(exc, "error_dict") else {"message": exc.messages}
    text = "; ".join(f"{field}: {' '.join(messages)}" for field, messages in problems.items())
    text = " ".join(text.split())
    if "attachments" in problems:
        if any("quota" in m or "full" in m for m in problems["attachments"]):
            return Reply(552, f"5.2.2 {text}")
        if any("cannot be attached" in m for m in problems["attachments"]):  # a blocked file type
            return Reply(554, f"5.7.0 {text}")
        return Reply(552, f"5.3.4 {text}")
    return Reply(554, f"5.6.0 {text}")


def submit_message(*, login: Login, recipients: list[str], raw: bytes) -> Reply:
    """Send what a mail program submitted, as the webmail would: 250 once it is stored and queued.

    Every check comes before a byte is stored; a send refused afterwards takes
    the files it stored with it (``storing_atomically``).
    """
    user = User.objects.select_related("domain").filter(pk=login.user_id, is_active=True).first()
    if user is None or user.email != login.address:
        return Reply(535, "5.7.8 The mailbox you signed in as is no longer active")
    parsed_message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed_message, EmailMessage)
    if problem := mime_problem(parsed_message):
        return Reply(554, f"5.6.0 Malformed MIME: {problem}")
    if problem := _from_problem(parsed_message, login=login):
        return Reply(553, f"5.7.1 {problem}")
    del parsed_message
    parsed = mime.parse_message(raw)
    to, cc, bcc = split_recipients(to=parsed.to, cc=parsed.cc, envelope=recipients)
    try:
        check_new_files(user=user, files=[(part.name, len(part.content)) for part in parsed.attachments])
        with storing_atomically():
            files = [
                AttachmentInput(
                    blob=store_upload(file=SimpleUploadedFile(part.name, part.content)),
                    name=part.name,
                    content_type=part.content_type,
                )
                for part in parsed.attachments
            ]
            message = outbox_services.send_message(
                sender=user,
                to=to,
                cc=cc,
                bcc=bcc,
                subject=parsed.subject,
                text=parsed.text,
                html=parsed.html,
                in_reply_to=parsed.in_reply_to,
                attachments=files,
            )
    except ValidationError as exc:
        return _refusal(exc)
    except PermissionDenied as exc:  # outbox.complaints.SendingPaused: too many spam complaints
        return Reply(550, f"5.7.1 {' '.join(str(exc).split())}")
    log.info("submitted %s by %s to %d recipients", message.message_id, login.address, len(recipients))
    return Reply(250, f"2.0.0 Queued as {message.message_id}")
