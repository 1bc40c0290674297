"""Ordinary email out: a message for a domain without a Pushmail instance, sent to its mail server.

The outbox keeps the delivery row, its states and its retries (outbox/delivery.py)
and asks this module, through the ``outbox.smtp.send_by_smtp`` hook, to send one
message to the waiting recipients of one domain:

* :func:`build_message` makes the MIME message with ``email`` (text and HTML
  alternatives, attachments from the content-addressed store, the threading
  headers, the sender's display name, and a ``Pushmail`` header naming the
  sending domain, so that a Pushmail instance receiving it learns the sender
  runs Pushmail);
* :func:`signed_message` adds a DKIM signature with the sending domain's
  current key (federation.keys; ``manage.py dnsrecords`` prints its record);
* :func:`mail_servers` finds where to send: the domain's MX hosts in preference
  order (dnspython, ``PUSHMAIL_DNS_RESOLVER``), the domain itself when it has no
  MX (RFC 5321 §5.1), none for a null MX (RFC 7505), or the smarthost of
  ``PUSHMAIL_SMTP_RELAY``;
* :func:`send_delivery` speaks SMTP (smtplib): STARTTLS whenever a mail server
  offers it (and always with a smarthost that has a password), one ``RCPT`` per
  recipient, and returns each recipient's answer.

An issue of a list (``Message.list_address``) is one message per subscriber, since each carries
its own ``List-Unsubscribe`` link (RFC 2369, RFC 8058), all over ONE session per domain: the
MIME message is built once, and each copy only adds its list headers and its DKIM signature,
which covers them. The newsletters app answers :data:`list_links` with each subscriber's links.

Mail servers of other domains must be on public addresses, checked on the
address actually connected to, as for the federation's client; only the domains
of ``PUSHMAIL_SMTP_ALLOW_PRIVATE_DOMAINS`` (local test servers) are exempt.
"""

from __future__ import annotations

import email.header
import email.policy
import email.utils
import functools
import random
import smtplib
import socket
import ssl
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

import dkim
import dns.exception
import dns.resolver
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from federation.http import is_public_address
from federation.keys import current_dkim_key, dkim_private_pem
from outbox.models import Delivery, Message
from outbox.smtp import SmtpAnswer, SmtpFailure
from pushmail_site.hooks import Hook

from . import auth, services

__all__ = [
    "ListLinks",
    "MailServer",
    "Relay",
    "build_message",
    "list_links",
    "list_message",
    "mail_servers",
    "send_delivery",
    "signed_message",
]

# CRLF line ends, and no 8-bit bodies: every mail server takes it, with or without 8BITMIME.
POLICY = email.policy.SMTP.clone(cte_type="7bit")
# Headers the DKIM signature covers (each once, plus an empty instance where a second copy would break it).
SIGNED_HEADERS = [
    b"from",
    b"to",
    b"cc",
    b"subject",
    b"date",
    b"message-id",
    b"in-reply-to",
    b"references",
    b"mime-version",
    b"content-type",
    b"pushmail",
]
# An issue of a list also signs its list headers: RFC 8058 §4 requires List-Unsubscribe and
# List-Unsubscribe-Post to be covered, or a receiver may ignore the one-click link.
LIST_SIGNED_HEADERS = [*SIGNED_HEADERS, b"list-id", b"list-unsubscribe", b"list-unsubscribe-post", b"precedence"]


@dataclass(frozen=True)
class ListLinks:
    """What one subscriber's copy of an issue names: the list, and how to leave it in one click."""

    list_id: str  # the List-Id value, e.g. ``Alpha News <news.alpha.example>`` (RFC 2919)
    unsubscribe_url: str  # https, answers the one-click POST (RFC 8058)
    unsubscribe_mailto: str  # mailto: URL, for mail programs that only write (RFC 2369)


#: ``list_links(list_address=..., recipients=[...])``: the links of each recipient still subscribed to
#: the list; a recipient missing from the answer left it meanwhile and is not sent the issue.
list_links: Hook[..., dict[str, ListLinks]] = Hook("gateway.list_links")
#: The answer recorded for a subscriber who left the list between the issue's publication and its sending.
LEFT_THE_LIST = SmtpAnswer(550, "5.7.1 not sent: no longer subscribed to the list")
# RFC 5321 §4.5.4: try several addresses before giving up for now, but not forever.
MAX_ADDRESSES = 6


# --- the message --------------------------------------------------------------------------------


