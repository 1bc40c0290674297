"""The recipient side's job rows, their states and every move between them.

A message notified to this instance (``RemoteMessage``) is the job of fetching
its body, once for the whole instance: its ``state`` moves along :data:`FETCH`.
Each reader's inbox entry (``InboxEntry``) shows its message's state: one
handler on :data:`FETCH` moves the entries with their message, and the rules
that only entries have (an opened entry keeps its body; notices; mail between
mailboxes of this instance) are declared below it, in :data:`ENTRY`.

A received file's fetch (``ReceivedAttachment``) is a job of its own, one row
per message and manifest position: its ``state`` moves along :data:`ATTACHMENT_FETCH`,
at the end of this module.

Every write of these states goes through ``pushmail_site.states.transition`` or
``transition_rows``, which refuse a move these graphs do not declare.
docs/protocol.md §8.1 and §8.4 list the same moves; tests/unit/test_mailbox_states.py
and tests/unit/test_attachment_fetch_job.py hold them together.
"""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import transaction

from pushmail_site.jobs import backoff
from pushmail_site.states import RetryPolicy, State, StateGraph, transition_rows

from .models import AttachmentFetchState, EntryState, FetchState, InboxEntry, RemoteMessage

NOTIFIED, FETCHING, FETCHED = FetchState.NOTIFIED, FetchState.FETCHING, FetchState.FETCHED
UNAVAILABLE, WITHDRAWN, EXPIRED = FetchState.UNAVAILABLE, FetchState.WITHDRAWN, FetchState.EXPIRED
TAMPERED, MALFORMED = FetchState.TAMPERED, FetchState.MALFORMED

#: A failed fetch is tried again on the backoff of PUSHMAIL_RETRY_BASE_SECONDS and
#: PUSHMAIL_RETRY_CAP_SECONDS (or the sender's Retry-After) until the message
#: expires (no window of its own: a failure after ``expires_at`` makes it expired).
FETCH_RETRY = RetryPolicy(window=None)

#: The fetch job. ``fetching`` and ``unavailable`` rows are due at ``next_attempt_at``:
#: a worker claims one by pushing that time PUSHMAIL_CLAIM_SECONDS ahead
#: (``pushmail_site.jobs.claim_until``), so a claim that a killed worker left times
#: out after that long, and the sweep (``requeue_due``) queues the row again.
FETCH = StateGraph(
    "fetch",
    states=[
        State(NOTIFIED, doc="Notification accepted; the body is still at the sender's."),
        State(FETCHING, retry=FETCH_RETRY, doc="A fetch is queued or running."),
        State(FETCHED, doc="The body is here."),
        State(UNAVAILABLE, retry=FETCH_RETRY, doc="The last fetch failed; retried with backoff until expiry."),
        State(WITHDRAWN, terminal=True, doc="The sender withdrew the message."),
        State(EXPIRED, doc="The sender's retention ended before the body was fetched."),
        State(TAMPERED, doc="The body did not match its notification; never fetched again."),
        State(MALFORMED, doc="The body broke the body schema; never fetched again."),
    ],
    edges={
        NOTIFIED: [FETCHING, WITHDRAWN, EXPIRED],
        # Back to notified: a spam verdict hid every copy before the fetch began (called off).
        FETCHING: [FETCHED, TAMPERED, MALFORMED, UNAVAILABLE, WITHDRAWN, EXPIRED, NOTIFIED],
        UNAVAILABLE: [FETCHED, TAMPERED, MALFORMED, UNAVAILABLE, WITHDRAWN, EXPIRED, NOTIFIED],
        # A withdrawal still reaches a message in any other state.
        FETCHED: [WITHDRAWN],
        EXPIRED: [WITHDRAWN],
        TAMPERED: [WITHDRAWN],
        MALFORMED: [WITHDRAWN],
    },
)

#: The body is still at the sender's: what lists show as "at sender's", what a
#: reader's page polls for, what the API answers 202 for.
BODY_AT_SENDER = frozenset({NOTIFIED, FETCHING, UNAVAILABLE})
#: Rows a worker may claim and the sweep re-queues: the states with a retry policy.
DUE = frozenset(state.value for state in FETCH.states if state.retry is not None)


def retry_delay(*, attempts: int, retry_after: float | None = None) -> timedelta:
    """How long an unavailable fetch waits before its next attempt (:data:`FETCH_RETRY`)."""
    if retry_after:
        return timedelta(seconds=retry_after)
    return backoff(attempts, base=getattr(settings, FETCH_RETRY.base), cap=getattr(settings, FETCH_RETRY.cap))


# --- Inbox entries ---------------------------------------------------------------------------

#: An entry has its message's states, plus ``notice`` (a local system message:
#: never federated, never moves), and the same moves, plus one shortcut: only the
#: entries whose owner asked for the body (opened it) show ``fetching``; the other
#: copies stay ``notified`` until the fetch has an outcome, and go from there to it.
#: A message to thousands of mailboxes here is fetched without writing thousands of
#: entries on its reader's way to the body. Its values are the ones the user API and
#: docs/protocol.md §8.1 show, so EntryState keeps spelling them out.
ENTRY = StateGraph(
    "entry",
    states=[*FETCH.states, State(EntryState.NOTICE, terminal=True, doc="A local system message.")],
    edges={**FETCH.edges, NOTIFIED: [*FETCH.edges[NOTIFIED], FETCHED, UNAVAILABLE, TAMPERED, MALFORMED]},
)
#: The fetch's outcomes that the entries not yet there skip to from ``notified``.
SKIPPED_FETCHING = frozenset({FETCHED, UNAVAILABLE, TAMPERED, MALFORMED})

