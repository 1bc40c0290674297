"""The SMTP server: aiosmtpd's protocol with this project's own handler.

Never ``aiosmtpd.handlers``: it imports the standard library's ``mailbox``,
which here finds the project's app. The handler answers each command from
gateway.services, run in worker threads (the database is synchronous) while
the event loop keeps serving other connections.

Limits per client address: connections open at once (more are greeted 421 and
closed) and messages a minute (more get 450 at MAIL FROM). The SIZE extension
announces ``PUSHMAIL_SMTP_MAX_BYTES``; a bigger message is refused 552 and
never held whole. STARTTLS is offered when a certificate and key are set.

DATA is read into a spooled temporary file (in memory up to a megabyte, on disk
beyond), not into aiosmtpd's list of lines: a message is never held whole in
memory, however large.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import ssl
import tempfile
import time
from collections.abc import Callable
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session
from django.conf import settings

from accounts.models import User
from accounts.validators import normalize_address
from pushmail_site.listen import listen_address

from . import services
from .database_threads import DatabaseThreads
from .filing import FilingLoop
from .spool import GroupCommit

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


def peer_ip(session: Session) -> str:
    """The client's address of an SMTP session."""
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


# DATA up to this size stays in memory; beyond, its spooled file is on disk.
SPOOL_IN_MEMORY = 1024 * 1024


