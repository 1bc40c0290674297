"""The Inbox as a POP3 maildrop: what a mail program lists, downloads and deletes.

These synchronous functions are called by the POP3 server (mailaccess.pop3) in
a worker thread, never in the reactor's. The pull on read stays: listing
(STAT, LIST, UIDL) and ``TOP n 0`` read only what the notification said; a
download (RETR) of a body still at the sender's asks for the usual fetch (one
per message, so one per domain) and waits for it up to
``PUSHMAIL_LEGACY_FETCH_WAIT`` seconds. If the sender does not answer in time
the download fails with :class:`BodyNotHereYet` (the program is told to try
later) and nothing is made up. Messages that can no longer be read (withdrawn
before they were opened, expired, refused) are given as short system messages
saying so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from accounts.models import User
from mailbox import fetching, folders
from mailbox.eml import EmlSource, build_eml, eml_head
from mailbox.eml_entries import entry_eml, entry_eml_head
from mailbox.models import AttachmentFetchState, EntryState, FetchState, Folder, InboxEntry, RemoteMessage
from mailbox.states import BODY_AT_SENDER

from .models import DownloadSize

__all__ = [
    "BodyNotHereYet",
    "DropItem",
    "FetchAsked",
    "Prepared",
    "begin_download",
    "download",
    "entry_headers",
    "fetch_settled",
    "finish_download",
    "headers_only",
    "list_maildrop",
    "mark_downloaded",
    "on_the_wire",
    "prepare_downloads",
    "readable_eml",
    "trash",
]

# How often a waiting download looks for the fetch's outcome.
POLL_SECONDS = 0.2

# What a reader is told instead of a body that will never come.
_GONE_TEXT = {
    EntryState.WITHDRAWN: "The sender withdrew this message before you opened it, so it cannot be read any more.",
    EntryState.EXPIRED: (
        "This message expired at the sender's server before it was downloaded, so it cannot be read any more."
    ),
    EntryState.TAMPERED: (
        "This message was not shown: what the sender's server sent did not match what it had announced."
    ),
    EntryState.MALFORMED: "This message was not shown: the sender's server sent a body that could not be read.",
}


class BodyNotHereYet(Exception):
    """The body is still at the sender's: the fetch failed or did not finish in time."""


@dataclass(frozen=True)
class DropItem:
    """One message of the maildrop as listed: its entry, size and unique id.

    The size is the exact octets of the last download (:class:`~mailaccess.models.DownloadSize`)
    once the message has been downloaded; before that, the size the notification announced
    (body and attachments), which the download may differ from (the MIME rendering adds headers
    and transfer encoding; attachments still at the sender's are only named in a note).
    """

    entry_id: int
    size: int
    uid: str


def _uid(entry_id: int) -> str:
    # Stable for the life of the entry and unique on this instance (RFC 1939 §7: 1 to 70 printable characters).
    return f"pm{entry_id}"


def list_maildrop(*, user_id: int) -> list[DropItem]:
    """The user's Inbox, oldest first, from the notifications and the sizes of earlier downloads
    (two queries; no fetch, no body read)."""
    rows = (
        InboxEntry.objects.filter(owner_id=user_id, folder=Folder.INBOX)
        .order_by("received_at", "pk")
        .values_list("pk", "size", "attachments_size")
    )
    sent = dict(
        DownloadSize.objects.filter(entry__owner_id=user_id, entry__folder=Folder.INBOX).values_list("entry_id", "size")
    )
    return [
        DropItem(entry_id=pk, size=sent.get(pk) or max(1, size + attachments), uid=_uid(pk))
        for pk, size, attachments in rows
    ]


def on_the_wire(eml: bytes) -> bytes:
    """The message as a POP3 download carries it: CRLF line ends, ending with one (RFC 1939 §3).

    Its length is the size ``LIST`` gives; dot-stuffing is added on the wire only.
    """
    eml = eml.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return eml if eml.endswith(b"\r\n") else eml + b"\r\n"


def _entry(user_id: int, entry_id: int) -> InboxEntry | None:
    return (
        InboxEntry.objects.filter(owner_id=user_id, pk=entry_id)
        .select_related("remote", "local", "owner", "owner__domain")
        .first()
    )


def _system_message(entry: InboxEntry, text: str) -> bytes:
    """A short message from this instance standing in for one that cannot be read."""
    owner = entry.owner
    return build_eml(
        EmlSource(
            sender=f"Pushmail <postmaster@{owner.email.rpartition('@')[2]}>",
            to=[owner.email],
            cc=[],
            subject=f"[Not available] {entry.subject}".strip(),
            date=entry.received_at,
            message_id="",
            in_reply_to="",
            references=[],
            text=f"{text}\n\nFrom: {entry.sender}\nSubject: {entry.subject}\n",
            html=None,
        )
    )


