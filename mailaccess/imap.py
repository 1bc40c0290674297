"""The IMAP server (IMAP4rev1, RFC 3501, with IDLE, UIDPLUS, MOVE, SPECIAL-USE, ENABLE, UNSELECT).

Twisted's ``twisted.mail.imap4.IMAP4Server`` reads the lines and literals,
parses the arguments (sequence sets, FETCH attributes, flag lists) and writes
the FETCH answers (ENVELOPE, BODYSTRUCTURE, BODY[...] sections). This module
answers the commands from mailaccess.imapstore, whose functions use the Django
ORM and so run in the reactor's thread pool (``deferToThread``). Where
Twisted's server has no command (MOVE of RFC 6851, ENABLE of RFC 5161,
UNSELECT of RFC 3691, UID EXPUNGE of RFC 4315) or answers without the
response codes of UIDPLUS, the command is added or overridden here as a method
of the same shape as Twisted's own (``select_MOVE = (do_MOVE, arg_seqset, ...)``).

What a mail program is told:

- ``LOGIN`` with the address and an app password. Over a connection that is
  neither TLS nor from loopback: ``LOGINDISABLED`` is announced and ``LOGIN``
  answers ``NO [PRIVACYREQUIRED]``. A wrong password and an unknown address: the
  same ``NO [AUTHENTICATIONFAILED]``; past the failure limit ``NO [UNAVAILABLE]``.
- ``FETCH`` of FLAGS, UID, ENVELOPE, RFC822.SIZE, INTERNALDATE or header fields
  answers from the notification alone. ``BODY[]``, ``BODY[TEXT]``, a part or
  ``BODYSTRUCTURE`` of a body still at the sender's fetches it and waits up to
  ``PUSHMAIL_LEGACY_FETCH_WAIT`` seconds; if the sender does not answer, the
  others are given and the command ends ``NO [UNAVAILABLE]`` (RFC 5530).
- ``IDLE`` looks for changes every ``PUSHMAIL_IMAP_IDLE_POLL`` seconds and
  announces them (EXISTS, EXPUNGE, FETCH FLAGS); so do NOOP and CHECK.
- A literal larger than ``PUSHMAIL_IMAP_MAX_LITERAL`` (an APPEND) or 4 KiB (any
  other string) is refused before it is read; a command line longer than 64 KiB
  is skipped as it comes (never held in memory) and answered ``BAD``.
"""

from __future__ import annotations

import bisect
import email
import email.policy
import email.utils
import logging
from collections.abc import Callable
from datetime import datetime
from io import BytesIO
from typing import Any, TypeVar

from django.conf import settings
from django.db import close_old_connections
from twisted.internet import defer, interfaces, task
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.ssl import ContextFactory
from twisted.internet.threads import deferToThread
from twisted.mail import imap4
from twisted.python.failure import Failure
from zope.interface import implementer

from accounts.mail_logins import check_mail_login, plaintext_auth_allowed

from . import imapstore
from .imapenvelope import Part as _Part
from .imapenvelope import ascii_value as _ascii
from .imapenvelope import envelope as _envelope
from .imapenvelope import head_fields as _head_fields
from .imapstore import Box, Loaded, Row, Snapshot

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["IMAPFactory", "PushmailIMAP"]

# Messages loaded per round trip to the thread pool: headers are small, whole messages are not.
_HEADER_CHUNK = 1000
_BODY_CHUNK = 20
# Commands a client may send ahead while one is still being answered.
_MAX_PIPELINED = 100
_MESSAGE_FLAGS = b"(\\Seen \\Flagged \\Deleted \\Answered \\Draft)"
_PERMANENT_FLAGS = b"(\\Seen \\Flagged \\Deleted)"
# FETCH items answered from what the notification said; anything else needs the message itself.
_FROM_NOTIFICATION = {"envelope", "internaldate", "rfc822size", "rfc822header"}
# FETCH items a listing asks for, answered here in one write per chunk (see _listing) rather than
# through Twisted's spewMessage, which takes a turn of the reactor per item of every message.
_LISTING = {"flags", "uid", "envelope", "internaldate", "rfc822size"}
# A listing of these only is answered from the envelopes kept for it (see _envelope_listing), this many
# messages per round trip to the thread pool.
_ENVELOPES = {"flags", "uid", "envelope"}
_ENVELOPE_CHUNK = 5000


@implementer(imap4.IMessageFile)
class _Message(_Part):
    """A message of the selected mailbox: its row (UID, flags) and what was loaded of it."""

    def __init__(self, row: Row, loaded: Loaded | None, deleted: bool) -> None:
        data = loaded.data if loaded is not None else b"\r\n"
        super().__init__(email.message_from_bytes(data, policy=email.policy.compat32), data)
        self.row = row
        self.loaded = loaded
        self.deleted = deleted

    def getUID(self) -> int:  # noqa: N802
        return self.row.uid

    def getFlags(self) -> list[str]:  # noqa: N802
        return _flags(self.row, self.deleted)

    def getInternalDate(self) -> str:  # noqa: N802
        when = self.loaded.internal_date if self.loaded is not None else datetime.now().astimezone()
        return email.utils.format_datetime(when)

    def getSize(self) -> int:  # noqa: N802
        return self.loaded.size if self.loaded is not None else 0

    def open(self) -> BytesIO:
        """IMessageFile: the whole message, as its .eml download."""
        return BytesIO(self._raw)


class _Listed:
    """A message as a listing (FLAGS, UID, ENVELOPE, INTERNALDATE, RFC822.SIZE) needs it: its row and
    header block, never parsed by the email package unless the block is unusual (see _head_fields)."""

    def __init__(self, row: Row, loaded: Loaded | None, deleted: bool) -> None:
        self.row = row
        self.loaded = loaded
        self.deleted = deleted

    def getUID(self) -> int:  # noqa: N802 - Twisted's interface
        return self.row.uid

    def getFlags(self) -> list[str]:  # noqa: N802
        return _flags(self.row, self.deleted)

    def getInternalDate(self) -> str:  # noqa: N802
        when = self.loaded.internal_date if self.loaded is not None else datetime.now().astimezone()
        return email.utils.format_datetime(when)

    def getSize(self) -> int:  # noqa: N802
        return self.loaded.size if self.loaded is not None else 0

    def envelope(self) -> tuple[Any, ...]:
        head = self.loaded.data if self.loaded is not None else b"\r\n"
        fields = _head_fields(head)
        if fields is None:
            return imap4.getEnvelope(_Message(self.row, self.loaded, self.deleted))
        return _envelope(fields)