class GatewayEnvelope(Envelope):
    """aiosmtpd's envelope, with the message's spooled file, and the recipients' mailboxes and usage found at RCPT.

    With :class:`GatewaySMTP`, a handler's ``handle_DATA`` reads the message from ``spool``
    (CRLF line ends, dot-unstuffed, closed after the handler returns); ``content`` and
    ``original_content`` stay None, so the message is never held whole in memory.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spool: tempfile.SpooledTemporaryFile[bytes] | None = None
        self.used_bytes: dict[str, int] = {}
        self.users: dict[str, User] = {}


class GatewaySMTP(SMTP):
    """aiosmtpd's SMTP with the per-address connection limit applied before the greeting,
    and DATA streamed to a spooled file."""

    def __init__(self, handler: InboundHandler, *, limits: ClientLimits, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._limits = limits

    async def _handle_client(self) -> None:
        assert self.session is not None
        address = peer_ip(self.session)
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

    def _create_envelope(self) -> GatewayEnvelope:
        return GatewayEnvelope()

    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802 - aiosmtpd's command name
        """aiosmtpd's DATA (RFC 5321 §4.1.1.4, §4.5.2), the lines written to a spooled file as they come.

        The same answers as aiosmtpd's: 552 past the size limit, 500 for a line
        over 1000 bytes (the rest of the data is read and dropped first). The
        handler's ``handle_DATA`` gets the file in ``envelope.spool``.
        """
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        envelope = self.envelope
        assert isinstance(envelope, GatewayEnvelope)
        if not envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        spool: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
        try:
            problem = await self._read_data(spool)
            if problem or self.transport is None:
                if problem:
                    await self.push(problem)
                self._set_post_data_state()
                return
            envelope.spool = spool
            status = await self._call_handler_hook("DATA")
        finally:
            spool.close()
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self, spool: tempfile.SpooledTemporaryFile[bytes]) -> str:
        """Read DATA to the lone dot into ``spool`` (dot-unstuffed); the refusal, or "" when it fits."""
        limit = self.data_size_limit
        size = 0
        problem = ""
        buffer = bytearray()
        partial = False  # the line read so far is a fragment of one over the line length limit
        while self.transport is not None:
            try:
                line = await self._reader.readuntil(b"\r\n")
            except asyncio.CancelledError:
                log.info("connection lost during DATA")
                self._writer.close()
                raise
            except asyncio.LimitOverrunError as overrun:
                # A line longer than the stream's limit: drained, and the message refused at the end.
                problem = problem or "500 Line too long (see RFC5321 4.5.3.1.6)"
                line = await self._reader.read(overrun.consumed)
                partial = True
                size += len(line)
                continue
            if partial:
                partial = False
                size += len(line)
                continue
            if line == b".\r\n":
                break
            size += len(line)
            if limit and size > limit:
                problem = problem or "552 Error: Too much mail data"
            if len(line) > self.line_length_limit:
                problem = problem or "500 Line too long (see RFC5321 4.5.3.1.6)"
            if problem:
                continue  # read on to the end of the data, keeping nothing
            buffer += line[1:] if line[:1] == b"." else line
            if len(buffer) >= 64 * 1024:
                spool.write(buffer)
                buffer.clear()
        spool.write(buffer)
        return problem


class InboundHandler:
    """Answers MAIL, RCPT and DATA for mail to the domains this instance hosts."""

    def __init__(
        self,
        *,
        limits: ClientLimits,
        workers: int = 8,
        spooled: Callable[[], None] | None = None,
        group: GroupCommit | None = None,
    ) -> None:
        self.limits = limits
        self._threads = DatabaseThreads(workers=workers, name="smtpd")
        #: Called once a message is spooled (answered 250): wakes the filing loop.
        self._spooled = spooled
        #: Commits the spool rows of sessions that end DATA together in one transaction (started by the caller).
        self.group = group

    def close(self) -> None:
        """Close every worker thread's database connections, then the workers, then the group commit."""
        self._threads.close()
        if self.group is not None:
            self.group.stop()

    async def _run(self, function: Any, /, **kwargs: Any) -> services.Reply:
        reply: services.Reply = await self._threads.run(function, **kwargs)
        return reply

    async def handle_MAIL(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        # The null sender of bounces and other notices: aiosmtpd hands it over, and keeps it, as "<>".
        if address != NULL_SENDER and not _ENVELOPE_ADDRESS.fullmatch(address):
            return "501 5.1.7 Bad sender address syntax"
        client = peer_ip(session)
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
            normalized = normalize_address(address)  # as the mailbox is found by it
            envelope.rcpt_tos.append(normalized)
            envelope.rcpt_options.extend(rcpt_options)
            if isinstance(envelope, GatewayEnvelope) and reply.used_bytes is not None:
                envelope.used_bytes[normalized] = reply.used_bytes
            if isinstance(envelope, GatewayEnvelope) and reply.user is not None:
                envelope.users[normalized] = reply.user
        return str(reply)

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        raw = envelope.spool if isinstance(envelope, GatewayEnvelope) else envelope.original_content
        if raw is None:
            return "554 5.6.0 No message"
        checked = services.Envelope(
            client_ip=peer_ip(session),
            helo=session.host_name or "",
            mail_from="" if envelope.mail_from == NULL_SENDER else (envelope.mail_from or ""),
            recipients=list(envelope.rcpt_tos),
            tls=session.ssl is not None,
            used_bytes=dict(getattr(envelope, "used_bytes", {})),
            users=dict(getattr(envelope, "users", {})),
        )
        try:
            reply = await self._run(services.receive_message, envelope=checked, raw=raw, group=self.group)
        except Exception:
            log.exception("receiving a message from %s failed", checked.client_ip)
            return "451 4.3.0 Local error while storing the message; try again later"
        log.info("%s from %s <%s> to %s", reply.code, checked.client_ip, checked.mail_from, checked.recipients)
        if reply.ok and self._spooled is not None:
            self._spooled()
        return str(reply)


def tls_context() -> ssl.SSLContext | None:
    """The STARTTLS context from ``PUSHMAIL_SMTP_TLS_CERT``/``_KEY``, or None when they are not both set."""
    return server_tls_context(settings.PUSHMAIL_SMTP_TLS_CERT, settings.PUSHMAIL_SMTP_TLS_KEY)


def server_tls_context(cert: str, key: str) -> ssl.SSLContext | None:
    """A server's TLS context from a PEM certificate (chain) and key file; None unless both are named."""
    if not (cert and key):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


class GatewayController(Controller):
    """aiosmtpd's Controller serving :class:`GatewaySMTP` on its own thread and event loop."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        limits: ClientLimits | None = None,
        reuse_port: bool = False,
        filing: bool = True,
    ) -> None:
        self.reuse_port = reuse_port
        #: Files what this server spools (``filing=False``: something else does, e.g. a test, by hand).
        self.filing = FilingLoop() if filing else None
        self.limits = limits or ClientLimits(
            max_connections=settings.PUSHMAIL_SMTP_MAX_CONNECTIONS_PER_CLIENT,
            per_minute=settings.PUSHMAIL_SMTP_MESSAGES_PER_MINUTE,
        )
        context = tls_context()
        super().__init__(
            InboundHandler(
                limits=self.limits,
                spooled=self.filing.wake if self.filing is not None else None,
                group=GroupCommit(),
            ),
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

    def _create_server(self) -> Any:
        # SO_REUSEPORT: several gateway processes listen on one port, the kernel spreading connections.
        return self.loop.create_server(
            self._factory_invoker, host=self.hostname, port=self.port, ssl=self.ssl_context, reuse_port=self.reuse_port
        )

    def _trigger_server(self) -> None:
        # aiosmtpd connects to itself once so that its factory runs (and any error in it shows at start);
        # with SO_REUSEPORT that connection could reach another process, so the factory is run directly.
        async def invoke() -> None:
            self._factory_invoker()

        asyncio.run_coroutine_threadsafe(invoke(), self.loop).result(timeout=self.ready_timeout)

    def start(self) -> None:
        if self.handler.group is not None:
            self.handler.group.start()
        super().start()
        if self.filing is not None:
            self.filing.start()
            self.filing.wake()  # what an earlier run left in the spool

    def stop(self, no_assert: bool = False) -> None:
        super().stop(no_assert=no_assert)
        self.handler.close()
        if self.filing is not None:
            self.filing.stop()
