"""Pull on read: a reader opens an entry, one fetch per message brings the body here.

The moves of a fetch (``RemoteMessage.state``) are declared in mailbox.states;
every one of them goes through ``transition``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, Exists, F, OuterRef, Value, When
from django.utils import timezone

from federation import client, discovery, payloads
from outbox.models import Recipient
from pushmail_site import counters, logs
from pushmail_site.jobs import claim_until, enqueue, lock, overdue_ids
from pushmail_site.states import transition, transition_rows

from . import search, spam
from .models import EntryState, FetchState, InboxEntry, RemoteMessage
from .signals import body_fetched, body_unavailable, message_read
from .states import (
    BODY_AT_SENDER,
    DUE,
    ENTRY,
    FETCH,
    entries_asked,
    entries_follow,
    entries_follow_in_batches,
    retry_delay,
)

log = logging.getLogger(__name__)


class _Refused(Exception):
    """A fetched body that cannot be stored: the state it leaves its message in, and why."""

    def __init__(self, state: str, error: str) -> None:
        super().__init__(error)
        self.state, self.error = state, error[:500]


# --- A reader opens an entry -------------------------------------------------------------


def open_entry(*, entry: InboxEntry) -> InboxEntry:
    """The owner opens an entry: mark it read, and make sure its body is here or on its way.

    ``entry.state`` is current on return (a fetch requested here moves it to ``fetching``).
    """
    if open_entries(entries=[entry]):
        entry.refresh_from_db(fields=["state"])
    return entry


def open_entries(*, entries: Sequence[InboxEntry]) -> list[int]:
    """One owner opens these entries at once (a conversation's unread messages), as open_entry each.

    The work is batched, so its cost does not grow with the number of entries: one
    ``UPDATE`` marks them read (and first opened), one ``message_read`` signal names
    every remote message read for the first time, and one locked statement moves
    every body still at its sender's to ``fetching`` (one fetch queued per message).
    Each entry's ``read`` and ``opened_at`` are current on return; returns the ids of the
    entries whose fetch this requested, for their ``state`` moved (reload them to show it).
    """
    if not entries:
        return []
    owners = {entry.owner_id for entry in entries}
    if len(owners) != 1:
        raise ValueError("entries of one owner are opened together")
    # One commit (one WAL flush) for the read state and the reads it records, not one per statement.
    changes = any(not entry.read or entry.opened_at is None for entry in entries)
    with transaction.atomic() if changes else nullcontext():
        _current_verdicts(entries)
        return _open_entries(entries, owner_id=next(iter(owners)))


def _current_verdicts(entries: Sequence[InboxEntry]) -> None:
    """Bring the spam verdicts of the messages about to be shown for the first time up to date.

    A verdict being applied holds its messages' rows until every copy it hides has moved, which
    takes a while for thousands of copies; a reader who listed their Inbox before it must not get
    the body meanwhile. Their open waits for that verdict (a share lock on the message row, which
    readers do not contend for among themselves), then reads its copy's folder afresh, where the
    verdict left it. The message first and the copy after, as a verdict takes them: a copy locked
    first would have each wait for the other.
    """
    # Only bodies already here are served at once; a body still at the sender's is requested with
    # the message row locked for update (request_fetches), which two readers holding it shared would
    # each wait for the other to release.
    first = {
        entry.remote_id: entry
        for entry in entries
        if entry.opened_at is None and entry.remote is not None and entry.remote.content is not None
    }
    if not first or connection.vendor != "postgresql":
        return  # SQLite runs one writer at a time: nothing is half-applied when we read
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, spam_verdict FROM mailbox_remotemessage WHERE id = ANY(%s) ORDER BY id FOR SHARE",
            [list(first)],
        )
        verdicts = dict(cursor.fetchall())
    folders = dict(InboxEntry.objects.filter(pk__in=[e.pk for e in first.values()]).values_list("pk", "folder"))
    for entry in first.values():
        if entry.remote is not None and entry.remote_id in verdicts:
            entry.remote.spam_verdict = verdicts[entry.remote_id]
            entry.folder = folders.get(entry.pk, entry.folder)


def _open_entries(entries: Sequence[InboxEntry], *, owner_id: int) -> list[int]:
    now = timezone.now()
    unread: list[int] = []
    first_opened: list[int] = []
    read_messages: list[RemoteMessage] = []
    to_fetch: dict[int, list[InboxEntry]] = {}
    caught_up: list[InboxEntry] = []
    for entry in entries:
        if not entry.read:
            unread.append(entry.pk)
            entry.read = True
        remote = entry.remote
        if entry.state == EntryState.WITHDRAWN and entry.opened_at is None:
            pass  # withdrawn before this reader saw it
        elif spam.is_hidden(entry):
            # Judged spam before this reader saw it: its body is neither fetched nor shown for them,
            # even when it is here because the first readers opened it.
            pass
        elif remote is None or remote.content is not None:
            lags = entry.opened_at is None and remote is not None and _lags(entry, remote)
            if lags:
                caught_up.append(entry)  # the body came a moment ago: this copy follows it now
            if entry.opened_at is None and (lags or entry.state in (EntryState.FETCHED, EntryState.NOTICE)):
                entry.opened_at = now
                first_opened.append(entry.pk)
                if remote is not None:
                    read_messages.append(remote)
        elif remote.state in BODY_AT_SENDER:
            to_fetch.setdefault(remote.pk, []).append(entry)
    changed = sorted(set(unread) | set(first_opened))
    # Messages before copies, as a verdict takes them: the fetch locks its message row, and a copy
    # written first would have this reader hold it while waiting for a verdict that waits for it.
    asked = [entry.pk for group in to_fetch.values() for entry in group]
    if to_fetch:
        request_fetches(remote_ids=list(to_fetch), entry_ids=asked)
    if caught_up:
        transition_rows(InboxEntry.objects.filter(pk__in=[e.pk for e in caught_up]), ENTRY, EntryState.FETCHED)
    if changed:
        opened = set(first_opened)
        InboxEntry.objects.filter(pk__in=changed).update(
            read=True,
            opened_at=Case(When(pk__in=opened, then=Value(now)), default=F("opened_at")) if opened else F("opened_at"),
        )
    if read_messages:
        message_read.send(sender=RemoteMessage, messages=read_messages, reader_id=owner_id)
    for entry in caught_up:
        entry.refresh_from_db(fields=["state"])
    return asked


def _lags(entry: InboxEntry, remote: RemoteMessage) -> bool:
    """The body is here, and this copy has not followed its message there yet (mailbox.states)."""
    return entry.state in BODY_AT_SENDER and remote.state == FetchState.FETCHED


def retry_fetch_now(*, entry: InboxEntry) -> InboxEntry:
    """ "Try again now" on an unavailable entry: skip the backoff."""
    if entry.remote_id is not None and not spam.is_hidden(entry):
        request_fetch(remote_id=entry.remote_id, now=True)
        entry.refresh_from_db()
    return entry


def request_fetch(*, remote_id: int, now: bool = False) -> None:
    """Make sure exactly one fetch is queued for a message (per instance, so per domain).

    ``now`` skips a pending backoff: the "try again now" action. A fetch started here (a
    prefetch on notification, an admin's action) is asked for every copy: they all show
    ``fetching``.
    """
    with transaction.atomic():
        remote = lock(RemoteMessage.objects.all(), skip_locked=False).filter(pk=remote_id).first()
        if remote is None:
            return
        if remote.state == FetchState.NOTIFIED:
            transition(remote, FETCH, FetchState.FETCHING, fields={"next_attempt_at": timezone.now()})
            entries_follow(FetchState.FETCHING, [remote.pk])
            _queue_fetch(remote.pk)
        elif remote.state == FetchState.UNAVAILABLE and now:
            remote.next_attempt_at = timezone.now()
            remote.save(update_fields=["next_attempt_at"])
            _queue_fetch(remote.pk)


def request_fetches(*, remote_ids: list[int], entry_ids: Sequence[int] = ()) -> None:
    """request_fetch for many messages at once: those still only notified move to ``fetching``
    in one locked statement, each with its one fetch queued; the others are left as they are.

    ``entry_ids``, the entries of the readers who asked, show ``fetching``; the message's
    other copies stay ``notified`` until the fetch has an outcome (mailbox.states), so that
    the reader's way to the body writes one row per message, not one per copy.

    A body is fetched only for a reader who may see it. A spam verdict being applied holds its
    messages' rows until every copy it hides has moved: the rows are locked first, which waits for
    it, and the readers' copies read afresh after; a copy it hid asks for nothing.
    """
    with transaction.atomic():
        notified = RemoteMessage.objects.filter(pk__in=remote_ids, state=FetchState.NOTIFIED)
        list(lock(notified, skip_locked=False).order_by("pk").values_list("pk", flat=True))
        asking = [
            entry
            for entry in InboxEntry.objects.filter(pk__in=entry_ids).select_related("remote")
            if not spam.is_hidden(entry)
        ]
        wanted = {entry.remote_id for entry in asking if entry.remote_id} if entry_ids else set(remote_ids)
        moved = transition_rows(
            notified.filter(pk__in=wanted),
            FETCH,
            FetchState.FETCHING,
            fields={"next_attempt_at": timezone.now()},
        )
        if asking:
            entries_asked([entry.pk for entry in asking])
    for remote_id in moved:
        _queue_fetch(remote_id)


@shared_task(name="mailbox.fetch_body")
def fetch_body_task(remote_id: int) -> None:
    fetch_body(remote_id)


def _queue_fetch(remote_id: int, *, countdown: float | None = None) -> None:
    enqueue(fetch_body_task, remote_id, countdown=countdown)


# --- The fetch itself ----------------------------------------------------------------------


def fetch_body(remote_id: int) -> None:
    """Pull one body from the sender's instance, verify it (§7.1), store it once."""
    remote = _claim(remote_id)
    if remote is None:
        return  # done already, or someone else holds it
    with logs.about(message_id=remote.global_id, peer=remote.origin_domain):
        started = time.monotonic()
        try:
            content = _download(remote)
        except client.Gone as gone:
            _took(started, "gone")
            log.info("body fetch: the sender answered gone (%s)", gone.reason)
            _gone(remote_id, gone)
        except (discovery.DiscoveryError, client.PeerError) as exc:
            _took(started, "failed")
            log.info("body fetch failed (attempt %d): %s", remote.attempts, exc)
            _failed(remote_id, str(exc), retry_after=exc.retry_after)
        else:
            seconds = _took(started, "body")
            log.info("body fetched: %d bytes in %.3f s", len(content), seconds)
            _store(remote_id, content)


def _took(started: float, outcome: str) -> float:
    seconds = time.monotonic() - started
    counters.FETCH_SECONDS.labels(outcome=outcome).observe(seconds)
    return seconds


def _claim(remote_id: int) -> RemoteMessage | None:
    """Take a due fetch for this worker until its claim lapses (a worker killed meanwhile leaves it due)."""
    now = timezone.now()
    with transaction.atomic():
        remote = lock(RemoteMessage.objects.all()).filter(pk=remote_id, state__in=DUE, next_attempt_at__lte=now).first()
        if remote is None:
            return None
        if spam.withheld_from_everyone(remote=remote):
            # Judged spam after its fetch was asked for, and hidden from every reader who could have
            # seen it: nobody here needs the body. Called off; a reader it is given back to (a known
            # correspondent, "Not spam") asks again by opening it.
            transition(remote, FETCH, FetchState.NOTIFIED, fields={"next_attempt_at": None, "last_error": ""})
            return None
        remote.attempts += 1
        remote.last_attempt_at = now
        remote.next_attempt_at = claim_until()
        remote.save(update_fields=["attempts", "last_attempt_at", "next_attempt_at"])
    return remote


def _still_due(remote_id: int) -> RemoteMessage | None:
    """The message locked, or None when it moved on while we fetched (a withdrawal, say)."""
    return lock(RemoteMessage.objects.all(), skip_locked=False).filter(pk=remote_id, state__in=DUE).first()


def _download(remote: RemoteMessage) -> bytes:
    instance = discovery.discover(remote.origin_domain)
    if instance is None:
        raise client.PeerError(f"{remote.origin_domain} no longer runs Pushmail", retryable=True)
    return client.fetch_body(instance=instance, as_domain=remote.local_domain, global_id=remote.global_id)


def _gone(remote_id: int, gone: client.Gone) -> None:
    """410: withdrawn, or (any other reason) expired; never fetched again (§7.4)."""
    target = FetchState.WITHDRAWN if gone.reason == "withdrawn" else FetchState.EXPIRED
    with transaction.atomic():
        remote = _still_due(remote_id)
        if remote is not None:
            transition(remote, FETCH, target, fields={"next_attempt_at": None, "last_error": ""})


def _failed(remote_id: int, error: str, *, retry_after: float | None) -> None:
    """No body this time: try again later, unless the message has expired meanwhile (§7.3)."""
    now = timezone.now()
    with transaction.atomic():
        remote = _still_due(remote_id)
        if remote is None:
            return
        if now >= remote.expires_at:
            transition(remote, FETCH, FetchState.EXPIRED, fields={"next_attempt_at": None, "last_error": error[:500]})
            return
        delay = retry_delay(attempts=remote.attempts, retry_after=retry_after)
        fields = {"next_attempt_at": now + delay, "last_error": error[:500]}
        transition(remote, FETCH, FetchState.UNAVAILABLE, fields=fields)
        _queue_fetch(remote.pk, countdown=delay.total_seconds())
        origin = remote.origin_domain
        transaction.on_commit(
            lambda: body_unavailable.send(sender=RemoteMessage, remote_id=remote_id, origin=origin, error=error)
        )


def _store(remote_id: int, content: bytes) -> None:
    """Keep a body that passes every check; refuse one that does not, for good.

    The body is committed on its message's row first, so that its readers have it at once;
    then its unopened copies follow it to ``fetched``, a few hundred per transaction (thousands
    of rows for a message to thousands of mailboxes here), so that a reader opening their copy
    meanwhile waits for one batch at most. A reader who opens a copy not moved yet catches it
    up (``open_entries``).
    """
    with transaction.atomic():
        remote = _still_due(remote_id)
        if remote is None:
            return  # withdrawn while we were fetching
        try:
            body = _verified(remote, content)
        except _Refused as refused:
            transition(remote, FETCH, refused.state, fields={"next_attempt_at": None, "last_error": refused.error})
            return
        # Due again (next_attempt_at) until its copies have followed it: a worker killed in between
        # leaves the rest to the sweep (requeue_due), which finishes it with finish_fetched.
        fields = {"content": content, "fetched_at": timezone.now(), "next_attempt_at": claim_until(), "last_error": ""}
        transition(remote, FETCH, FetchState.FETCHED, fields=fields)
    finish_fetched(remote_id, body=body)


@shared_task(name="mailbox.finish_fetched")
def finish_fetched_task(remote_id: int) -> None:
    finish_fetched(remote_id)


def finish_fetched(remote_id: int, *, body: dict[str, Any] | None = None) -> None:
    """What follows a stored body (idempotent): its unopened copies move to ``fetched``, every
    copy shows the verified subject and sender and is matched on the text, and ``body_fetched``
    is announced; then the message is no longer due."""
    entries_follow_in_batches(FetchState.FETCHED, remote_id)
    with transaction.atomic():
        # The message first and its copies after, as readers and verdicts take them: a reader who opens
        # their copy the moment the body arrives holds the message (shared) and then wants their copy,
        # which the copies' updates below would hold while waiting for the message: a deadlock, a 500.
        stored = RemoteMessage.objects.filter(pk=remote_id, state=FetchState.FETCHED)
        remote = lock(stored, skip_locked=False).first()
        if remote is None or remote.content is None:
            return  # withdrawn meanwhile: the withdrawal took the copies where they go
        if body is None:
            body = payloads.parse_body(bytes(remote.content))
        # Every reader sees the verified body's subject and sender from now on.
        InboxEntry.objects.filter(remote=remote).exclude(subject=body["subject"], sender=body["from"]).update(
            subject=body["subject"], sender=body["from"]
        )
        search.index_fetched_body(remote=remote, body=body)
        RemoteMessage.objects.filter(pk=remote_id).update(next_attempt_at=None)
        transaction.on_commit(lambda: body_fetched.send(sender=RemoteMessage, remote_id=remote_id))


def _verified(remote: RemoteMessage, content: bytes) -> dict[str, Any]:
    """The body, if it is what was notified (docs/protocol.md §7.1); raises _Refused otherwise."""
    digest = payloads.digest(content)
    if digest != remote.digest or len(content) != remote.size:
        log.warning("digest mismatch for %s from %s", remote.global_id, remote.origin_domain)
        raise _Refused(FetchState.TAMPERED, f"body digest {digest} does not match the notified {remote.digest}")
    try:
        body = payloads.check_body(content)
    except payloads.PayloadError as exc:
        # The sender notified these very bytes, so fetching again cannot help.
        log.warning("malformed body for %s from %s: %s", remote.global_id, remote.origin_domain, exc)
        raise _Refused(FetchState.MALFORMED, f"body is malformed: {exc}") from exc
    mismatch = payloads.body_mismatch(body, _notified(remote))
    if mismatch:
        raise _Refused(FetchState.TAMPERED, f"body does not match its notification: {mismatch} differs")
    return body


def _notified(remote: RemoteMessage) -> dict[str, Any]:
    """What the notification said, in the body's terms."""
    return {
        "id": str(remote.global_id),
        "from": remote.sender,
        "subject": remote.subject,
        "message_id": remote.message_id,
        "date": payloads.format_time(remote.date),
        "attachments": remote.attachments,
        "from_name": remote.sender_name,
        "encrypted": remote.encrypted,
    }


# --- Sweeps --------------------------------------------------------------------------------


def requeue_due(*, limit: int = 1000) -> int:
    """Queue fetches the broker lost, or whose worker died (their claim lapsed)."""
    due = overdue_ids(RemoteMessage.objects.filter(state__in=DUE), task=fetch_body_task, limit=limit)
    for remote_id in due:
        _queue_fetch(remote_id)
    # Bodies stored by a worker that died before the copies followed them (finish_fetched).
    unfinished = overdue_ids(
        RemoteMessage.objects.filter(state=FetchState.FETCHED), task=finish_fetched_task, limit=limit
    )
    for remote_id in unfinished:
        enqueue(finish_fetched_task, remote_id)
    return len(due) + len(unfinished)


def expire_unfetched() -> int:
    """Messages whose expiry passed before anyone fetched them become "expired"."""
    now = timezone.now()
    ids = RemoteMessage.objects.filter(state__in=BODY_AT_SENDER, expires_at__lte=now).values_list("pk", flat=True)
    count = 0
    for remote_id in list(ids):
        with transaction.atomic():
            remote = lock(RemoteMessage.objects.all()).filter(pk=remote_id, state__in=BODY_AT_SENDER).first()
            if remote is not None:
                transition(remote, FETCH, FetchState.EXPIRED, fields={"next_attempt_at": None})
                count += 1
    return count


def prefetch_from_correspondents() -> int:
    """Fetch unopened mail from people a recipient has written to, before it expires.

    Mail from unknown senders is never prefetched.
    """
    now = timezone.now()
    horizon = now + settings.PUSHMAIL_PREFETCH_BEFORE_EXPIRY
    written_to = Recipient.objects.filter(
        address=OuterRef("sender"), message__sender__inbox_entries__remote=OuterRef("pk")
    )
    ids = list(
        RemoteMessage.objects.filter(state=FetchState.NOTIFIED, expires_at__lte=horizon, expires_at__gt=now)
        .filter(Exists(written_to))
        .values_list("pk", flat=True)[:500]
    )
    for remote_id in ids:
        request_fetch(remote_id=remote_id)
    return len(ids)
