"""Mail to domains without a Pushmail instance: the hook the SMTP gateway answers.

The outbox decides when a delivery goes by SMTP and records the answers on its
rows; the gateway (above it) knows SMTP and answers :data:`send_by_smtp` in its
``AppConfig.ready()``. With nothing answering, or ``PUSHMAIL_SMTP_OUTBOUND`` off,
such recipients are rejected as a "legacy domain" as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from pushmail_site.hooks import Hook


@dataclass(frozen=True)
class SmtpAnswer:
    """The receiving server's answer for one recipient: RCPT's, or DATA's once RCPT was accepted."""

    code: int
    text: str

    @property
    def accepted(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()


class SmtpFailure(Exception):
    """No server answered for any recipient: no mail server at all (permanent), or none reachable now."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.retryable = retryable


#: ``send_by_smtp(delivery=..., recipients=[...])`` sends the delivery's message to those
#: recipients (all at ``delivery.domain``) and returns each one's answer, or raises SmtpFailure.
send_by_smtp: Hook[..., dict[str, SmtpAnswer]] = Hook("outbox.send_by_smtp")


def smtp_enabled() -> bool:
    """Whether mail for domains without a Pushmail instance goes by SMTP here."""
    return bool(settings.PUSHMAIL_SMTP_OUTBOUND) and send_by_smtp.answered


__all__ = ["SmtpAnswer", "SmtpFailure", "send_by_smtp", "smtp_enabled"]
