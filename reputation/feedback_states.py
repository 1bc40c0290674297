"""The states of a spam report to a message's origin (reputation.models.FeedbackReport).

Every change of ``FeedbackReport.state`` goes through
:func:`pushmail_site.states.transition`; the graph is the table of
docs/protocol.md §8.5 (a test holds them together). Retried like a withdrawal:
backoff, the peer's Retry-After, until PUSHMAIL_DELIVERY_WINDOW after the verdict.
"""

from __future__ import annotations

from pushmail_site.states import RetryPolicy, State, StateGraph

from .models import FeedbackState

FEEDBACK_RETRY = RetryPolicy(window="PUSHMAIL_DELIVERY_WINDOW")

FEEDBACK = StateGraph(
    "feedback",
    states=[
        State(FeedbackState.PENDING, retry=FEEDBACK_RETRY, doc="To be sent, or retried at next_attempt_at."),
        State(FeedbackState.SENT, doc="The origin answered 200 (recorded, duplicate or superseded)."),
        State(FeedbackState.FAILED, doc="A permanent error (404, 403, …), a legacy origin, or the window is over."),
    ],
    edges={
        FeedbackState.PENDING: [FeedbackState.PENDING, FeedbackState.SENT, FeedbackState.FAILED],
        # The same verdict reached again (after an overturn): a new report, sent again.
        FeedbackState.SENT: [FeedbackState.PENDING],
        FeedbackState.FAILED: [FeedbackState.PENDING],
    },
)
