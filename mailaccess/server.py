"""The ``manage.py mailaccess`` process: one Twisted reactor serving the mail-program protocols.

POP3 (mailaccess.pop3) and IMAP (mailaccess.imap) listen on the same reactor
and share its thread pool. The Django ORM is only ever called from the
reactor's thread pool, never from the reactor thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from twisted.internet import ssl
from twisted.internet.interfaces import IListeningPort

from pushmail_site.listen import listen_address

from .imap import IMAPFactory
from .pop3 import POP3Factory

__all__ = ["Listener", "listen_address", "start_listening", "tls_context"]


@dataclass(frozen=True)
class Listener:
    """A port the process listens on, for the log line and the tests."""

    protocol: str
    host: str
    port: int
    tls: str  # "implicit", "stls" (POP3's STLS or IMAP's STARTTLS) or "none"


def tls_context() -> ssl.DefaultOpenSSLContextFactory | None:
    """The certificate for STLS and implicit TLS, or None when none is configured."""
    cert, key = settings.PUSHMAIL_MAILACCESS_TLS_CERT, settings.PUSHMAIL_MAILACCESS_TLS_KEY
    if not (cert and key):
        return None
    return ssl.DefaultOpenSSLContextFactory(key, cert)


def start_listening(reactor: Any) -> list[tuple[Listener, IListeningPort]]:
    """Open every configured port on ``reactor``; raises (before serving anything) on a bad setting."""
    tls = tls_context()
    host, port = listen_address(settings.PUSHMAIL_POP3_LISTEN, setting="PUSHMAIL_POP3_LISTEN")
    started: list[tuple[Listener, IListeningPort]] = [
        (
            Listener("pop3", host, port, "stls" if tls else "none"),
            reactor.listenTCP(port, POP3Factory(tls=tls, clock=reactor), interface=host),
        )
    ]
    if settings.PUSHMAIL_POP3_TLS_LISTEN:
        if tls is None:
            raise ValueError("PUSHMAIL_POP3_TLS_LISTEN needs PUSHMAIL_MAILACCESS_TLS_CERT and _KEY")
        host, port = listen_address(settings.PUSHMAIL_POP3_TLS_LISTEN, setting="PUSHMAIL_POP3_TLS_LISTEN")
        started.append(
            (
                Listener("pop3", host, port, "implicit"),
                reactor.listenSSL(port, POP3Factory(tls=None, clock=reactor), tls, interface=host),
            )
        )
    host, port = listen_address(settings.PUSHMAIL_IMAP_LISTEN, setting="PUSHMAIL_IMAP_LISTEN")
    started.append(
        (
            Listener("imap", host, port, "stls" if tls else "none"),
            reactor.listenTCP(port, IMAPFactory(tls=tls, clock=reactor), interface=host),
        )
    )
    if settings.PUSHMAIL_IMAP_TLS_LISTEN:
        if tls is None:
            raise ValueError("PUSHMAIL_IMAP_TLS_LISTEN needs PUSHMAIL_MAILACCESS_TLS_CERT and _KEY")
        host, port = listen_address(settings.PUSHMAIL_IMAP_TLS_LISTEN, setting="PUSHMAIL_IMAP_TLS_LISTEN")
        started.append(
            (
                Listener("imap", host, port, "implicit"),
                reactor.listenSSL(port, IMAPFactory(tls=None, clock=reactor), tls, interface=host),
            )
        )
    return started