#: Mail between mailboxes of this instance: the body is here from the start.
LOCAL_ENTRY_START = EntryState.FETCHED
#: A system message, such as a delivery-failure notice.
NOTICE_ENTRY_START = EntryState.NOTICE
#: A message received by SMTP (the gateway app): it arrives whole, so it starts with its body
#: here, and its entries start in its state. Nothing moves it after (no instance can withdraw it).
SMTP_MESSAGE_START = FetchState.FETCHED


def remote_entry_start(remote: RemoteMessage) -> str:
    """A new entry for mail from another instance starts in its message's state."""
    return str(remote.state)


def entries_follow(state: str, remote_ids: list[Any]) -> None:
    """The entries of messages that entered ``state`` enter it too.

    An entry its owner has opened keeps its state (and so its body): a withdrawal
    leaves an opened entry ``fetched``, for the reader keeps what was read. An
    entry already ``withdrawn`` (or ``notice``) has no move left. A withdrawn entry is
    not unread: there is nothing left to read.

    ``fetching`` is the exception: only the entries whose owner asked move there
    (:func:`entries_asked`). And ``fetched`` is entered by the fetch itself, once the
    body is committed (mailbox.fetching), so that readers have it first.
    """
    fields = {"read": True} if state == EntryState.WITHDRAWN else None
    entries = InboxEntry.objects.filter(remote_id__in=remote_ids, opened_at__isnull=True)
    transition_rows(entries, ENTRY, state, fields=fields)


#: Copies moved per transaction when a fetched body's copies follow it (:func:`entries_follow_in_batches`).
FOLLOW_BATCH = 500


def entries_follow_in_batches(state: str, remote_id: Any) -> int:
    """As :func:`entries_follow` for one message, a short transaction per batch of copies; returns how many.

    A reader opening their copy waits for whatever transaction holds it: with thousands of copies
    moved in one, every reader who came meanwhile would wait for all of them.
    """
    moved, last = 0, 0
    sources = ENTRY.sources_of(state)
    while True:
        with transaction.atomic():
            waiting = InboxEntry.objects.filter(remote_id=remote_id, opened_at__isnull=True, state__in=sources)
            batch = list(waiting.filter(pk__gt=last).order_by("pk").values_list("pk", flat=True)[:FOLLOW_BATCH])
            if not batch:
                return moved
            moved += len(transition_rows(waiting.filter(pk__in=batch), ENTRY, state))
            last = batch[-1]


def entries_asked(entry_ids: list[Any]) -> None:
    """The entries whose owners asked for a body now being fetched show ``fetching``."""
    asked = InboxEntry.objects.filter(pk__in=entry_ids, state=NOTIFIED, remote__state=FETCHING)
    transition_rows(asked, ENTRY, FETCHING)


for _state in FETCH.values:
    if _state not in (FETCHING, FETCHED):
        FETCH.on_enter(_state)(partial(entries_follow, _state))


# --- Received files ----------------------------------------------------------------------------

#: The attachment fetch. A reader's download or preview, or a filter's forward, creates the
#: row (``wanted``); a worker claims it (``fetching``) and ends in one of the other states
#: (mailbox.attachment_fetching); the admin's "retry now" moves many at once.
A = AttachmentFetchState

ATTACHMENT_FETCH = StateGraph(
    "attachment fetch",
    states=[
        State(A.WANTED, doc="A reader asked for the file; a fetch is queued (due at next_attempt_at)"),
        State(
            A.FETCHING,
            doc="A worker holds the row until next_attempt_at: the transfer's deadline plus "
            "PUSHMAIL_CLAIM_SECONDS. Past that its worker is gone and the sweep makes it wanted again",
        ),
        State(A.FETCHED, terminal=True, doc="The sender's bytes are here, verified against the manifest"),
        State(
            A.UNAVAILABLE,
            retry=RetryPolicy(),  # backoff, honouring Retry-After, until the message expires
            doc="The last attempt failed (no answer, 404, 5xx, 429); the next one is at next_attempt_at",
        ),
        State(A.WITHDRAWN, terminal=True, doc="The sender answered 410 withdrawn"),
        State(A.EXPIRED, terminal=True, doc="The sender answered 410 otherwise, or the message expired first"),
        State(A.TAMPERED, terminal=True, doc="The bytes differ from the manifest's size or digest; none stored"),
        State(A.TOO_LARGE, terminal=True, doc="Over PUSHMAIL_MAX_ATTACHMENT_BYTES: never asked of the sender"),
        State(A.BLOCKED, terminal=True, doc="Its cleaned name is of a blocked type: never asked of the sender"),
    ],
    edges={
        A.WANTED: [A.FETCHING, A.TOO_LARGE, A.BLOCKED, A.EXPIRED],
        A.FETCHING: [A.FETCHED, A.TAMPERED, A.UNAVAILABLE, A.WITHDRAWN, A.EXPIRED, A.WANTED],
        A.UNAVAILABLE: [A.FETCHING, A.WANTED, A.TOO_LARGE, A.BLOCKED, A.EXPIRED],
    },
)

#: States in which the file is on its way: a reader's request joins the fetch.
IN_FLIGHT = frozenset({A.WANTED, A.FETCHING})
#: States a worker may claim (when due).
CLAIMABLE = frozenset({A.WANTED, A.UNAVAILABLE})
