"""The SMTP server: aiosmtpd's protocol with this project's own handler.

Never ``aiosmtpd.handlers``: it imports the standard library's ``mailbox``,
which here finds the project's app. The handler answers each command from
gateway.services, run in worker threads (the database is synchronous) while
the event loop keeps serving other connections.

Limits per client address: connections open at once (more are greeted 421 and
closed) and messages a minute (more get 450 at MAIL FROM). The SIZE extension
announces ``PUSHMAIL_SMTP_MAX_BYTES``; a bigger message is refused 552 and
never held whole. STARTTLS is offered when a certificate and key are set.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from django.conf import settings
from django.db import close_old_connections, connections

from accounts.validators import normalize_address

from . import services

__all__ = ["ClientLimits", "GatewayController", "InboundHandler", "listen_address", "tls_context"]

log = logging.getLogger(__name__)

# An envelope address as this gateway takes it: printable ASCII or UTF-8 without spaces, controls,
# brackets or quotes, one @, within RFC 5321's lengths. Anything else (a CR, LF or NUL smuggled into
# a header written from it) is refused before it is stored or echoed.
_ENVELOPE_ADDRESS = re.compile(r"[^\s<>()\[\]\\,;:\"@\x00-\x1f\x7f]{1,64}@[A-Za-z0-9.\-\u0080-\uffff]{1,253}")


NULL_SENDER = "<>"


class ClientLimits:
    """Connections open and messages a minute, per client address (one event loop: no locking)."""

    def __init__(self, *, max_connections: int, per_minute: int) -> None:
        self.max_connections = max_connections
        self.per_minute = per_minute
        self._open: collections.Counter[str] = collections.Counter()
        self._recent: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)

    def connect(self, address: str) -> bool:
        if self._open[address] >= self.max_connections:
            return False
        self._open[address] += 1
        return True

    def disconnect(self, address: str) -> None:
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]

    def message(self, address: str, *, now: float | None = None) -> bool:
        """Count one more message from ``address``; False once it is over its rate."""
        now = time.monotonic() if now is None else now
        recent = self._recent[address]
        while recent and recent[0] <= now - 60:
            recent.popleft()
        if len(recent) >= self.per_minute:
            return False
        recent.append(now)
        return True


def _peer_ip(session: Session) -> str:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


class GatewaySMTP(SMTP):
    """aiosmtpd's SMTP with the per-address connection limit applied before the greeting."""

    def __init__(self, handler: InboundHandler, *, limits: ClientLimits, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._limits = limits

    async def _handle_client(self) -> None:
        assert self.session is not None
        address = _peer_ip(self.session)
        if not self._limits.connect(address):
            await self.push(
                f"421 4.7.0 {self.hostname} Too many connections from {address} "
                f"(at most {self._limits.max_connections} at once); try again later"
            )
            if self.transport is not None:
                self.transport.close()
            return
        try:
            await super()._handle_client()
        finally:
            self._limits.disconnect(address)


def _with_database(function: Any, /, **kwargs: Any) -> services.Reply:
    """One command's work in a worker thread, its database connection handled as Django does a request's."""
    close_old_connections()
    try:
        reply: services.Reply = function(**kwargs)
        return reply
    finally:
        close_old_connections()


class InboundHandler:
    """Answers MAIL, RCPT and DATA for mail to the domains this instance hosts."""

    def __init__(self, *, limits: ClientLimits, workers: int = 8) -> None:
        self.limits = limits
        self._workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="smtpd")

    def close(self) -> None:
        """Close every worker thread's database connections, then the workers."""
        # One task per worker, all waiting for each other, so each runs on its own thread.
        everyone = threading.Barrier(self._workers)

        def close_own() -> None:
            everyone.wait(timeout=30)
            connections.close_all()

        for done in [self._executor.submit(close_own) for _ in range(self._workers)]:
            done.result()
        self._executor.shutdown()

    async def _run(self, function: Any, /, **kwargs: Any) -> services.Reply:
        reply: services.Reply = await asyncio.get_running_loop().run_in_executor(
            self._executor, partial(_with_database, function, **kwargs)
        )
        return reply

    async def handle_MAIL(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        # The null sender of bounces and other notices: aiosmtpd hands it over, and keeps it, as "<>".
        if address != NULL_SENDER and not _ENVELOPE_ADDRESS.fullmatch(address):
            return "501 5.1.7 Bad sender address syntax"
        client = _peer_ip(session)
        if not self.limits.message(client):
            return (
                f"450 4.7.1 Too many messages from {client} (at most {self.limits.per_minute} a minute); "
                "try again later"
            )
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if not _ENVELOPE_ADDRESS.fullmatch(address):
            return "501 5.1.3 Bad recipient address syntax"
        reply = await self._run(services.recipient_reply, address=address, accepted=len(envelope.rcpt_tos))
        if reply.ok:
            envelope.rcpt_tos.append(normalize_address(address))  # as the mailbox is found by it
            envelope.rcpt_options.extend(rcpt_options)
        return str(reply)

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        raw = envelope.original_content
        if not isinstance(raw, bytes):
            return "554 5.6.0 No message"
        checked = services.Envelope(
            client_ip=_peer_ip(session),
            helo=session.host_name or "",
            mail_from="" if envelope.mail_from == NULL_SENDER else (envelope.mail_from or ""),
            recipients=list(envelope.rcpt_tos),
            tls=session.ssl is not None,
        )
        try:
            reply = await self._run(services.receive_message, envelope=checked, raw=raw)
        except Exception:
            log.exception("receiving a message from %s failed", checked.client_ip)
            return "451 4.3.0 Local error while storing the message; try again later"
        log.info("%s from %s <%s> to %s", reply.code, checked.client_ip, checked.mail_from, checked.recipients)
        return str(reply)


def tls_context() -> ssl.SSLContext | None:
    """The STARTTLS context from ``PUSHMAIL_SMTP_TLS_CERT``/``_KEY``, or None when they are not both set."""
    cert, key = settings.PUSHMAIL_SMTP_TLS_CERT, settings.PUSHMAIL_SMTP_TLS_KEY
    if not (cert and key):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def listen_address(value: str) -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets) as a pair; ValueError naming the problem."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"PUSHMAIL_SMTP_LISTEN {value!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


class GatewayController(Controller):
    """aiosmtpd's Controller serving :class:`GatewaySMTP` on its own thread and event loop."""

    def __init__(self, *, host: str, port: int, limits: ClientLimits | None = None) -> None:
        self.limits = limits or ClientLimits(
            max_connections=settings.PUSHMAIL_SMTP_MAX_CONNECTIONS_PER_CLIENT,
            per_minute=settings.PUSHMAIL_SMTP_MESSAGES_PER_MINUTE,
        )
        context = tls_context()
        super().__init__(
            InboundHandler(limits=self.limits),
            hostname=host,
            port=port,
            server_hostname=services.hostname(),
            ident="Pushmail",
            data_size_limit=settings.PUSHMAIL_SMTP_MAX_BYTES,
            tls_context=context,
            require_starttls=False,
            enable_SMTPUTF8=True,
            # An MX takes mail from anyone: no AUTH here (submission is a server of its own).
            auth_exclude_mechanism=["LOGIN", "PLAIN"],
            timeout=300,
        )

    def factory(self) -> GatewaySMTP:
        return GatewaySMTP(self.handler, limits=self.limits, **self.SMTP_kwargs)

    def stop(self, no_assert: bool = False) -> None:
        super().stop(no_assert=no_assert)
        self.handler.close()
