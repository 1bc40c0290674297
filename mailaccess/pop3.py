"""The POP3 server (RFC 1939 with CAPA, RESP-CODES and AUTH-RESP-CODE of RFC 2449, STLS of RFC 2595).

Twisted's ``twisted.mail.pop3.POP3`` reads the lines, dispatches the commands
and streams the messages; this module answers them from mailaccess.maildrop,
whose functions run in Twisted's thread pool (``deferToThread``) because they
use the Django ORM. The maildrop is listed once, at sign-in: message numbers
and sizes stay fixed for the session, as RFC 1939 requires. ``DELE`` only marks;
the marked messages move to Trash at ``QUIT`` (the UPDATE state) and stay in the
Inbox if the connection drops.

What a mail program is told:

- ``USER``/``PASS`` with the address and an app password. Over a connection
  that is neither TLS nor from loopback: ``-ERR [AUTH] ...`` before the
  password is read. A wrong password and an unknown address: the same
  ``-ERR [AUTH] Invalid login``; past the failure limit, ``-ERR [SYS/TEMP]``.
- ``RETR`` of a body still at the sender's: the fetch runs and the answer waits
  for it; ``-ERR [SYS/TEMP]`` (RFC 3206) if the sender does not answer in time.
- ``TOP n 0``: the headers from the notification, nothing fetched.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from io import BytesIO
from typing import Any, TypeVar

from django.conf import settings
from django.db import close_old_connections
from twisted.internet import defer, interfaces, task
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.ssl import ContextFactory
from twisted.internet.threads import deferToThread
from twisted.mail import pop3
from twisted.protocols import basic
from twisted.python.failure import Failure

from accounts.mail_logins import check_mail_login, plaintext_auth_allowed

from . import maildrop

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["POP3Factory", "PushmailPOP3"]

# Commands a client may send ahead while an earlier one is still being answered (PIPELINING).
_MAX_PIPELINED = 1000
# Downloads made ahead of their RETR, together (a program downloads in order): at most this many
# messages and, past the first, this many listed octets. Read marks are written together too.
_PREPARE_MESSAGES = 50
_PREPARE_OCTETS = 4 * 1024 * 1024
_READ_MARKS_SECONDS = 0.5
_READ_MARKS_MAX = 100
# A message up to this size is handed to the transport at once; a bigger one is streamed.
_WRITE_AT_ONCE = 256 * 1024


class _Ahead:
    """The next batch of downloads, made in a worker thread while the program downloads the current one."""

    def __init__(self, numbers: list[int], ids: set[int]) -> None:
        self.numbers = numbers
        self.ids = ids
        self.prepared: dict[int, maildrop.Prepared] | None = None  # None while being made
        self.waiting: list[defer.Deferred[None]] = []

    def done(self, prepared: dict[int, maildrop.Prepared]) -> None:
        self.prepared = prepared
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(None)


class _Session:
    """A signed-in user's maildrop as listed at sign-in, and the messages marked deleted."""

    def __init__(self, user_id: int, items: list[maildrop.DropItem]) -> None:
        self.user_id = user_id
        self.items = items
        self.deleted: set[int] = set()
        self.prepared: dict[int, maildrop.Prepared] = {}  # entry id -> a download made ahead
        self.batch: list[int] = []  # the message numbers of the batch in ``prepared``
        self.ahead: _Ahead | None = None  # the next batch, being made while this one is downloaded
        self.to_mark_read: list[int] = []  # entries downloaded whose read mark is not written yet

    def live(self) -> Iterator[tuple[int, maildrop.DropItem]]:
        for number, item in enumerate(self.items, start=1):
            if number not in self.deleted:
                yield number, item


