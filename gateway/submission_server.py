"""The submission server: aiosmtpd's protocol, AUTH required, with this project's handler and authenticator.

Never ``aiosmtpd.handlers``: it imports the standard library's ``mailbox``,
which here finds the project's app. AUTH PLAIN and LOGIN are offered only
over TLS (STARTTLS, or a listener with implicit TLS), except to a client on
loopback; MAIL is refused (530) until AUTH succeeds. The password check and
everything after it run in worker threads (the database is synchronous) from
gateway.submission.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from django.conf import settings

from accounts.mail_logins import plaintext_auth_allowed
from accounts.validators import normalize_address

from . import submission
from .database_threads import DatabaseThreads
from .server import listen_address, peer_ip, server_tls_context
from .services import Reply, hostname

__all__ = ["SubmissionController", "SubmissionHandler", "listen_address", "plaintext_auth_allowed", "tls_context"]

log = logging.getLogger(__name__)

_PENDING = "pending"  # an AuthResult whose credentials are still to be checked off the event loop


def tls_context() -> ssl.SSLContext | None:
    """The TLS context from ``PUSHMAIL_SUBMISSION_TLS_CERT``/``_KEY``, or None when they are not both set."""
    return server_tls_context(settings.PUSHMAIL_SUBMISSION_TLS_CERT, settings.PUSHMAIL_SUBMISSION_TLS_KEY)


class SubmissionSMTP(SMTP):
    """aiosmtpd's SMTP whose AUTH checks app passwords in a worker thread, TLS required off loopback."""

    event_handler: SubmissionHandler

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        starting = self._original_transport is None and self.transport is None
        super().connection_made(transport)
        if starting and self.session is not None:
            implicit_tls = transport.get_extra_info("ssl_object") is not None
            self._auth_require_tls = not (implicit_tls or plaintext_auth_allowed(peer_ip(self.session)))

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        # aiosmtpd calls this synchronously on the event loop: hand the credentials back to be checked off it.
        return AuthResult(success=False, handled=False, message=_PENDING, auth_data=auth_data)

    async def _checked(self, result: AuthResult) -> AuthResult:
        if result.message != _PENDING or not isinstance(result.auth_data, LoginPassword):
            return result
        assert self.session is not None
        credentials: LoginPassword = result.auth_data
        login, reply = await self.event_handler.run(
            submission.check_login,
            login=credentials.login.decode("utf-8", "replace"),
            password=credentials.password.decode("utf-8", "replace"),
            client_ip=peer_ip(self.session),
        )
        if login is None:
            return AuthResult(success=False, handled=False, message=str(reply))
        return AuthResult(success=True, message=str(reply), auth_data=login)

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802 - aiosmtpd's name
        return await self._checked(await super().auth_PLAIN(server, args))

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802 - aiosmtpd's name
        return await self._checked(await super().auth_LOGIN(server, args))


def _login(session: Session) -> submission.Login | None:
    data = getattr(session, "auth_data", None)
    return data if isinstance(data, submission.Login) else None


class SubmissionHandler:
    """Answers MAIL, RCPT and DATA for the signed-in mailbox."""

    def __init__(self, *, workers: int = 4) -> None:
        self._threads = DatabaseThreads(workers=workers, name="submission")

    def close(self) -> None:
        """Close every worker thread's database connections, then the workers."""
        self._threads.close()

    async def run(self, function: Any, /, **kwargs: Any) -> Any:
        return await self._threads.run(function, **kwargs)

    async def handle_MAIL(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        login = _login(session)
        if login is None:
            return "530 5.7.0 Authentication required"
        reply = submission.sender_reply(login=login, address=address)
        if reply.ok:
            envelope.mail_from = login.address
            envelope.mail_options.extend(mail_options)
        return str(reply)

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        reply = submission.recipient_reply(address=address, accepted=len(envelope.rcpt_tos))
        if reply.ok:
            envelope.rcpt_tos.append(normalize_address(address))
            envelope.rcpt_options.extend(rcpt_options)
        return str(reply)

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        login = _login(session)
        raw = envelope.original_content
        if login is None:
            return "530 5.7.0 Authentication required"
        if not isinstance(raw, bytes):
            return "554 5.6.0 No message"
        try:
            reply: Reply = await self.run(
                submission.submit_message, login=login, recipients=list(envelope.rcpt_tos), raw=raw
            )
        except Exception:
            log.exception("submitting a message for %s failed", login.address)
            return "451 4.3.0 Local error while sending the message; try again later"
        log.info("%s for %s to %s", reply.code, login.address, envelope.rcpt_tos)
        return str(reply)


class SubmissionController(Controller):
    """aiosmtpd's Controller serving :class:`SubmissionSMTP` on its own thread and event loop.

    ``implicit_tls``: TLS from the first byte (port 465); otherwise STARTTLS is
    offered when a certificate is set (port 587).
    """

    def __init__(self, *, host: str, port: int, implicit_tls: bool = False) -> None:
        context = tls_context()
        if implicit_tls and context is None:
            raise ValueError("implicit TLS needs PUSHMAIL_SUBMISSION_TLS_CERT and PUSHMAIL_SUBMISSION_TLS_KEY")
        super().__init__(
            SubmissionHandler(),
            hostname=host,
            port=port,
            ssl_context=context if implicit_tls else None,
            server_hostname=hostname(),
            ident="Pushmail submission",
            data_size_limit=settings.PUSHMAIL_SUBMISSION_MAX_BYTES,
            tls_context=None if implicit_tls else context,
            require_starttls=False,
            enable_SMTPUTF8=True,
            auth_required=True,
            auth_require_tls=True,  # per connection: lifted on loopback and under implicit TLS
            authenticator=lambda *_: AuthResult(success=False),  # never called: _authenticate is ours
            timeout=300,
        )

    def factory(self) -> SubmissionSMTP:
        return SubmissionSMTP(self.handler, **self.SMTP_kwargs)

    def stop(self, no_assert: bool = False) -> None:
        super().stop(no_assert=no_assert)
        self.handler.close()