def _flags(row: Row, deleted: bool) -> list[str]:
    flags = []
    if row.seen:
        flags.append("\\Seen")
    if row.flagged:
        flags.append("\\Flagged")
    if deleted:
        flags.append("\\Deleted")
    return flags


class _Selected:
    """The selected mailbox as this session knows it: the rows, in order (sequence number = index + 1),
    and the messages this session marked ``\\Deleted`` (kept until EXPUNGE, CLOSE or the end of the session)."""

    def __init__(self, box: Box, snapshot: Snapshot, writeable: bool) -> None:
        self.box = box
        self.writeable = writeable
        self.deleted: set[int] = set()
        self.update(snapshot)

    def update(self, snapshot: Snapshot) -> None:
        self.uid_validity = snapshot.uid_validity
        self.uid_next = snapshot.uid_next
        self.rows = snapshot.rows
        self.uids = [row.uid for row in self.rows]
        self.deleted &= set(self.uids)

    def resolve(self, messages: imap4.MessageSet, uid: bool) -> list[tuple[int, Row]]:
        """The (sequence number, row) pairs a sequence set or UID set names, in order, each once.

        The ranges are merged first, so a set of a million overlapping ranges costs no more than one.
        """
        if not self.rows:
            return []
        messages.last = self.uids[-1] if uid else len(self.rows)
        spans = sorted((min(low, high), max(low, high)) for low, high in messages.ranges)
        picked: list[tuple[int, int]] = []
        for low, high in spans:
            if uid:
                start, end = bisect.bisect_left(self.uids, low), bisect.bisect_right(self.uids, high)
            else:
                start, end = max(low, 1) - 1, min(high, len(self.rows))
            if start >= end:
                continue
            if picked and start <= picked[-1][1]:
                picked[-1] = (picked[-1][0], max(picked[-1][1], end))
            else:
                picked.append((start, end))
        return [(index + 1, self.rows[index]) for start, end in picked for index in range(start, end)]

    def unseen_first(self) -> int | None:
        return next((n for n, row in enumerate(self.rows, start=1) if not row.seen), None)

    def changes(self, snapshot: Snapshot) -> list[bytes]:
        """The untagged answers that bring a client from this state to ``snapshot`` (then taken as current)."""
        now = {row.uid: row for row in snapshot.rows}
        lines = [b"%d EXPUNGE" % n for n in range(len(self.rows), 0, -1) if self.rows[n - 1].uid not in now]
        kept = [row for row in self.rows if row.uid in now]
        for n, row in enumerate(kept, start=1):
            new = now[row.uid]
            if (new.seen, new.flagged) != (row.seen, row.flagged):
                flags = " ".join(_flags(new, row.uid in self.deleted)).encode()
                lines.append(b"%d FETCH (FLAGS (%s) UID %d)" % (n, flags, row.uid))
        if len(snapshot.rows) != len(kept):  # new messages (they always come after the kept ones)
            lines.append(b"%d EXISTS" % len(snapshot.rows))
        self.update(snapshot)
        return lines

    # Twisted's server calls these on the selected mailbox (listeners, and a timed-out session).
    def addListener(self, listener: object) -> None:  # noqa: N802
        pass

    def removeListener(self, listener: object) -> None:  # noqa: N802
        pass


def _uid_set(uids: list[int]) -> bytes:
    """A UID list in the compact form of RFC 4315 (``3:5,9``)."""
    spans: list[list[int]] = []
    for uid in uids:
        if spans and uid == spans[-1][1] + 1:
            spans[-1][1] = uid
        else:
            spans.append([uid, uid])
    return b",".join(b"%d" % low if low == high else b"%d:%d" % (low, high) for low, high in spans)


def _needs(query: list[Any]) -> tuple[str, bool]:
    """What a FETCH needs: ``flags`` (the rows), ``headers`` (the notification) or ``message`` (the body),
    and whether it may mark the messages read (a BODY[...] that is not BODY.PEEK, RFC822, RFC822.TEXT)."""
    level, marks = "flags", False
    for part in query:
        kind = part.type
        if kind in ("flags", "uid"):
            continue
        if kind in _FROM_NOTIFICATION:
            level = "headers" if level == "flags" else level
        elif kind == "body" and part.header is not None and not part.part and not part.text and not part.mime:
            level = "headers" if level == "flags" else level
            marks = marks or not part.peek
        else:
            level = "message"
            marks = marks or (kind in ("rfc822", "rfc822text")) or (kind == "body" and not part.peek)
    return level, marks