def build_message(message: Message) -> EmailMessage:
    """The Internet message (RFC 5322, MIME) of a sent message, as its recipients by SMTP get it."""
    sender = message.sender
    local, _, domain = message.sender_address.rpartition("@")
    mail = EmailMessage(policy=POLICY)
    # One line, whatever the stored name holds: a line break could never start a header of its own.
    # The name sent with the message; a message from before names were kept takes today's.
    name = " ".join((message.sender_name or sender.display_name or "").split())
    mail["From"] = Address(display_name=name, username=local, domain=domain)
    if message.to:
        mail["To"] = ", ".join(message.to)
    if message.cc:
        mail["Cc"] = ", ".join(message.cc)
    # Bcc recipients get the message without any Bcc header: nobody learns who else was blind-copied.
    mail["Subject"] = message.subject
    mail["Date"] = email.utils.format_datetime(message.date)
    mail["Message-ID"] = message.message_id
    if message.in_reply_to:
        mail["In-Reply-To"] = message.in_reply_to
    if message.references:
        mail["References"] = " ".join(message.references)
    # The progressive step: a Pushmail instance that receives this learns that the sender runs one too.
    mail["Pushmail"] = sender.domain.name
    if message.auto_submitted:
        # RFC 3834: no other responder answers this (a vacation reply, a filter's forward).
        mail["Auto-Submitted"] = message.auto_submitted
    mail.set_content(message.text or "")
    if message.html:
        mail.add_alternative(message.html, subtype="html")
    for attachment in message.attachments.select_related("blob").order_by("position"):
        maintype, _, subtype = attachment.content_type.partition("/")
        with attachment.blob.file.open("rb") as file:
            content = file.read()
        mail.add_attachment(
            content,
            maintype=maintype or "application",
            subtype=subtype or "octet-stream",
            filename=attachment.name,
        )
    return mail


def signed_message(message: Message) -> bytes:
    """The message's bytes with a DKIM signature of the sending domain's current key on top."""
    return _signed(message, build_message(message).as_bytes(policy=POLICY), SIGNED_HEADERS)


def _signed(message: Message, raw: bytes, headers: list[bytes]) -> bytes:
    key = current_dkim_key(message.sender.domain)
    signature = dkim.sign(
        raw,
        key.selector.encode("ascii"),
        message.sender.domain.name.encode("ascii"),
        dkim_private_pem(key),
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=headers,
        linesep=b"\r\n",
    )
    return signature + raw


def _list_headers(links: ListLinks) -> bytes:
    """The list headers of one subscriber's copy, as header lines.

    Written as they are, not through ``email``'s folding, which would encode a long URL as an
    RFC 2047 word that no mail program reads as a link; each URL stays whole on its own line
    (RFC 2369 §2 allows folding after the comma). Only a non-ASCII list name is encoded.
    """
    name, _, ident = links.list_id.rpartition(" ")
    if not name.isascii():
        name = email.header.Header(name.strip('"'), "utf-8").encode()
    lines = [
        f"List-Id: {name} {ident}",
        f"List-Unsubscribe: <{links.unsubscribe_url}>,\r\n <{links.unsubscribe_mailto}>",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        "Precedence: list",
    ]
    return "".join(line + "\r\n" for line in lines).encode("ascii")


def list_message(message: Message, links: ListLinks, *, base: bytes | None = None) -> bytes:
    """One subscriber's copy of a list's issue, DKIM-signed over its list headers too.

    ``base`` is the issue's message as :func:`build_message` makes it, made once for all copies.
    """
    if base is None:
        base = build_message(message).as_bytes(policy=POLICY)
    return _signed(message, _list_headers(links) + base, LIST_SIGNED_HEADERS)


# --- where to send ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MailServer:
    """One host to try: its name (for STARTTLS and messages) and its addresses, in order."""

    name: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class Relay:
    """The smarthost of ``PUSHMAIL_SMTP_RELAY``: ``smtp://user:pass@host:587`` or ``smtps://...:465``."""

    host: str
    port: int
    username: str
    password: str
    implicit_tls: bool


def relay() -> Relay | None:
    """The configured smarthost, or None to send to each domain's MX."""
    spec = settings.PUSHMAIL_SMTP_RELAY
    if not spec:
        return None
    parts = urlsplit(spec)
    if parts.scheme not in {"smtp", "smtps"} or not parts.hostname:
        raise ImproperlyConfigured(f"PUSHMAIL_SMTP_RELAY must be smtp://[user:pass@]host[:port], not {spec!r}")
    implicit = parts.scheme == "smtps"
    return Relay(
        host=parts.hostname,
        port=parts.port or (465 if implicit else 587),
        username=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        implicit_tls=implicit,
    )


def mail_servers(domain: str) -> list[MailServer]:
    """The domain's mail servers, most preferred first; SmtpFailure when it has none or DNS does not answer."""
    names = _mx_names(domain)
    servers = [MailServer(name, tuple(_addresses(name))) for name in names]
    servers = [server for server in servers if server.addresses]
    if not servers:
        raise SmtpFailure(f"no address for the mail servers of {domain} ({', '.join(names)})", retryable=False)
    return servers


