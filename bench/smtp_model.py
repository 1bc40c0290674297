"""Bytes SMTP would put on the wire for the bandwidth benchmark's message.

The model, stated so it can be argued with:

* The message is a real RFC 5322 message built with Python's ``email`` package
  (CRLF line endings) carrying the same text as the Pushmail message, with the
  headers a sending MTA adds: a DKIM-Signature (rsa-sha256, 2048-bit key: the
  SMTP counterpart of Pushmail's request signature) and one Received line.
  Recipients are Bcc, as in the Pushmail run: ``To: undisclosed-recipients:;``.
* "text" model: ``text/plain``, 7bit (the text is ASCII with short lines, so it
  travels as is). "attachment" model: the same 50 KB as a base64 attachment
  (4/3 larger plus CRLF every 76 characters) next to a one-line text part.
* One SMTP session per recipient domain: the MX's greeting, EHLO and Postfix's
  usual multi-line EHLO answer, then per transaction MAIL FROM (with SIZE), one
  RCPT TO per recipient, DATA, the dot-stuffed message and the final ".", each
  with Postfix's replies, and QUIT. PIPELINING changes round trips, not bytes.
* "per recipient": one transaction (one copy) per recipient, 20 transactions in
  each domain's session. "per domain": one transaction with all 20 RCPT TOs.
* TLS (STARTTLS, handshakes, record overhead), TCP/IP headers and DNS lookups
  are left out, as they are on the HTTP side (plain HTTP on loopback, no TLS).
"""

from __future__ import annotations

import base64
import email.policy
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime

EHLO_REPLY = (
    "250-{mx}\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n250-STARTTLS\r\n"
    "250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"
)


def _dkim_header(domain: str, signed_headers: str, body: bytes) -> str:
    # A 2048-bit RSA signature is 256 bytes: 344 base64 characters, folded as
    # signers do. Only the lengths matter for the byte count.
    bh = base64.b64encode(hashlib.sha256(body).digest()).decode()
    b = base64.b64encode(hashlib.sha512(body).digest() * 4)[:344].decode()
    folded_b = "\r\n\t ".join(b[i : i + 70] for i in range(0, len(b), 70))
    return (
        f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain};\r\n"
        f"\ts=mail; t=1764151200; bh={bh};\r\n"
        f"\th={signed_headers};\r\n"
        f"\tb={folded_b}\r\n"
    )


def build_message(*, sender: str, subject: str, text: str, message_id: str, attachment: bool) -> bytes:
    """The message as the receiving MX gets it, CRLF line endings, headers included."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = sender
    msg["To"] = "undisclosed-recipients:;"
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime(2026, 11, 26, 10, 0, tzinfo=UTC))
    msg["Message-ID"] = message_id
    if attachment:
        msg.set_content("The text is attached.\n", cte="7bit")
        msg.add_attachment(text.encode(), maintype="application", subtype="octet-stream", filename="message.txt")
    else:
        msg.set_content(text, cte="7bit")
    raw = msg.as_bytes(policy=email.policy.SMTP)
    _head, _, body = raw.partition(b"\r\n\r\n")
    domain = sender.rpartition("@")[2]
    received = (
        f"Received: from [192.0.2.10] (client.{domain} [192.0.2.10])\r\n"
        f"\tby mail.{domain} (Postfix) with ESMTPSA id 4dQx3K1Zz7z9sVq\r\n"
        f"\tfor <undisclosed-recipients>; Wed, 26 Nov 2026 10:00:00 +0000 (UTC)\r\n"
    )
    dkim = _dkim_header(domain, "From:To:Subject:Date:Message-ID:MIME-Version:Content-Type", body)
    return dkim.encode() + received.encode() + raw


def _dot_stuffed_size(message: bytes) -> int:
    lines = message.split(b"\r\n")
    return len(message) + sum(1 for line in lines if line.startswith(b"."))


@dataclass(frozen=True)
class SmtpCost:
    sessions: int
    transactions: int
    message_bytes: int  # one copy, headers included, before dot-stuffing
    client_bytes: int  # client -> server
    server_bytes: int  # server -> client

    @property
    def total(self) -> int:
        return self.client_bytes + self.server_bytes


def smtp_cost(
    *, message: bytes, sender: str, recipients_by_domain: dict[str, list[str]], per_recipient: bool
) -> SmtpCost:
    """Bytes of all SMTP sessions needed to deliver ``message`` to every recipient."""
    sender_domain = sender.rpartition("@")[2]
    data_size = _dot_stuffed_size(message)
    client = server = transactions = 0
    for domain, recipients in recipients_by_domain.items():
        mx = f"mx.{domain}"
        server += len(f"220 {mx} ESMTP Postfix (Debian/GNU)\r\n")
        client += len(f"EHLO mail.{sender_domain}\r\n")
        server += len(EHLO_REPLY.format(mx=mx))
        groups = [[r] for r in recipients] if per_recipient else [recipients]
        for group in groups:
            transactions += 1
            client += len(f"MAIL FROM:<{sender}> SIZE={len(message)}\r\n")
            server += len("250 2.1.0 Ok\r\n")
            for rcpt in group:
                client += len(f"RCPT TO:<{rcpt}>\r\n")
                server += len("250 2.1.5 Ok\r\n")
            client += len("DATA\r\n")
            server += len("354 End data with <CR><LF>.<CR><LF>\r\n")
            client += data_size + len(".\r\n")
            server += len("250 2.0.0 Ok: queued as 4dQx3K1Zz7z9sVq\r\n")
        client += len("QUIT\r\n")
        server += len("221 2.0.0 Bye\r\n")
    return SmtpCost(
        sessions=len(recipients_by_domain),
        transactions=transactions,
        message_bytes=len(message),
        client_bytes=client,
        server_bytes=server,
    )