class PushmailIMAP(imap4.IMAP4Server):
    """One IMAP connection."""

    IDENT = b"Pushmail IMAP4rev1 ready"
    MAX_LENGTH = 65536  # a command line; longer ones are skipped and refused (lineLengthExceeded)
    factory: IMAPFactory
    user_id: int | None = None
    selected: _Selected | None = None
    _idle_loop: task.LoopingCall | None = None
    _polling = False

    def __init__(self, factory: IMAPFactory) -> None:
        super().__init__(contextFactory=factory.tls)
        self.factory = factory

    # --- plumbing ---------------------------------------------------------------------

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self._stop_idle()
        self.selected = None
        self.mbox = None
        super().connectionLost(reason)

    _skipping: bytes | None = None

    def lineLengthExceeded(self, line: bytes) -> Any:  # noqa: N802
        """Skip the rest of an over-long command line without keeping it, then refuse it: the session goes on."""
        self._skipping = line.split(b" ", 1)[0][:64] or b"*"
        self.setRawMode()
        return self._skip(line)

    def _skip(self, data: bytes) -> Any:
        end = data.find(b"\n")
        if end < 0:
            return None  # still inside the long line: dropped
        tag, self._skipping = self._skipping, None
        self.sendBadResponse(tag, b"Command line too long (at most %d octets)" % self.MAX_LENGTH)
        return self.setLineMode(data[end + 1 :])

    def rawDataReceived(self, data: bytes) -> Any:  # noqa: N802
        if self._skipping is not None:
            return self._skip(data)
        return super().rawDataReceived(data)

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        if self.blocked is not None and len(self.blocked) >= _MAX_PIPELINED:
            self.sendLine(b"* BYE Too many commands sent ahead")
            self._link.loseConnection()
            return
        super().lineReceived(line)

    @property
    def _link(self) -> Any:
        """The transport (Twisted types it loosely)."""
        return self.transport

    def _in_thread(self, func: Callable[..., T], /, **kwargs: Any) -> defer.Deferred[T]:
        """Run ``func`` in the thread pool, on a usable database connection (one per thread, reused)."""

        def run() -> T:
            close_old_connections()
            return func(**kwargs)

        return deferToThread(run)

    def _hold(self, tag: bytes, work: defer.Deferred[Any]) -> None:
        """Queue the commands that come while ``work`` answers one (they are answered in order after it)."""
        if self.blocked is None:
            self.blocked = []

        def failed(failure: Failure) -> None:
            log.error("IMAP command failed: %s", failure.getTraceback())
            self.sendNegativeResponse(tag, b"[SERVERBUG] The command failed; try again later")

        work.addErrback(failed)
        work.addBoth(lambda _: self._unblock())

    def _secure(self) -> bool:
        return self.startedTLS or interfaces.ISSLTransport.providedBy(self.transport)

    def _client_ip(self) -> str:
        return str(getattr(self._link.getPeer(), "host", ""))

    def _login_allowed(self) -> bool:
        return self._secure() or plaintext_auth_allowed(self._client_ip())

    def capabilities(self) -> dict[bytes, Any]:
        caps: dict[bytes, Any] = {}
        if self.state == "unauth":
            if self.ctx is not None and self.canStartTLS and not self._secure():
                caps[b"STARTTLS"] = None
            if not self._login_allowed():
                caps[b"LOGINDISABLED"] = None
        for name in (b"IDLE", b"UIDPLUS", b"MOVE", b"SPECIAL-USE", b"ENABLE", b"UNSELECT", b"NAMESPACE"):
            caps[name] = None
        return caps

    def lookupCommand(self, cmd: bytes) -> Any:  # noqa: N802
        found = super().lookupCommand(cmd)
        if found is None and self.state in ("unauth", "auth"):
            name = cmd.decode("ascii", "replace").upper()
            if self.state == "unauth" and (hasattr(self, f"auth_{name}") or hasattr(self, f"select_{name}")):
                return (self._refuse, b"Sign in first (LOGIN)")
            if self.state == "auth" and hasattr(self, f"select_{name}"):
                return (self._refuse, b"Select a mailbox first (SELECT)")
        return found

    def _refuse(self, tag: bytes, why: bytes, *rest: Any, **kw: Any) -> None:
        self.sendBadResponse(tag, why)

    def dispatchCommand(self, tag: bytes, cmd: bytes, rest: bytes | None, uid: Any = None) -> None:  # noqa: N802
        found = self.lookupCommand(cmd)
        if found is not None and found[0] == self._refuse:
            self._refuse(tag, found[1])
            return
        super().dispatchCommand(tag, cmd, rest, uid)

    def arg_literal(self, line: bytes) -> Any:
        """A literal (APPEND's message): refused before it is read when it claims more than the limit."""
        if line[:1] == b"{" and line[-1:] == b"}":
            try:
                size = int(line[1:-1])
            except ValueError:
                size = 0
            if size > settings.PUSHMAIL_IMAP_MAX_LITERAL:
                raise imap4.IllegalClientResponse(
                    f"[TOOBIG] A message of {size} octets is over the limit of {settings.PUSHMAIL_IMAP_MAX_LITERAL}"
                )
        return super().arg_literal(line)

    # --- not authenticated --------------------------------------------------------------

    def do_AUTHENTICATE(self, tag: bytes, args: bytes) -> None:  # noqa: N802
        self.sendNegativeResponse(tag, b"AUTHENTICATE is not offered; sign in with LOGIN and an app password")

    unauth_AUTHENTICATE: Any = (do_AUTHENTICATE, imap4.IMAP4Server.arg_atom)

    def do_LOGIN(self, tag: bytes, user: bytes, passwd: bytes) -> None:  # noqa: N802
        if not self._login_allowed():
            self.sendNegativeResponse(
                tag, b"[PRIVACYREQUIRED] Sign-in needs TLS: send STARTTLS first, or use the implicit TLS port"
            )
            return
        d = self._in_thread(
            _sign_in,
            login=user.decode("utf-8", "replace"),
            password=passwd.decode("utf-8", "replace"),
            client_ip=self._client_ip(),
        )
        d.addCallback(self._signed_in, tag)
        self._hold(tag, d)

    unauth_LOGIN: Any = (do_LOGIN, imap4.IMAP4Server.arg_astring, imap4.IMAP4Server.arg_finalastring)

    def _signed_in(self, outcome: tuple[bytes, int | None], tag: bytes) -> None:
        answer, user_id = outcome
        if user_id is None:
            self.sendNegativeResponse(tag, answer)
            return
        self.user_id = user_id
        self.account = True  # Twisted's "signed in" test
        self.state = "auth"
        self.setTimeout(self.POSTAUTH_TIMEOUT)
        self.sendPositiveResponse(tag, b"[CAPABILITY " + b" ".join(self.listCapabilities()) + b"] " + answer)

    # --- authenticated ------------------------------------------------------------------

    def do_ENABLE(self, tag: bytes, line: bytes) -> None:  # noqa: N802
        # RFC 5161: none of the extensions ENABLE can switch on (CONDSTORE, UTF8=ACCEPT) is offered.
        self.sendUntaggedResponse(b"ENABLED")
        self.sendPositiveResponse(tag, b"ENABLE completed")

    auth_ENABLE: Any = (do_ENABLE, imap4.IMAP4Server.arg_line)
    select_ENABLE: Any = auth_ENABLE

    def do_NAMESPACE(self, tag: bytes) -> None:  # noqa: N802
        self.sendUntaggedResponse(b'NAMESPACE (("" "/")) NIL NIL')
        self.sendPositiveResponse(tag, b"NAMESPACE completed")

    auth_NAMESPACE: Any = (do_NAMESPACE,)
    select_NAMESPACE: Any = auth_NAMESPACE

    def _listWork(self, tag: bytes, ref: bytes, mbox: bytes, sub: int, cmdName: bytes) -> None:  # noqa: N802,N803
        pattern = imap4._parseMbox(ref) + imap4._parseMbox(mbox)
        if not pattern:  # RFC 3501 §6.3.8: the hierarchy delimiter
            self.sendUntaggedResponse(cmdName + b' (\\Noselect) "/" ""')
            self.sendPositiveResponse(tag, cmdName + b" completed")
            return
        matcher = imap4.wildcardToRegexp(pattern, "/")
        assert self.user_id is not None
        d = self._in_thread(imapstore.list_boxes, user_id=self.user_id)

        def listed(boxes: list[Box]) -> None:
            for box in boxes:
                if matcher.match(box.name) or (box.name == "INBOX" and matcher.match("inbox")):
                    name = imap4._quote(box.name.encode("imap4-utf-7"))
                    self.sendUntaggedResponse(b'%s (%s) "/" %s' % (cmdName, " ".join(box.attributes).encode(), name))
            self.sendPositiveResponse(tag, cmdName + b" completed")

        self._hold(tag, d.addCallback(listed))

    def arg_list_reference(self, line: bytes) -> Any:
        """LIST's reference, after the selection options of RFC 5258 (``LIST (SPECIAL-USE) "" "*"``),
        which are accepted and ignored: the special-use attributes are always listed."""
        if line[:1] == b"(":
            end = line.find(b")")
            if end < 0:
                raise imap4.IllegalClientResponse("Mismatched parenthesis")
            line = line[end + 1 :].lstrip()
        return self.arg_astring(line)

    def arg_list_pattern(self, line: bytes) -> Any:
        """LIST's mailbox pattern, with RFC 5258's return options (``RETURN (SPECIAL-USE)``) ignored."""
        parsed = self.arg_astring(line)
        if isinstance(parsed, tuple) and parsed[1].strip().upper().startswith(b"RETURN"):
            return parsed[0], b""
        return parsed

    auth_LIST: Any = (_listWork, arg_list_reference, arg_list_pattern, 0, b"LIST")
    select_LIST: Any = auth_LIST
    auth_LSUB: Any = (_listWork, imap4.IMAP4Server.arg_astring, imap4.IMAP4Server.arg_astring, 1, b"LSUB")
    select_LSUB: Any = auth_LSUB

    def _box(self, name: bytes) -> defer.Deferred[Box | None]:
        assert self.user_id is not None
        return self._in_thread(imapstore.find_box, user_id=self.user_id, name=imap4._parseMbox(name))

    def _no_such(self, tag: bytes, name: bytes) -> None:
        self.sendNegativeResponse(tag, b"[NONEXISTENT] No mailbox called " + imap4._quote(name))

    def _selectWork(self, tag: bytes, name: bytes, rw: int, cmdName: bytes) -> None:  # noqa: N802,N803
        self._unselect()
        user_id = self.user_id
        assert user_id is not None

        def found(box: Box | None) -> Any:
            if box is None:
                self._no_such(tag, name)
                return None
            return self._in_thread(imapstore.sync, user_id=user_id, box=box).addCallback(opened, box)

        def opened(snapshot: Snapshot, box: Box) -> None:
            self.selected = _Selected(box, snapshot, writeable=bool(rw))
            self.mbox = self.selected
            self.state = "select"
            self.sendUntaggedResponse(b"FLAGS " + _MESSAGE_FLAGS)
            self.sendPositiveResponse(None, b"[PERMANENTFLAGS " + _PERMANENT_FLAGS + b"] Flags kept")
            self.sendUntaggedResponse(b"%d EXISTS" % len(snapshot.rows))
            self.sendUntaggedResponse(b"0 RECENT")
            unseen = self.selected.unseen_first()
            if unseen is not None:
                self.sendPositiveResponse(None, b"[UNSEEN %d] First unseen" % unseen)
            self.sendPositiveResponse(None, b"[UIDVALIDITY %d] UIDs valid" % snapshot.uid_validity)
            self.sendPositiveResponse(None, b"[UIDNEXT %d] Predicted next UID" % snapshot.uid_next)
            mode = b"READ-WRITE" if rw else b"READ-ONLY"
            self.sendPositiveResponse(tag, b"[" + mode + b"] " + cmdName + b" completed")

        self._hold(tag, self._box(name).addCallback(found))

    auth_SELECT: Any = (_selectWork, imap4.IMAP4Server.arg_astring, 1, b"SELECT")
    select_SELECT: Any = auth_SELECT
    auth_EXAMINE: Any = (_selectWork, imap4.IMAP4Server.arg_astring, 0, b"EXAMINE")
    select_EXAMINE: Any = auth_EXAMINE

    def _unselect(self) -> None:
        self.selected = None
        self.mbox = None
        if self.state == "select":
            self.state = "auth"

    def do_STATUS(self, tag: bytes, mailbox: bytes, names: list[bytes]) -> None:  # noqa: N802
        user_id = self.user_id
        assert user_id is not None

        def found(box: Box | None) -> Any:
            if box is None:
                self._no_such(tag, mailbox)
                return None
            return self._in_thread(imapstore.sync, user_id=user_id, box=box).addCallback(status, box)

        def status(snapshot: Snapshot, box: Box) -> None:
            values = {
                b"MESSAGES": len(snapshot.rows),
                b"RECENT": 0,
                b"UIDNEXT": snapshot.uid_next,
                b"UIDVALIDITY": snapshot.uid_validity,
                b"UNSEEN": sum(1 for row in snapshot.rows if not row.seen),
            }
            asked = [name.upper() for name in names if name.upper() in values]
            items = b" ".join(b"%s %d" % (name, values[name]) for name in asked)
            self.sendUntaggedResponse(b"STATUS %s (%s)" % (imap4._quote(box.name.encode("imap4-utf-7")), items))
            self.sendPositiveResponse(tag, b"STATUS completed")

        self._hold(tag, self._box(mailbox).addCallback(found))

    auth_STATUS: Any = (do_STATUS, imap4.IMAP4Server.arg_astring, imap4.IMAP4Server.arg_plist)
    select_STATUS: Any = auth_STATUS

    def _label_work(self, tag: bytes, func: Callable[..., None], done: bytes, **names: bytes) -> None:
        assert self.user_id is not None
        d = self._in_thread(func, user_id=self.user_id, **{k: imap4._parseMbox(v) for k, v in names.items()})

        def failed(failure: Failure) -> None:
            if failure.check(imapstore.CannotDo):
                self.sendNegativeResponse(tag, b"[CANNOT] " + _ascii(str(failure.value)).encode())
            elif failure.check(LookupError):
                self._no_such(tag, next(iter(names.values())))
            else:
                failure.raiseException()

        d.addCallbacks(lambda _: self.sendPositiveResponse(tag, done), failed)
        self._hold(tag, d)

    def do_CREATE(self, tag: bytes, name: bytes) -> None:  # noqa: N802
        self._label_work(tag, imapstore.create_label, b"CREATE completed (a label)", name=name.rstrip(b"/"))

    auth_CREATE: Any = (do_CREATE, imap4.IMAP4Server.arg_finalastring)
    select_CREATE: Any = auth_CREATE

    def do_DELETE(self, tag: bytes, name: bytes) -> None:  # noqa: N802
        self._label_work(tag, imapstore.delete_label, b"DELETE completed", name=name)

    auth_DELETE: Any = (do_DELETE, imap4.IMAP4Server.arg_finalastring)
    select_DELETE: Any = auth_DELETE

    def do_RENAME(self, tag: bytes, oldname: bytes, newname: bytes) -> None:  # noqa: N802
        self._label_work(tag, imapstore.rename_label, b"RENAME completed", old=oldname, new=newname)

    auth_RENAME: Any = (do_RENAME, imap4.IMAP4Server.arg_astring, imap4.IMAP4Server.arg_finalastring)
    select_RENAME: Any = auth_RENAME

    def do_SUBSCRIBE(self, tag: bytes, name: bytes) -> None:  # noqa: N802
        self.sendPositiveResponse(tag, b"SUBSCRIBE completed (every mailbox is subscribed)")

    auth_SUBSCRIBE: Any = (do_SUBSCRIBE, imap4.IMAP4Server.arg_finalastring)
    select_SUBSCRIBE: Any = auth_SUBSCRIBE
    auth_UNSUBSCRIBE: Any = auth_SUBSCRIBE
    select_UNSUBSCRIBE: Any = auth_SUBSCRIBE

    def do_APPEND(self, tag: bytes, mailbox: bytes, flags: Any, date: Any, message: Any) -> None:  # noqa: N802
        user_id = self.user_id
        assert user_id is not None
        data = message.read(settings.PUSHMAIL_IMAP_MAX_LITERAL + 1)

        def found(box: Box | None) -> Any:
            if box is None:
                self.sendNegativeResponse(tag, b"[TRYCREATE] No mailbox called " + imap4._quote(mailbox))
                return None
            d = self._in_thread(imapstore.append, user_id=user_id, box=box, data=data)
            return d.addCallbacks(appended, refused, callbackArgs=(box,))

        def appended(uid: int, box: Box) -> Any:
            assert self.user_id is not None
            validity = self._in_thread(imapstore.sync, user_id=user_id, box=box)
            return validity.addCallback(
                lambda snap: self.sendPositiveResponse(
                    tag, b"[APPENDUID %d %d] APPEND completed" % (snap.uid_validity, uid)
                )
            )

        def refused(failure: Failure) -> None:
            failure.trap(imapstore.CannotDo)
            self.sendNegativeResponse(tag, b"[CANNOT] " + _ascii(str(failure.value)).encode())

        self._hold(tag, self._box(mailbox).addCallback(found))

    auth_APPEND: Any = (
        do_APPEND,
        imap4.IMAP4Server.arg_astring,
        imap4.IMAP4Server.opt_plist,
        imap4.IMAP4Server.opt_datetime,
        arg_literal,
    )
    select_APPEND: Any = auth_APPEND

    # --- IDLE, NOOP, CHECK: announcing changes ------------------------------------------

    def _refresh(self, *, idling: bool = False) -> defer.Deferred[None]:
        """Compare the selected mailbox with the database and announce what changed (during IDLE: only
        while still idling, never in the middle of the next command's answer)."""
        selected, user_id = self.selected, self.user_id
        if selected is None or user_id is None:
            return defer.succeed(None)

        def announce(snapshot: Snapshot) -> None:
            if idling and self.parseState != "idle":
                return
            if self.selected is selected:
                for line in selected.changes(snapshot):
                    self.sendUntaggedResponse(line)

        return self._in_thread(imapstore.sync, user_id=user_id, box=selected.box).addCallback(announce)

    def do_NOOP(self, tag: bytes) -> None:  # noqa: N802
        if self.state != "select":
            self.sendPositiveResponse(tag, b"NOOP completed")
            return
        self._hold(tag, self._refresh().addCallback(lambda _: self.sendPositiveResponse(tag, b"NOOP completed")))

    unauth_NOOP: Any = (do_NOOP,)
    auth_NOOP: Any = unauth_NOOP
    select_NOOP: Any = unauth_NOOP

    def do_CHECK(self, tag: bytes) -> None:  # noqa: N802
        self._hold(tag, self._refresh().addCallback(lambda _: self.sendPositiveResponse(tag, b"CHECK completed")))

    select_CHECK: Any = (do_CHECK,)

    def do_IDLE(self, tag: bytes) -> None:  # noqa: N802
        super().do_IDLE(tag)
        self._idle_loop = task.LoopingCall(self._idle_poll)
        self._idle_loop.clock = self.factory.clock
        self._idle_loop.start(settings.PUSHMAIL_IMAP_IDLE_POLL, now=True)

    select_IDLE: Any = (do_IDLE,)
    auth_IDLE: Any = select_IDLE

    def _idle_poll(self) -> None:
        if self._polling:
            return
        self._polling = True

        def done(result: Any) -> None:
            self._polling = False
            if isinstance(result, Failure):
                log.error("IMAP IDLE poll failed: %s", result.getTraceback())

        self._refresh(idling=True).addBoth(done)

    def _stop_idle(self) -> None:
        if self._idle_loop is not None and self._idle_loop.running:
            self._idle_loop.stop()
        self._idle_loop = None

    def parse_idle(self, *args: bytes) -> None:
        self._stop_idle()
        line = args[0] if args else b""
        if line.strip().upper() != b"DONE":
            self.parseState = self.lastState
            del self.lastState
            self.sendBadResponse(self.parseTag, b"IDLE ends with DONE")
            del self.parseTag
            return
        super().parse_idle(*args)

    # --- selected: FETCH ----------------------------------------------------------------

    def do_FETCH(self, tag: bytes, messages: imap4.MessageSet, query: list[Any], uid: int = 0) -> None:  # noqa: N802
        selected = self.selected
        assert selected is not None
        if not query:
            self.sendPositiveResponse(tag, b"FETCH completed")
            return
        wanted = selected.resolve(messages, bool(uid))
        if uid and not any(part.type == "uid" for part in query):
            query = [*query, imap4._FetchParser.UID()]
        self._oldTimeout = self.setTimeout(None)
        d = defer.ensureDeferred(self._fetch(tag, selected, wanted, query))
        d.addBoth(self._fetched)
        self._hold(tag, d)

    select_FETCH: Any = (do_FETCH, imap4.IMAP4Server.arg_seqset, imap4.IMAP4Server.arg_fetchatt)

    def _fetched(self, result: Any) -> Any:
        self.setTimeout(self._oldTimeout)
        return result

    async def _fetch(self, tag: bytes, selected: _Selected, wanted: list[tuple[int, Row]], query: list[Any]) -> None:
        level, marks = _needs(query)
        marks = marks and selected.writeable
        user_id = self.user_id
        assert user_id is not None
        unavailable = 0
        chunk_size = _BODY_CHUNK if level == "message" else _HEADER_CHUNK
        listing = all(part.type in _LISTING for part in query)
        if listing and {part.type for part in query} <= _ENVELOPES:
            await self._envelope_listing(selected, wanted, query)
            self.sendPositiveResponse(tag, b"FETCH completed")
            return
        for start in range(0, len(wanted), chunk_size):
            chunk = wanted[start : start + chunk_size]
            refs = [row.ref for _n, row in chunk]
            loaded: dict[str, Loaded | None]
            if level == "flags":
                loaded = {}
            elif level == "headers":
                loaded = dict(await self._in_thread(imapstore.headers, user_id=user_id, box=selected.box, refs=refs))
            else:
                loaded = await self._bodies(selected.box, refs, peek=not marks)
            if self.selected is not selected:
                return  # the client left or selected another mailbox meanwhile
            if listing:
                answers = [
                    self._listing(number, _Listed(row, loaded.get(row.ref), row.uid in selected.deleted), query)
                    for number, row in chunk
                    if level == "flags" or loaded.get(row.ref) is not None
                ]
                transport: Any = self.transport
                transport.writeSequence(answers)
                continue
            for number, row in chunk:
                if self.selected is not selected:
                    return  # the client left or selected another mailbox meanwhile
                if level != "flags" and loaded.get(row.ref) is None:
                    unavailable += level == "message" and row.ref in loaded
                    continue
                if marks and not row.seen:
                    row = imapstore.Row(row.uid, row.ref, True, row.flagged)
                    selected.rows[number - 1] = row
                message = _Message(row, loaded.get(row.ref), row.uid in selected.deleted)
                await self.spewMessage(number, message, query, 0)
        if unavailable:
            self.sendNegativeResponse(
                tag,
                b"[UNAVAILABLE] %d of these messages are still at their sender's server, which has not "
                b"answered; try again later" % unavailable,
            )
        else:
            self.sendPositiveResponse(tag, b"FETCH completed")

    async def _envelope_listing(self, selected: _Selected, wanted: list[tuple[int, Row]], query: list[Any]) -> None:
        """FETCH of FLAGS, UID and ENVELOPE only (what a mail program lists a mailbox with): the envelopes
        kept for the messages (imapstore.envelopes), a few thousand per round trip, and the answers written
        a chunk at a time; the same bytes Twisted's spewMessage writes, item by item, in the order asked."""
        assert self.user_id is not None
        user_id = self.user_id
        kinds = [part.type for part in query]
        for start in range(0, len(wanted), _ENVELOPE_CHUNK):
            chunk = wanted[start : start + _ENVELOPE_CHUNK]
            found: dict[str, bytes] = {}
            if "envelope" in kinds:
                refs = [row.ref for _n, row in chunk]
                found = await self._in_thread(imapstore.envelopes, user_id=user_id, box=selected.box, refs=refs)
            if self.selected is not selected:
                return  # the client left or selected another mailbox meanwhile
            deleted = selected.deleted
            answers = []
            for number, row in chunk:
                envelope = found.get(row.ref)
                if envelope is None and "envelope" in kinds:
                    continue  # gone meanwhile: left out, as a listing of headers leaves it out
                items = []
                for kind in kinds:
                    if kind == "flags":
                        items.append(b"FLAGS (" + " ".join(_flags(row, row.uid in deleted)).encode() + b")")
                    elif kind == "uid":
                        items.append(b"UID %d" % row.uid)
                    else:
                        items.append(b"ENVELOPE " + (envelope or b"NIL"))
                answers.append(b"* %d FETCH (" % number + b" ".join(items) + b")\r\n")
            transport: Any = self.transport
            transport.writeSequence(answers)

    def _listing(self, number: int, message: _Listed, query: list[Any]) -> bytes:
        """The FETCH response of one message for a listing: the bytes Twisted's spewMessage writes."""
        items = []
        for part in query:
            if part.type == "envelope":
                items.append(b"ENVELOPE " + imap4.collapseNestedLists([message.envelope()]))
            else:
                written: list[bytes] = []
                getattr(self, "spew_" + part.type)(number, message, written.append, None)
                items.append(b"".join(written))
        return b"* %d FETCH (" % number + b" ".join(items) + b")\r\n"

    async def _bodies(self, box: Box, refs: list[str], *, peek: bool) -> dict[str, Loaded | None]:
        """The messages' bytes; bodies still at their senders' are fetched and waited for (as POP3 does),
        polling from the reactor so no thread is held meanwhile."""
        assert self.user_id is not None
        user_id = self.user_id
        asked = await self._in_thread(imapstore.ask_bodies, user_id=user_id, box=box, refs=refs, peek=peek)
        clock: Any = self.factory.clock
        deadline = clock.seconds() + settings.PUSHMAIL_LEGACY_FETCH_WAIT
        while asked.fetches and clock.seconds() < deadline:
            if await self._in_thread(imapstore.bodies_settled, asked=asked):
                break
            await task.deferLater(clock, 0.2, lambda: None)
        return await self._in_thread(imapstore.messages, user_id=user_id, box=box, refs=refs, peek=peek)

    def spew_body(self, part: Any, id: int, msg: Any, _w: Any = None, _f: Any = None) -> Any:  # noqa: A002
        """Twisted's, except for a partial fetch (``BODY[]<0.1024>``), which Twisted answers whole:
        here the octets asked for, labelled with their origin as RFC 3501 §6.4.5 says."""
        if part.partialBegin is None:
            return super().spew_body(part, id, msg, _w, _f)
        section = msg
        for index in part.part or []:
            section = section.getSubPart(index) if section.isMultipart() else section
        if part.header:
            data = imap4._formatHeaders(section.getHeaders(part.header.negate, *part.header.fields))
        elif part.mime:
            data = imap4._formatHeaders(section.getHeaders(True))
        elif part.text or part.part:
            data = section.getBodyFile().read()
        else:
            data = section.open().read()
        begin, length = part.partialBegin, part.partialLength
        part.partialBegin = None
        name = part.__bytes__() + b"<%d>" % begin
        part.partialBegin = begin
        _w(name + b" " + imap4._literal(data[begin : begin + length]))
        return None

    # --- selected: STORE, EXPUNGE, CLOSE, COPY, MOVE, SEARCH ----------------------------

    def do_STORE(self, tag: bytes, messages: imap4.MessageSet, mode: bytes, flags: list[bytes], uid: int = 0) -> None:  # noqa: N802
        selected = self.selected
        assert selected is not None and self.user_id is not None
        mode = mode.upper()
        if mode.removesuffix(b".SILENT") not in (b"FLAGS", b"+FLAGS", b"-FLAGS"):
            self.sendBadResponse(tag, b"STORE takes FLAGS, +FLAGS or -FLAGS")
            return
        if not selected.writeable:
            self.sendNegativeResponse(tag, b"[READ-ONLY] The mailbox was opened with EXAMINE")
            return
        silent = mode.endswith(b".SILENT")
        names = {flag.decode("ascii", "replace").lower() for flag in flags}
        adding, removing = mode.startswith(b"+"), mode.startswith(b"-")
        wanted = selected.resolve(messages, bool(uid))

        def change(name: str) -> bool | None:
            if adding:
                return True if name in names else None
            if removing:
                return False if name in names else None
            return name in names

        seen, flagged, deleted = change("\\seen"), change("\\flagged"), change("\\deleted")
        for _n, row in wanted:
            if deleted is True:
                selected.deleted.add(row.uid)
            elif deleted is False:
                selected.deleted.discard(row.uid)
        refs = [row.ref for _n, row in wanted]
        d = self._in_thread(
            imapstore.set_flags, user_id=self.user_id, box=selected.box, refs=refs, seen=seen, flagged=flagged
        )

        def stored(_: Any) -> None:
            for number, row in wanted:
                new = imapstore.Row(
                    row.uid,
                    row.ref,
                    row.seen if seen is None or selected.box.kind != "entries" else seen,
                    row.flagged if flagged is None or selected.box.kind == "drafts" else flagged,
                )
                if selected.rows[number - 1].uid == row.uid:
                    selected.rows[number - 1] = new
                if not silent:
                    flags = " ".join(_flags(new, row.uid in selected.deleted)).encode()
                    self.sendUntaggedResponse(b"%d FETCH (FLAGS (%s) UID %d)" % (number, flags, row.uid))
            self.sendPositiveResponse(tag, b"STORE completed")

        self._hold(tag, d.addCallback(stored))

    select_STORE: Any = (
        do_STORE,
        imap4.IMAP4Server.arg_seqset,
        imap4.IMAP4Server.arg_atom,
        imap4.IMAP4Server.arg_flaglist,
    )

    def _expunge(self, uids: set[int] | None = None, *, announce: bool = True) -> defer.Deferred[None]:
        """Remove the messages marked ``\\Deleted`` (those among ``uids`` only, for UID EXPUNGE)."""
        selected, user_id = self.selected, self.user_id
        assert selected is not None and user_id is not None
        doomed = [row.ref for row in selected.rows if row.uid in selected.deleted and (uids is None or row.uid in uids)]
        d = self._in_thread(imapstore.expunge, user_id=user_id, box=selected.box, refs=doomed)
        if announce:
            return d.addCallback(lambda _: self._refresh())
        return d.addCallback(lambda _: None)

    def do_EXPUNGE(self, tag: bytes) -> None:  # noqa: N802
        assert self.selected is not None
        if not self.selected.writeable:
            self.sendNegativeResponse(tag, b"[READ-ONLY] The mailbox was opened with EXAMINE")
            return
        self._hold(tag, self._expunge().addCallback(lambda _: self.sendPositiveResponse(tag, b"EXPUNGE completed")))

    select_EXPUNGE: Any = (do_EXPUNGE,)

    def do_UID_EXPUNGE(self, tag: bytes, messages: imap4.MessageSet, uid: int = 1) -> None:  # noqa: N802
        assert self.selected is not None
        uids = {row.uid for _n, row in self.selected.resolve(messages, True)}
        d = self._expunge(uids).addCallback(lambda _: self.sendPositiveResponse(tag, b"UID EXPUNGE completed"))
        self._hold(tag, d)

    def do_CLOSE(self, tag: bytes) -> None:  # noqa: N802
        assert self.selected is not None
        if not self.selected.writeable:
            self._unselect()
            self.sendPositiveResponse(tag, b"CLOSE completed")
            return

        def closed(_: Any) -> None:
            self._unselect()
            self.sendPositiveResponse(tag, b"CLOSE completed")

        self._hold(tag, self._expunge(announce=False).addCallback(closed))

    select_CLOSE: Any = (do_CLOSE,)

    def do_UNSELECT(self, tag: bytes) -> None:  # noqa: N802
        self._unselect()
        self.sendPositiveResponse(tag, b"UNSELECT completed")

    select_UNSELECT: Any = (do_UNSELECT,)

    def _copy(self, tag: bytes, messages: imap4.MessageSet, mailbox: bytes, uid: int, *, move: bool) -> None:
        selected, user_id = self.selected, self.user_id
        assert selected is not None and user_id is not None
        wanted = selected.resolve(messages, bool(uid))
        command = b"MOVE" if move else b"COPY"

        def found(target: Box | None) -> Any:
            if target is None:
                self.sendNegativeResponse(tag, b"[TRYCREATE] No mailbox called " + imap4._quote(mailbox))
                return None
            if target.key == selected.box.key:
                self.sendPositiveResponse(tag, command + b" completed (the messages are already there)")
                return None
            refs = [row.ref for _n, row in wanted]
            d = self._in_thread(
                imapstore.copy, user_id=user_id, source=selected.box, target=target, refs=refs, move=move
            )
            return d.addCallbacks(done, refused)

        def done(outcome: tuple[int, dict[str, int]]) -> Any:
            uid_validity, copied = outcome
            pairs = [(row.uid, copied[row.ref]) for _n, row in wanted if row.ref in copied]
            code = b""
            if pairs:
                source_uids = _uid_set([p[0] for p in pairs])
                target_uids = _uid_set([p[1] for p in pairs])
                code = b"[COPYUID %d %s %s] " % (uid_validity, source_uids, target_uids)
            if not move:
                self.sendPositiveResponse(tag, code + b"COPY completed")
                return None
            self.sendPositiveResponse(None, code + b"Moved")
            # Whatever stays in this mailbox (a label on a message that was moved too) is expunged here all the same.
            selected.deleted.update(p[0] for p in pairs)
            return self._expunge({p[0] for p in pairs}).addCallback(
                lambda _: self.sendPositiveResponse(tag, b"MOVE completed")
            )

        def refused(failure: Failure) -> None:
            failure.trap(imapstore.CannotDo)
            self.sendNegativeResponse(tag, b"[CANNOT] " + _ascii(str(failure.value)).encode())

        self._hold(tag, self._box(mailbox).addCallback(found))

    def do_COPY(self, tag: bytes, messages: imap4.MessageSet, mailbox: bytes, uid: int = 0) -> None:  # noqa: N802
        self._copy(tag, messages, mailbox, uid, move=False)

    select_COPY: Any = (do_COPY, imap4.IMAP4Server.arg_seqset, imap4.IMAP4Server.arg_finalastring)

    def do_MOVE(self, tag: bytes, messages: imap4.MessageSet, mailbox: bytes, uid: int = 0) -> None:  # noqa: N802
        self._copy(tag, messages, mailbox, uid, move=True)

    select_MOVE: Any = (do_MOVE, imap4.IMAP4Server.arg_seqset, imap4.IMAP4Server.arg_finalastring)

    def do_UID(self, tag: bytes, command: bytes, line: bytes) -> None:  # noqa: N802
        command = command.upper()
        if command == b"EXPUNGE":
            messages, rest = self.arg_seqset(line)
            if rest:
                raise imap4.IllegalClientResponse("UID EXPUNGE takes one UID set")
            self.do_UID_EXPUNGE(tag, messages)
            return
        if command not in (b"COPY", b"FETCH", b"STORE", b"SEARCH", b"MOVE"):
            raise imap4.IllegalClientResponse("UID takes COPY, FETCH, STORE, SEARCH, MOVE or EXPUNGE")
        self.dispatchCommand(tag, command, line, uid=1)

    select_UID: Any = (do_UID, imap4.IMAP4Server.arg_atom, imap4.IMAP4Server.arg_line)

    def do_SEARCH(self, tag: bytes, charset: Any, query: list[Any], uid: int = 0) -> None:  # noqa: N802
        selected = self.selected
        assert selected is not None
        try:
            matcher = _search(list(query), selected)
        except _Unsupported as exc:
            self.sendNegativeResponse(tag, b"[CANNOT] " + str(exc).encode("ascii", "replace"))
            return
        found = [
            row.uid if uid else number
            for number, row in enumerate(selected.rows, start=1)
            if matcher(number, row, row.uid in selected.deleted)
        ]
        self.sendUntaggedResponse(b"SEARCH" + b"".join(b" %d" % n for n in found))
        self.sendPositiveResponse(tag, b"SEARCH completed")

    select_SEARCH: Any = (do_SEARCH, imap4.IMAP4Server.opt_charset, imap4.IMAP4Server.arg_searchkeys)


