"""What a mail program is told to type in to read mail over IMAP (the webmail's token page shows it)."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from pushmail_site.listen import listen_address

__all__ = ["ImapProgramSettings", "imap_program_settings"]


@dataclass(frozen=True)
class ImapProgramSettings:
    starttls_port: int
    tls_port: int | None
    #: A certificate is configured: STARTTLS (and the implicit TLS port, if served) work from anywhere.
    encrypted: bool


def imap_program_settings() -> ImapProgramSettings:
    """The IMAP ports ``manage.py mailaccess`` listens on, from the settings it reads."""
    _host, port = listen_address(settings.PUSHMAIL_IMAP_LISTEN, setting="PUSHMAIL_IMAP_LISTEN")
    implicit = settings.PUSHMAIL_IMAP_TLS_LISTEN
    tls_port = listen_address(implicit, setting="PUSHMAIL_IMAP_TLS_LISTEN")[1] if implicit else None
    encrypted = bool(settings.PUSHMAIL_MAILACCESS_TLS_CERT and settings.PUSHMAIL_MAILACCESS_TLS_KEY)
    return ImapProgramSettings(starttls_port=port, tls_port=tls_port, encrypted=encrypted)
