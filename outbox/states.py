"""The sender side's job rows: their states, the moves between them, and how they are retried.

Every change of ``Delivery.state``, ``Withdrawal.state`` and ``Draft.state``
goes through :func:`pushmail_site.states.transition` (one row) or
:func:`pushmail_site.states.transition_rows` (a bulk update) with one of these
graphs, which refuse any move not listed here. The delivery and withdrawal
graphs are the tables of docs/protocol.md §8.2 (a test holds them together).
"""

from __future__ import annotations

from pushmail_site.states import RetryPolicy, State, StateGraph

from .models import DeliveryState, DraftState, WithdrawalState

# Retried with exponential backoff (or the peer's Retry-After) until the window
# after the message's date (a notification) or its withdrawal (a withdrawal) ends.
PEER_RETRY = RetryPolicy(window="PUSHMAIL_DELIVERY_WINDOW")

DELIVERY = StateGraph(
    "delivery",
    states=[
        State(DeliveryState.PENDING, retry=PEER_RETRY, doc="Not attempted yet."),
        State(
            DeliveryState.NOTIFIED,
            terminal=True,
            doc="The recipient domain answered for each recipient (by SMTP: its mail server took or refused each).",
        ),
        State(
            DeliveryState.RETRYING,
            retry=PEER_RETRY,
            doc="The last attempt failed in a way worth retrying (by SMTP: a 4xx or no server reachable).",
        ),
        State(DeliveryState.FAILED, doc="Given up; an operator may retry it now."),
    ],
    edges={
        DeliveryState.PENDING: [
            DeliveryState.NOTIFIED,  # answered, or a domain hosted here
            DeliveryState.RETRYING,  # retryable failure, or the admin's "retry now"
            DeliveryState.FAILED,  # legacy (SMTP off), no mail server, permanent, window over, withdrawn first
        ],
        DeliveryState.RETRYING: [DeliveryState.NOTIFIED, DeliveryState.RETRYING, DeliveryState.FAILED],
        DeliveryState.FAILED: [DeliveryState.RETRYING],  # the admin's "retry now"
    },
)

WITHDRAWAL = StateGraph(
    "withdrawal",
    states=[
        State(WithdrawalState.PENDING, retry=PEER_RETRY, doc="To be sent, or retried at next_attempt_at."),
        State(WithdrawalState.SENT, terminal=True, doc="Acknowledged (or 404), a legacy domain, or a local one."),
        State(WithdrawalState.FAILED, terminal=True, doc="A permanent error, or the window is over."),
    ],
    edges={WithdrawalState.PENDING: [WithdrawalState.PENDING, WithdrawalState.SENT, WithdrawalState.FAILED]},
)

# Send with undo: Send schedules the draft for send_at (PUSHMAIL_UNDO_SEND_SECONDS
# later); Undo, or a check that fails when it is due, takes it back to a draft.
DRAFT = StateGraph(
    "draft",
    states=[
        State(DraftState.DRAFT, doc="Being written; saves and attachments change it."),
        State(DraftState.SCHEDULED, doc="Sent with undo: goes out at send_at unless undone."),
        State(DraftState.SENT, terminal=True, doc="Turned into a Message (sent_message)."),
    ],
    edges={
        DraftState.DRAFT: [DraftState.SCHEDULED],
        DraftState.SCHEDULED: [DraftState.DRAFT, DraftState.SENT],
    },
)