class _Unsupported(Exception):
    pass


_Matcher = Callable[[int, Row, bool], bool]
_FLAG_KEYS: dict[bytes, _Matcher] = {
    b"ALL": lambda n, row, deleted: True,
    b"SEEN": lambda n, row, deleted: row.seen,
    b"UNSEEN": lambda n, row, deleted: not row.seen,
    b"NEW": lambda n, row, deleted: not row.seen,
    b"OLD": lambda n, row, deleted: True,
    b"RECENT": lambda n, row, deleted: False,
    b"FLAGGED": lambda n, row, deleted: row.flagged,
    b"UNFLAGGED": lambda n, row, deleted: not row.flagged,
    b"DELETED": lambda n, row, deleted: deleted,
    b"UNDELETED": lambda n, row, deleted: not deleted,
    b"ANSWERED": lambda n, row, deleted: False,
    b"UNANSWERED": lambda n, row, deleted: True,
    b"DRAFT": lambda n, row, deleted: False,
    b"UNDRAFT": lambda n, row, deleted: True,
}


def _search(keys: list[Any], selected: _Selected) -> _Matcher:
    """A matcher for the search keys that need only flags and numbers (all of them, ANDed).

    Searches of headers and text would fetch every body from its sender, so they are refused.
    """
    matchers = []
    while keys:
        matchers.append(_search_one(keys, selected))
    return lambda n, row, deleted: all(m(n, row, deleted) for m in matchers)


