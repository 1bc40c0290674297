"""The attachment fetch (recipient side): its states and moves, as data.

One :class:`~mailbox.models.ReceivedAttachment` row per received message
and manifest position is the job that brings that file from the message's
sender. A reader's download or preview, or a filter's forward, creates it (``wanted``); a worker
claims it (``fetching``) and ends in one of the other states. Every move goes
through :func:`pushmail_site.states.transition` (or ``transition_rows`` for the
admin's bulk action). docs/protocol.md §8.4 shows the same graph, and a test
holds the two together.
"""

from __future__ import annotations

from django.db import models

from pushmail_site.states import RetryPolicy, State, StateGraph


class AttachmentFetchState(models.TextChoices):
    WANTED = "wanted"
    FETCHING = "fetching"
    FETCHED = "fetched"
    UNAVAILABLE = "unavailable"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"
    TAMPERED = "tampered"
    TOO_LARGE = "too_large"
    BLOCKED = "blocked"


S = AttachmentFetchState

ATTACHMENT_FETCH = StateGraph(
    "attachment fetch",
    states=[
        State(S.WANTED, doc="A reader asked for the file; a fetch is queued (due at next_attempt_at)"),
        State(
            S.FETCHING,
            doc="A worker holds the row until next_attempt_at: the transfer's deadline plus "
            "PUSHMAIL_CLAIM_SECONDS. Past that its worker is gone and the sweep makes it wanted again",
        ),
        State(S.FETCHED, terminal=True, doc="The sender's bytes are here, verified against the manifest"),
        State(
            S.UNAVAILABLE,
            retry=RetryPolicy(),  # backoff, honouring Retry-After, until the message expires
            doc="The last attempt failed (no answer, 404, 5xx, 429); the next one is at next_attempt_at",
        ),
        State(S.WITHDRAWN, terminal=True, doc="The sender answered 410 withdrawn"),
        State(S.EXPIRED, terminal=True, doc="The sender answered 410 otherwise, or the message expired first"),
        State(S.TAMPERED, terminal=True, doc="The bytes differ from the manifest's size or digest; none stored"),
        State(S.TOO_LARGE, terminal=True, doc="Over PUSHMAIL_MAX_ATTACHMENT_BYTES: never asked of the sender"),
        State(S.BLOCKED, terminal=True, doc="Its cleaned name is of a blocked type: never asked of the sender"),
    ],
    edges={
        S.WANTED: [S.FETCHING, S.TOO_LARGE, S.BLOCKED, S.EXPIRED],
        S.FETCHING: [S.FETCHED, S.TAMPERED, S.UNAVAILABLE, S.WITHDRAWN, S.EXPIRED, S.WANTED],
        S.UNAVAILABLE: [S.FETCHING, S.WANTED, S.TOO_LARGE, S.BLOCKED, S.EXPIRED],
    },
)

#: States in which the file is on its way: a reader's request joins the fetch.
IN_FLIGHT = frozenset({S.WANTED, S.FETCHING})
#: States a worker may claim (when due).
CLAIMABLE = frozenset({S.WANTED, S.UNAVAILABLE})