class PushmailPOP3(pop3.POP3):
    """One POP3 connection."""

    AUTH_CMDS = [b"CAPA", b"USER", b"PASS", b"APOP", b"AUTH", b"STLS", b"QUIT"]
    factory: POP3Factory  # type: ignore[assignment]
    session: _Session | None = None
    timeOut = 600  # RFC 1939 §3: an autologout timer of at least 10 minutes

    # --- plumbing ---------------------------------------------------------------------

    def connectionMade(self) -> None:
        # No APOP timestamp in the greeting: app passwords are not stored in the clear.
        self.successResponse(b"Pushmail POP3 ready")
        self.setTimeout(self.timeOut)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._write_read_marks()  # what was downloaded was read, QUIT or not
        self.session = None  # RFC 1939 §6: no QUIT, no UPDATE: marked messages stay
        self.mbox = None
        super().connectionLost(reason)

    def _in_thread(self, func: Callable[..., T], /, **kwargs: Any) -> defer.Deferred[T]:
        """Run ``func`` in the thread pool, on a usable database connection (one per thread, reused)."""

        def run() -> T:
            close_old_connections()
            return func(**kwargs)

        return deferToThread(run)

    @property
    def _link(self) -> Any:
        """The transport (Twisted types it loosely)."""
        return self.transport

    def _secure(self) -> bool:
        return interfaces.ISSLTransport.providedBy(self.transport)

    def _client_ip(self) -> str:
        return str(getattr(self._link.getPeer(), "host", ""))

    def _login_allowed(self) -> bool:
        return self._secure() or plaintext_auth_allowed(self._client_ip())

    def state_COMMAND(self, line: bytes) -> None:
        command, *args = line.split(b" ")
        self.processCommand(command, *args)

    def processCommand(self, command: bytes, *args: bytes) -> Any:
        """Run one command, or queue it while an earlier one is still answering (pipelining)."""
        if self.blocked is not None:
            if len(self.blocked) >= _MAX_PIPELINED:  # memory stays bounded while a download waits
                self.failResponse(b"Too many commands sent ahead; closing")
                self._link.loseConnection()
                return None
            self.blocked.append((command, args))
            return None
        try:
            handler = self._handler(command.upper(), args)
        except pop3.POP3Error as error:
            self.failResponse(error.args[0])
            return None
        return handler(*args)

    def _handler(self, name: bytes, args: tuple[bytes, ...]) -> Callable[..., Any]:
        """The method for a command allowed in this state with these arguments; POP3Error naming the problem."""
        if len(name) + sum(len(arg) + 1 for arg in args) + 2 > 255:  # RFC 2449 §4: 255 octets with the CRLF
            raise pop3.POP3Error(b"Command line too long")
        handler = getattr(self, "do_" + name.decode("ascii", "replace"), None)
        if handler is None or name in (b"LAST", b"RPOP"):
            raise pop3.POP3Error(b"Unknown command")
        if self.session is None and name not in self.AUTH_CMDS:
            raise pop3.POP3Error(b"Sign in first (USER and PASS)")
        if self.session is not None and name in (b"USER", b"PASS", b"APOP", b"AUTH", b"STLS"):
            raise pop3.POP3Error(b"Already signed in")
        try:
            inspect.signature(handler).bind(*args)
        except TypeError:
            raise pop3.POP3Error(b"Wrong number of arguments for this command") from None
        return handler

    def listCapabilities(self) -> list[bytes]:
        caps = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING", b"IMPLEMENTATION Pushmail"]
        if self.session is None:
            if self._login_allowed():
                caps.append(b"USER")
            if self.factory.tls is not None and not self._secure():
                caps.append(b"STLS")
        return caps

    # --- AUTHORIZATION ----------------------------------------------------------------

    def do_STLS(self) -> None:
        if self.factory.tls is None:
            self.failResponse(b"STLS is not offered here (no certificate configured)")
        elif self._secure():
            self.failResponse(b"Already using TLS")
        else:
            self.successResponse(b"Begin TLS negotiation")
            self._userIs = None
            self._link.startTLS(self.factory.tls)

    def do_APOP(self, *args: bytes) -> None:
        self.failResponse(b"APOP is not offered; sign in with USER and PASS and an app password")

    def do_AUTH(self, *args: bytes) -> None:
        self.failResponse(b"AUTH is not offered; sign in with USER and PASS and an app password")

    def do_USER(self, user: bytes, *rest: bytes) -> None:
        if not self._login_allowed():
            self.failResponse(b"[AUTH] Sign-in needs TLS: send STLS first, or use the implicit TLS port")
            return
        self._userIs = b" ".join((user, *rest))
        self.successResponse(b"Send PASS with an app password")

    def do_PASS(self, password: bytes = b"", *words: bytes) -> Any:
        if not self._login_allowed():
            self.failResponse(b"[AUTH] Sign-in needs TLS: send STLS first, or use the implicit TLS port")
            return None
        if self._userIs is None:
            self.failResponse(b"USER required before PASS")
            return None
        login = self._userIs.decode("utf-8", "replace")
        secret = b" ".join((password, *words)).decode("utf-8", "replace")
        self._userIs = None
        d = self._in_thread(_sign_in, login=login, password=secret, client_ip=self._client_ip())
        d.addCallback(self._signed_in)
        d.addErrback(self._internal_error, b"[SYS/TEMP] Sign-in failed; try again later")
        return self._longOperation(d)

    def _signed_in(self, outcome: tuple[str, _Session | None]) -> None:
        answer, session = outcome
        if session is None:
            self.failResponse(answer.encode())
            return
        self.session = session
        self.mbox = True  # Twisted's "signed in" test
        self.successResponse(answer.encode())

    def _internal_error(self, failure: Failure, message: bytes) -> None:
        log.error("POP3 command failed: %s", failure.getTraceback())
        self.failResponse(message)

    # --- TRANSACTION ------------------------------------------------------------------

    def _item(self, number: bytes) -> tuple[int, maildrop.DropItem] | None:
        """The live message with this number, or None after an -ERR naming the problem."""
        assert self.session is not None
        try:
            index = int(number)
        except ValueError:
            self.failResponse(b"Not a message number: " + number[:20])
            return None
        if not 1 <= index <= len(self.session.items):
            self.failResponse(b"No such message")
            return None
        if index in self.session.deleted:
            self.failResponse(b"Message %d already deleted" % index)
            return None
        return index, self.session.items[index - 1]

    def do_STAT(self) -> None:
        assert self.session is not None
        live = [item for _n, item in self.session.live()]
        self.successResponse(b"%d %d" % (len(live), sum(item.size for item in live)))

    def do_LIST(self, number: bytes | None = None) -> Any:
        assert self.session is not None
        if number is not None:
            found = self._item(number)
            if found is not None:
                self.successResponse(b"%d %d" % (found[0], found[1].size))
            return None
        lines = [b"%d %d\r\n" % (n, item.size) for n, item in self.session.live()]
        return self._multiline(b"%d messages" % len(lines), lines)

    def do_UIDL(self, number: bytes | None = None) -> Any:
        assert self.session is not None
        if number is not None:
            found = self._item(number)
            if found is not None:
                self.successResponse(b"%d %s" % (found[0], found[1].uid.encode()))
            return None
        lines = [b"%d %s\r\n" % (n, item.uid.encode()) for n, item in self.session.live()]
        return self._multiline(b"", lines)

    def _multiline(self, first: bytes, lines: list[bytes]) -> defer.Deferred[None]:
        def gen() -> Iterator[bytes]:
            yield pop3.successResponse(first)
            yield from lines
            yield b".\r\n"

        return self._longOperation(self._coiterate(gen()))

    def _message(self, item: maildrop.DropItem) -> defer.Deferred[bytes]:
        """The message's bytes; a body at the sender's is fetched and waited for up to
        ``PUSHMAIL_LEGACY_FETCH_WAIT`` seconds, polling from the reactor so no thread is held meanwhile."""
        assert self.session is not None
        user_id, entry_id, listed = self.session.user_id, item.entry_id, item.size
        clock: Any = self.factory.clock
        deadline = clock.seconds() + settings.PUSHMAIL_LEGACY_FETCH_WAIT

        def wait(asked: maildrop.FetchAsked) -> defer.Deferred[Any]:
            def settled(done: bool) -> Any:
                if done or clock.seconds() >= deadline or self.session is None:
                    return self._in_thread(
                        maildrop.finish_download, user_id=user_id, entry_id=entry_id, listed_size=listed
                    )
                return task.deferLater(clock, maildrop.POLL_SECONDS, wait, asked)

            return self._in_thread(maildrop.fetch_settled, asked=asked).addCallback(settled)

        def started(result: bytes | maildrop.FetchAsked) -> Any:
            return result if isinstance(result, bytes) else wait(result)

        return self._in_thread(
            maildrop.begin_download, user_id=user_id, entry_id=entry_id, listed_size=listed
        ).addCallback(started)

    def _download(self, number: int, item: maildrop.DropItem) -> defer.Deferred[bytes]:
        """The message's bytes: made ahead with the next ones (:func:`maildrop.prepare_downloads`)
        when its body is here, else :meth:`_message`; its read mark is written with the next ones.

        Half-way through a batch the next one is made in a worker thread (:meth:`_prepare_ahead`), so
        a program downloading in order finds its next messages ready rather than waiting for them."""
        assert self.session is not None
        session = self.session

        def ready(prepared: maildrop.Prepared | None) -> bytes | defer.Deferred[bytes]:
            if self.session is not session:
                return b""  # the client left meanwhile
            if prepared is None:
                return self._message(item)
            if prepared.unread:
                session.prepared[item.entry_id] = maildrop.Prepared(prepared.eml, unread=False)
                self._mark_read(item.entry_id)
            if session.ahead is None and session.batch and number >= session.batch[len(session.batch) // 2]:
                self._prepare_ahead(session, session.batch[-1] + 1)
            return prepared.eml

        if item.entry_id in session.prepared:
            return defer.succeed(session.prepared[item.entry_id]).addCallback(ready)
        ahead = session.ahead
        if ahead is not None and item.entry_id in ahead.ids:
            if ahead.prepared is None:
                waited: defer.Deferred[None] = defer.Deferred()
                ahead.waiting.append(waited)
                return waited.addCallback(lambda _: self._download(number, item) if self.session is session else b"")
            session.prepared, session.batch, session.ahead = ahead.prepared, ahead.numbers, None
            return defer.succeed(session.prepared.get(item.entry_id)).addCallback(ready)
        batch = self._batch(session, number)

        def made(prepared: dict[int, maildrop.Prepared]) -> bytes | defer.Deferred[bytes]:
            session.prepared = prepared  # the earlier batch is let go: memory stays bounded
            session.batch = [n for n, _item in batch]
            return ready(prepared.get(item.entry_id))

        items = [following for _n, following in batch]
        d = self._in_thread(maildrop.prepare_downloads, user_id=session.user_id, items=items)
        return d.addCallback(made)

    @staticmethod
    def _batch(session: _Session, number: int) -> list[tuple[int, maildrop.DropItem]]:
        """The live messages from ``number`` on that are downloaded together (at most so many, so big)."""
        batch: list[tuple[int, maildrop.DropItem]] = []
        octets = 0
        for n, following in session.live():
            if n < number:
                continue
            if batch and (len(batch) >= _PREPARE_MESSAGES or octets + following.size > _PREPARE_OCTETS):
                break
            batch.append((n, following))
            octets += following.size
        return batch

    def _prepare_ahead(self, session: _Session, number: int) -> None:
        batch = self._batch(session, number)
        if not batch:
            return
        ahead = _Ahead([n for n, _item in batch], {following.entry_id for _n, following in batch})
        session.ahead = ahead
        items = [following for _n, following in batch]
        d = self._in_thread(maildrop.prepare_downloads, user_id=session.user_id, items=items)

        def failed(failure: Failure) -> None:
            # Nothing made ahead: each of these messages is made when asked for, as without reading ahead.
            log.warning("POP3 read-ahead failed: %s", failure.getTraceback())
            ahead.done({})

        d.addCallbacks(ahead.done, failed)

    def _mark_read(self, entry_id: int) -> None:
        assert self.session is not None
        self.session.to_mark_read.append(entry_id)
        if len(self.session.to_mark_read) >= _READ_MARKS_MAX:
            self._write_read_marks()
        elif self._read_marks_call is None:
            clock: Any = self.factory.clock
            self._read_marks_call = clock.callLater(_READ_MARKS_SECONDS, self._write_read_marks)

    _read_marks_call: Any = None

    def _write_read_marks(self) -> defer.Deferred[None]:
        """Mark what was downloaded read, in one batch; the Deferred fires when it is written."""
        if self._read_marks_call is not None and self._read_marks_call.active():
            self._read_marks_call.cancel()
        self._read_marks_call = None
        session = self.session
        if session is None or not session.to_mark_read:
            return defer.succeed(None)
        ids, session.to_mark_read = session.to_mark_read, []
        d = self._in_thread(maildrop.mark_downloaded, user_id=session.user_id, entry_ids=ids)
        return d.addErrback(lambda failure: log.error("POP3 read marks failed: %s", failure.getTraceback()))

    def do_RETR(self, number: bytes) -> Any:
        found = self._item(number)
        if found is None:
            return None
        d = self._download(*found)
        d.addCallback(lambda eml: self._send_message(eml, b"%d octets" % len(eml)))
        d.addErrback(self._download_failed)
        return self._longOperation(d)

    def do_TOP(self, number: bytes, lines: bytes) -> Any:
        try:
            count = int(lines)
            if count < 0:
                raise ValueError
        except ValueError:
            self.failResponse(b"Not a line count: " + lines[:20])
            return None
        found = self._item(number)
        if found is None:
            return None
        assert self.session is not None
        if count == 0:
            d = self._in_thread(maildrop.headers_only, user_id=self.session.user_id, entry_id=found[1].entry_id)
        else:
            d = self._download(*found)
        d.addCallback(lambda eml: self._send_message(maildrop.on_the_wire(_top(eml, count)), b"Top of message follows"))
        d.addErrback(self._download_failed)
        return self._longOperation(d)

    def _download_failed(self, failure: Failure) -> None:
        if failure.check(maildrop.BodyNotHereYet):
            self.failResponse(b"[SYS/TEMP] The sender's server has not sent this message yet; try again later")
        elif failure.check(LookupError):
            self.failResponse(b"This message was removed meanwhile")
        else:
            self._internal_error(failure, b"[SYS/TEMP] The message could not be read; try again later")

    def _send_message(self, eml: bytes, first: bytes) -> defer.Deferred[None]:
        if self.session is None:  # the client left while the message was being fetched
            return defer.succeed(None)
        self.successResponse(first)
        # Dot-stuffing (RFC 1939 §3) on the whole message, so no line start is missed at a chunk's edge;
        # ``eml`` already has CRLF line ends and ends with one (maildrop.on_the_wire).
        stuffed = (b"\r\n" + eml).replace(b"\r\n.", b"\r\n..")[2:] + b".\r\n"
        if len(stuffed) <= _WRITE_AT_ONCE:
            self._link.write(stuffed)
            return defer.succeed(None)
        sender = basic.FileSender()  # a big message goes out as the client reads it
        d: defer.Deferred[bytes] = sender.beginFileTransfer(BytesIO(stuffed), self.transport)
        return d.addCallback(lambda _last: None)

    def do_DELE(self, number: bytes) -> None:
        found = self._item(number)
        if found is not None:
            assert self.session is not None
            self.session.deleted.add(found[0])
            self.successResponse(b"Message %d deleted" % found[0])

    def do_RSET(self) -> None:
        assert self.session is not None
        self.session.deleted.clear()
        self.successResponse(b"%d messages" % len(self.session.items))

    def do_NOOP(self) -> None:
        self.successResponse(b"")

    def do_QUIT(self) -> Any:
        session = self.session
        if session is None:
            self.successResponse(b"Bye")
            self._link.loseConnection()
            return None
        marked = self._write_read_marks()
        if not session.deleted:

            def bye(_: None) -> None:
                self.successResponse(b"Bye")
                self._link.loseConnection()

            return self._longOperation(marked.addCallback(bye))
        ids = [session.items[n - 1].entry_id for n in sorted(session.deleted)]
        d = marked.addCallback(lambda _: self._in_thread(maildrop.trash, user_id=session.user_id, entry_ids=ids))

        def done(moved: int) -> None:
            self.successResponse(b"%d messages moved to Trash" % moved)
            self._link.loseConnection()

        def failed(failure: Failure) -> None:
            self._internal_error(failure, b"[SYS/TEMP] Deleting failed; the messages stay in the Inbox")
            self._link.loseConnection()

        d.addCallbacks(done, failed)
        return self._longOperation(d)


def _top(eml: bytes, count: int) -> bytes:
    """The header block and the first ``count`` lines of the body (RFC 1939 TOP)."""
    eml = eml.replace(b"\r\n", b"\n")
    head, sep, body = eml.partition(b"\n\n")
    if count == 0 or not sep:
        return head + b"\n\n"
    return head + b"\n\n" + b"".join(body.splitlines(keepends=True)[:count])


def _sign_in(*, login: str, password: str, client_ip: str) -> tuple[str, _Session | None]:
    """In a worker thread: the answer to PASS, and the session with its maildrop when signed in."""
    outcome = check_mail_login(login=login, password=password, client_ip=client_ip)
    if outcome.throttled:
        log.warning("POP3 sign-in refused: too many failures (client %s)", client_ip)
        return "[SYS/TEMP] Too many failed sign-ins; try again later", None
    if outcome.user is None:
        log.warning("POP3 sign-in failed from %s", client_ip)
        return "[AUTH] Invalid login", None
    items = maildrop.list_maildrop(user_id=outcome.user.pk)
    return f"{len(items)} messages", _Session(outcome.user.pk, items)


class POP3Factory(Factory):
    """Makes a :class:`PushmailPOP3` per connection; ``tls`` is the context STLS switches to (None: no STLS),
    ``clock`` the reactor that times a download's wait for its fetch."""

    protocol = PushmailPOP3  # type: ignore[assignment]
    noisy = False

    def __init__(self, *, tls: ContextFactory | None, clock: IReactorTime) -> None:
        self.tls = tls
        self.clock = clock