def _search_one(keys: list[Any], selected: _Selected) -> _Matcher:
    key = keys.pop(0)
    if isinstance(key, list):
        return _search(key, selected)
    name = key.upper()
    if name in _FLAG_KEYS:
        return _FLAG_KEYS[name]
    if name == b"NOT":
        if not keys:
            raise _Unsupported("NOT needs a search key")
        inner = _search_one(keys, selected)
        return lambda n, row, deleted: not inner(n, row, deleted)
    if name == b"OR":
        if len(keys) < 2:
            raise _Unsupported("OR needs two search keys")
        first, second = _search_one(keys, selected), _search_one(keys, selected)
        return lambda n, row, deleted: first(n, row, deleted) or second(n, row, deleted)
    by_uid = name == b"UID"
    if by_uid:
        if not keys:
            raise _Unsupported("UID needs a UID set")
        name = keys.pop(0)
    try:
        members = {row.uid for _n, row in selected.resolve(imap4.parseIdList(name), by_uid)}
    except (imap4.IllegalIdentifierError, ValueError):
        raise _Unsupported(f"Search by {name.decode('ascii', 'replace')[:40]} is not offered") from None
    return lambda n, row, deleted: row.uid in members


def _sign_in(*, login: str, password: str, client_ip: str) -> tuple[bytes, int | None]:
    """In a worker thread: the answer to LOGIN, and the user's id when signed in."""
    outcome = check_mail_login(login=login, password=password, client_ip=client_ip)
    if outcome.throttled:
        log.warning("IMAP sign-in refused: too many failures (client %s)", client_ip)
        return b"[UNAVAILABLE] Too many failed sign-ins; try again later", None
    if outcome.user is None:
        log.warning("IMAP sign-in failed from %s", client_ip)
        return b"[AUTHENTICATIONFAILED] Invalid login", None
    return b"LOGIN completed", outcome.user.pk


class IMAPFactory(Factory):
    """Makes a :class:`PushmailIMAP` per connection; ``tls`` is the context STARTTLS switches to (None: no
    STARTTLS), ``clock`` the reactor that times IDLE's polls and a download's wait for its fetch."""

    noisy = False

    def __init__(self, *, tls: ContextFactory | None, clock: IReactorTime) -> None:
        self.tls = tls
        self.clock = clock

    def buildProtocol(self, addr: Any) -> PushmailIMAP:  # type: ignore[override]  # noqa: N802
        protocol = PushmailIMAP(self)
        protocol.factory = self
        return protocol