def _mx_names(domain: str) -> list[str]:
    try:
        answer = auth.resolver().resolve(domain, "MX", search=False)
    except dns.resolver.NXDOMAIN:
        raise SmtpFailure(f"the domain {domain} does not exist", retryable=False) from None
    except dns.resolver.NoAnswer:
        return [domain]  # no MX: the domain's own address records (RFC 5321 §5.1)
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        raise SmtpFailure(f"DNS lookup of the MX of {domain} failed: {exc}", retryable=True) from exc
    records = [(record.preference, str(record.exchange).rstrip(".").lower()) for record in answer]
    if any(name == "" for _, name in records):
        # RFC 7505: "MX 0 ." says the domain takes no mail at all.
        raise SmtpFailure(f"{domain} does not accept mail (null MX)", retryable=False)
    # Equal preferences in random order, spreading the load as RFC 5321 §5.1 asks.
    random.shuffle(records)
    records.sort(key=lambda record: record[0])
    names: list[str] = []
    for _, name in records:
        if name not in names:
            names.append(name)
    return names


def _addresses(host: str) -> list[str]:
    found: list[str] = []
    for rtype in ("A", "AAAA"):
        try:
            answer = auth.resolver().resolve(host, rtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return []
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise SmtpFailure(f"DNS lookup of {host} failed: {exc}", retryable=True) from exc
        found.extend(str(record) for record in answer.rrset or [])
    return found


def _may_reach(domain: str, address: str) -> bool:
    return is_public_address(address) or domain.lower() in settings.PUSHMAIL_SMTP_ALLOW_PRIVATE_DOMAINS


# --- sending ------------------------------------------------------------------------------------


def send_delivery(*, delivery: Delivery, recipients: list[str]) -> dict[str, SmtpAnswer]:
    """Send ``delivery``'s message to ``recipients`` (all at ``delivery.domain``): each one's answer.

    Answers the ``outbox.smtp.send_by_smtp`` hook. A recipient with no answer
    (the connection dropped before its turn) is tried again by the outbox.
    Raises SmtpFailure when no server could be asked at all.
    """
    message = delivery.message
    left: dict[str, SmtpAnswer] = {}
    if message.list_address:
        batches, left = _list_copies(message, recipients)
        if not batches:
            return left
    else:
        batches = [(recipients, signed_message(message))]
    smarthost = relay()
    if smarthost is not None:
        return left | _send_through_relay(smarthost, message.sender_address, batches)
    errors: list[str] = []
    tried = 0
    for server in mail_servers(delivery.domain):
        for address in server.addresses:
            if tried >= MAX_ADDRESSES:
                break
            if not _may_reach(delivery.domain, address):
                errors.append(f"{server.name} [{address}]: refusing to connect to a private address")
                continue
            tried += 1
            try:
                client = _connect(server.name, address)
            except (OSError, smtplib.SMTPException) as exc:
                errors.append(f"{server.name} [{address}]: {_describe(exc)}")
                continue
            with _closing(client):
                return left | _transactions(client, message.sender_address, batches)
    raise SmtpFailure("; ".join(errors) or f"no mail server of {delivery.domain} to try", retryable=True)


Batch = tuple[list[str], bytes]  # recipients, and the bytes they all get


def _list_copies(message: Message, recipients: list[str]) -> tuple[list[Batch], dict[str, SmtpAnswer]]:
    """One copy per subscriber still on the list, and the answer for those who left it meanwhile."""
    links = list_links(list_address=message.list_address, recipients=recipients)
    base = build_message(message).as_bytes(policy=POLICY)
    batches = [
        ([address], list_message(message, links[address], base=base)) for address in recipients if address in links
    ]
    return batches, {address: LEFT_THE_LIST for address in recipients if address not in links}


def _transactions(client: smtplib.SMTP, mail_from: str, batches: list[Batch]) -> dict[str, SmtpAnswer]:
    """One transaction per batch over the same session; once the session breaks, the rest wait."""
    answers: dict[str, SmtpAnswer] = {}
    for recipients, raw in batches:
        answered = _transaction(client, mail_from, recipients, raw)
        answers.update(answered)
        if len(answered) < len(recipients):
            return answers  # the session broke: the others are tried again later
    try:
        client.quit()
    except (OSError, smtplib.SMTPException):
        pass  # the messages were answered already: a broken goodbye changes nothing
    return answers


def _connect(name: str, address: str) -> smtplib.SMTP:
    """A session with one MX address, after EHLO; STARTTLS when offered (opportunistic, RFC 7435)."""
    client = smtplib.SMTP(timeout=settings.PUSHMAIL_SMTP_TIMEOUT, local_hostname=services.hostname())
    try:
        client.connect(address, settings.PUSHMAIL_SMTP_OUTBOUND_PORT)
        client._host = name  # type: ignore[attr-defined]  # STARTTLS sends this name (SNI), not the address
        client.ehlo_or_helo_if_needed()
        if client.has_extn("starttls"):
            client.starttls(context=_opportunistic_tls())
            client.ehlo()
    except BaseException:
        client.close()
        raise
    return client


@functools.cache
def _opportunistic_tls() -> ssl.SSLContext:
    """TLS to an MX: encrypted, certificate not checked (RFC 7435). MX certificates are rarely
    valid for their names, and refusing would leave the mail unsent, not safer."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@functools.cache
def _verified_tls() -> ssl.SSLContext:
    """TLS to the smarthost, its certificate checked. Made once per process: loading the
    system's CA certificates costs about as much as sending a message."""
    return ssl.create_default_context()


def _send_through_relay(smarthost: Relay, mail_from: str, batches: list[Batch]) -> dict[str, SmtpAnswer]:
    context = _verified_tls()
    try:
        client: smtplib.SMTP
        if smarthost.implicit_tls:
            client = smtplib.SMTP_SSL(
                smarthost.host,
                smarthost.port,
                local_hostname=services.hostname(),
                timeout=settings.PUSHMAIL_SMTP_TIMEOUT,
                context=context,
            )
        else:
            client = smtplib.SMTP(
                smarthost.host,
                smarthost.port,
                local_hostname=services.hostname(),
                timeout=settings.PUSHMAIL_SMTP_TIMEOUT,
            )
        with _closing(client):
            client.ehlo_or_helo_if_needed()
            if not smarthost.implicit_tls:
                if client.has_extn("starttls"):
                    client.starttls(context=context)
                    client.ehlo()
                elif smarthost.username:
                    raise SmtpFailure(
                        f"the relay {smarthost.host} does not offer STARTTLS: not sending the password in clear",
                        retryable=True,
                    )
            if smarthost.username:
                client.login(smarthost.username, smarthost.password)
            return _transactions(client, mail_from, batches)
    except smtplib.SMTPAuthenticationError as exc:
        raise SmtpFailure(f"the relay {smarthost.host} refused the login: {_describe(exc)}", retryable=True) from exc
    except (OSError, smtplib.SMTPException) as exc:
        raise SmtpFailure(f"relay {smarthost.host}: {_describe(exc)}", retryable=True) from exc


def _transaction(client: smtplib.SMTP, mail_from: str, recipients: list[str], raw: bytes) -> dict[str, SmtpAnswer]:
    """MAIL, one RCPT per recipient, DATA: each recipient's answer (none for those never answered).

    The session stays open for the next transaction (RSET after a refusal)."""
    answers: dict[str, SmtpAnswer] = {}
    try:
        options = [f"SIZE={len(raw)}"] if client.has_extn("size") else []
        code, text = client.mail(mail_from, options)
        reply: bytes | str
        if code != 250:
            client.rset()
            return dict.fromkeys(recipients, _answer(code, text))
        taken: list[str] = []
        for address in recipients:
            if not address.isascii():
                # Internationalized addresses need SMTPUTF8 end to end; this sender does not speak it yet.
                answers[address] = SmtpAnswer(553, "5.6.7 a non-ASCII address cannot be sent to by SMTP from here")
                continue
            code, text = client.rcpt(address)
            answers[address] = _answer(code, text)
            if code in (250, 251):
                taken.append(address)
        if not taken:
            client.rset()
            return answers
        try:
            code, reply = client.data(raw)
        except smtplib.SMTPDataError as exc:  # DATA itself refused (not 354)
            code, reply = exc.smtp_code, exc.smtp_error
            client.rset()  # the transaction is still open: end it before the session's next one
        for address in taken:
            answers[address] = _answer(code, reply)
    except (OSError, smtplib.SMTPException):
        # The session broke: recipients already refused for good keep that answer; the rest are tried again.
        return {address: answer for address, answer in answers.items() if answer.permanent}
    return answers


def _answer(code: int, text: bytes | str) -> SmtpAnswer:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return SmtpAnswer(code=code, text=" ".join(text.split())[:400])


def _describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        return str(_answer(exc.smtp_code, exc.smtp_error))
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


class _closing:
    """Close the session however the block ends (``quit`` has been sent when all went well)."""

    def __init__(self, client: smtplib.SMTP) -> None:
        self.client = client

    def __enter__(self) -> smtplib.SMTP:
        return self.client

    def __exit__(self, *exc: object) -> None:
        self.client.close()