def _settled(remote: RemoteMessage, asked_at: float) -> bool:
    """The fetch asked for at ``asked_at`` has an outcome: the body, a final state, or a failed attempt."""
    if remote.state not in BODY_AT_SENDER:
        return True
    if remote.state != FetchState.UNAVAILABLE or remote.last_attempt_at is None:
        return False
    if remote.last_attempt_at.timestamp() < asked_at:
        return False  # the failure is from before this download: the retry has not started yet
    # A worker holding the fetch sets next_attempt_at to its claim's end; a failed attempt sets the backoff.
    claimed_until = remote.last_attempt_at + timedelta(seconds=settings.PUSHMAIL_CLAIM_SECONDS)
    return remote.next_attempt_at is None or abs((remote.next_attempt_at - claimed_until).total_seconds()) > 1


@dataclass(frozen=True)
class FetchAsked:
    """A download that waits for its body: the fetch asked for, and when (to tell its outcome from older ones)."""

    remote_id: int
    asked_at: float


def begin_download(*, user_id: int, entry_id: int, listed_size: int | None = None) -> bytes | FetchAsked:
    """The message's bytes (:func:`finish_download`) when its body is here; else ask for the fetch.

    Asking opens the entry as the webmail does (it is marked read) and skips a pending backoff,
    as "Try again now" does: the program is waiting. ``LookupError`` when the entry is gone.
    """
    entry = _entry(user_id, entry_id)
    if entry is None:
        raise LookupError(entry_id)
    if entry.remote_id is None or entry.state not in BODY_AT_SENDER:
        return finish_download(user_id=user_id, entry_id=entry_id, listed_size=listed_size)
    asked_at = timezone.now().timestamp()
    with transaction.atomic():
        fetching.open_entry(entry=entry)
    fetching.request_fetch(remote_id=entry.remote_id, now=True)
    return FetchAsked(remote_id=entry.remote_id, asked_at=asked_at)


def fetch_settled(asked: FetchAsked) -> bool:
    """Whether the fetch asked for has an outcome yet (one small query; the caller polls)."""
    remote = RemoteMessage.objects.only("state", "last_attempt_at", "next_attempt_at").filter(pk=asked.remote_id)
    found = remote.first()
    return found is None or _settled(found, asked.asked_at)


def finish_download(*, user_id: int, entry_id: int, listed_size: int | None = None) -> bytes:
    """The message as RFC 5322 bytes, exactly as its .eml download with CRLF line ends
    (:func:`on_the_wire`); marks it read, as opening it does.

    When its length differs from ``listed_size`` (what this session's listing said), the new
    size is kept for the next listing. Raises :class:`BodyNotHereYet` while the body is still
    at the sender's, and ``LookupError`` when the entry is gone (deleted meanwhile).
    """
    eml = on_the_wire(_download(user_id, entry_id))
    if len(eml) != listed_size:
        DownloadSize.objects.update_or_create(entry_id=entry_id, defaults={"size": len(eml)})
    return eml


def _download(user_id: int, entry_id: int) -> bytes:
    entry = _entry(user_id, entry_id)
    if entry is None:
        raise LookupError(entry_id)
    if entry.state in BODY_AT_SENDER:
        raise BodyNotHereYet(entry.remote.last_error if entry.remote is not None else "")
    if _unopened(entry):
        with transaction.atomic():
            fetching.open_entry(entry=entry)
    return _eml_of(entry)


def readable_eml(*, user_id: int, entry_id: int, mark_read: bool) -> bytes:
    """The .eml of an entry whose body is here, for IMAP, where ``BODY.PEEK`` (``mark_read=False``)
    leaves the read state alone. Raises as :func:`finish_download` does."""
    if mark_read:
        return _download(user_id, entry_id)
    entry = _entry(user_id, entry_id)
    if entry is None:
        raise LookupError(entry_id)
    if entry.state in BODY_AT_SENDER:
        raise BodyNotHereYet(entry.remote.last_error if entry.remote is not None else "")
    return _eml_of(entry)


def _unopened(entry: InboxEntry) -> bool:
    # Opening marks read and records the first open (read counts); nothing to do when both are done.
    return not entry.read or entry.opened_at is None


def _eml_of(entry: InboxEntry) -> bytes:
    """The .eml of an entry whose body is here, or the system message standing in for one that cannot be read."""
    eml = entry_eml(entry)
    if eml is None:
        return _system_message(entry, _GONE_TEXT.get(EntryState(entry.state), "This message cannot be shown."))
    return eml


@dataclass(frozen=True)
class Prepared:
    """A download made ahead of its ``RETR``: the bytes (:func:`on_the_wire`), and whether it is still unread."""

    eml: bytes
    unread: bool


# A download kept to be sent again (mailaccess.models.DownloadSize) is at most this big; bigger ones
# (attachments held here) are rendered at each download rather than stored twice.
_KEEP_AT_MOST = 256 * 1024
# Raised when the rendering of downloads changes, so downloads kept before are rendered again.
_DOWNLOAD_VERSION = 1

# Each entry's kept download, if it is still the one to give. The key is a digest of what a download
# is rendered from (mailbox.eml_entries.entry_eml and the note standing in for a message that cannot be
# read): the entry's and its message's state, subject, sender and arrival, whether it was opened (which
# matters once it is withdrawn), and the attachments fetched and verified for it. A body, a message as
# it arrived by SMTP and an attachment's bytes never change once here, so their columns stand for
# them. ``live``: a copy in Spam that a verdict may hide depends on whom its owner wrote to since
# (mailbox.content.withheld_by_verdict), so its download is never kept. In SQL, so a batch is one query.
_KEPT_DOWNLOADS = """
SELECT id, state, unread, key, live, CASE WHEN kept = key AND NOT live THEN eml END
FROM (
    SELECT e.id, e.state, (NOT e.read OR e.opened_at IS NULL) AS unread,
           md5(ROW(%(version)s::int, %(email)s::text, e.state, e.folder, e.hidden_from, e.subject, e.sender,
                   e.sender_name, e.received_at, e.remote_id, e.local_id, r.state, r.spam_verdict <> '',
                   r.raw_id, r.fetched_at, r.withdrawn_at, m.withdrawn_at,
                   CASE WHEN e.state = %(withdrawn)s OR r.state = %(withdrawn)s OR m.withdrawn_at IS NOT NULL
                        THEN e.opened_at IS NULL END,
                   (SELECT string_agg(a.position::text || ':' || a.blob_id::text, ',' ORDER BY a.position)
                    FROM mailbox_receivedattachment a
                    WHERE a.remote_id = e.remote_id AND a.state = %(fetched)s AND a.blob_id IS NOT NULL)
           )::text) AS key,
           (e.folder = %(spam)s AND e.opened_at IS NULL AND COALESCE(r.spam_verdict, '') <> '') AS live,
           d.key AS kept,
           d.eml
    FROM mailbox_inboxentry e
    LEFT JOIN mailbox_remotemessage r ON r.id = e.remote_id
    LEFT JOIN outbox_message m ON m.id = e.local_id
    LEFT JOIN mailaccess_downloadsize d ON d.entry_id = e.id
    WHERE e.owner_id = %(owner)s AND e.id = ANY(%(ids)s::bigint[])
) AS listed
"""


def prepare_downloads(*, user_id: int, items: list[DropItem]) -> dict[int, Prepared]:
    """The downloads of those of ``items`` whose body is here, by entry id, in three queries at most.

    A mail program downloads a maildrop in order, so the server renders the next messages
    together; nothing is marked read here (:func:`mark_downloaded` does, once each is sent).
    Messages whose body is at the sender's, or gone meanwhile, are left out: they take
    :func:`begin_download`. A download once rendered is kept (up to 256 KiB) and sent again
    as long as what it was rendered from has not changed; a size that differs from the
    listing's is kept for the next one.
    """
    listed = {item.entry_id: item.size for item in items}
    email_address = User.objects.filter(pk=user_id).values_list("email", flat=True).first() or ""
    params: dict[str, Any] = {
        "version": _DOWNLOAD_VERSION,
        "email": email_address,
        "withdrawn": EntryState.WITHDRAWN.value,
        "fetched": AttachmentFetchState.FETCHED.value,
        "spam": Folder.SPAM.value,
        "owner": user_id,
        "ids": list(listed),
    }
    prepared: dict[int, Prepared] = {}
    to_render: dict[int, str | None] = {}  # entry id -> the key of its download (None: not to be kept)
    if connection.vendor != "postgresql":
        # Downloads are kept on PostgreSQL only (the key is computed in its SQL); elsewhere (the
        # SQLite demo) each is rendered again, the same bytes.
        to_render = dict.fromkeys(listed)
    else:
        with connection.cursor() as cursor:
            cursor.execute(_KEPT_DOWNLOADS, params)
            for pk, state, unread, key, live, kept in cursor.fetchall():
                if state in BODY_AT_SENDER:
                    continue
                if kept is not None:
                    prepared[pk] = Prepared(bytes(kept), unread=unread)
                else:
                    to_render[pk] = None if live else key
    if not to_render:
        return prepared
    entries = InboxEntry.objects.filter(owner_id=user_id, pk__in=list(to_render)).select_related(
        "remote", "local", "owner", "owner__domain"
    )
    kept_rows = []
    for entry in entries:
        if entry.state in BODY_AT_SENDER:
            continue
        eml = on_the_wire(_eml_of(entry))
        prepared[entry.pk] = Prepared(eml, unread=_unopened(entry))
        key = to_render[entry.pk]
        if key is None or len(eml) > _KEEP_AT_MOST:
            key = ""  # rendered at each download
        if key or len(eml) != listed[entry.pk]:
            kept_rows.append(DownloadSize(entry_id=entry.pk, size=len(eml), key=key, eml=eml if key else None))
    if kept_rows:
        try:
            with transaction.atomic():
                DownloadSize.objects.bulk_create(
                    kept_rows,
                    update_conflicts=True,
                    unique_fields=["entry"],
                    update_fields=["size", "updated_at", "key", "eml"],
                )
        except IntegrityError:
            pass  # a message deleted meanwhile: the next download keeps the others
    return prepared


def mark_downloaded(*, user_id: int, entry_ids: list[int]) -> None:
    """Mark downloaded messages read, as opening them in the webmail does (one batch)."""
    entries = InboxEntry.objects.filter(owner_id=user_id, pk__in=entry_ids).select_related("remote", "local")
    unopened = [entry for entry in entries if _unopened(entry)]
    if unopened:
        fetching.open_entries(entries=unopened)


def download(*, user_id: int, entry_id: int, wait: float | None = None, listed_size: int | None = None) -> bytes:
    """:func:`begin_download`, waiting in this thread for the fetch up to ``wait`` seconds
    (``PUSHMAIL_LEGACY_FETCH_WAIT``), then :func:`finish_download`. The server waits without
    holding a thread (mailaccess.pop3); this is the same sequence for a caller that may block."""
    started = begin_download(user_id=user_id, entry_id=entry_id, listed_size=listed_size)
    if isinstance(started, bytes):
        return started
    deadline = time.monotonic() + (settings.PUSHMAIL_LEGACY_FETCH_WAIT if wait is None else wait)
    while not fetch_settled(started) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    return finish_download(user_id=user_id, entry_id=entry_id, listed_size=listed_size)


def headers_only(*, user_id: int, entry_id: int) -> bytes:
    """The message's header block (``TOP n 0``) from the notification alone: nothing is fetched.

    For a body that is here, the header block of the download itself.
    """
    entry = _entry(user_id, entry_id)
    if entry is None:
        raise LookupError(entry_id)
    return entry_headers(entry)


def entry_headers(entry: InboxEntry) -> bytes:
    """:func:`headers_only` of an entry loaded with its ``remote``, ``local`` and ``owner__domain`` rows
    (IMAP lists many at once): the header block of its download, without encoding its body."""
    if entry.state in BODY_AT_SENDER and entry.remote is not None:
        remote = entry.remote
        return eml_head(
            EmlSource(
                sender=entry.sender,
                sender_name=entry.sender_name,
                to=[entry.owner.email],
                cc=[],
                subject=entry.subject,
                date=remote.date,
                message_id=remote.message_id,
                in_reply_to=remote.in_reply_to,
                references=[str(r) for r in remote.references or []],
                text="",
                html=None,
            )
        )
    head = entry_eml_head(entry)
    if head is not None:
        return head
    eml = _system_message(entry, _GONE_TEXT.get(EntryState(entry.state), "This message cannot be shown."))
    return eml[: eml.index(b"\r\n\r\n") + 4]


def trash(*, user_id: int, entry_ids: list[int]) -> int:
    """Move what the mail program deleted (at QUIT) to Trash; entries gone meanwhile are skipped."""
    user = User.objects.get(pk=user_id)
    present = list(
        InboxEntry.objects.filter(owner_id=user_id, pk__in=entry_ids, folder=Folder.INBOX).values_list("pk", flat=True)
    )
    if not present:
        return 0
    return folders.move_entries(user=user, entry_ids=present, folder=Folder.TRASH)
