"""A reader's subscription as a job row: its states, the moves between them, and how requests are retried.

Every change of ``Subscription.state`` goes through :func:`pushmail_site.states.transition` with
this graph. The states ending in -ing (and ``pending``) wait for the list's instance to acknowledge
the signed request (docs/protocol.md §13.2); they are retried with backoff until it does.
The table of docs/protocol.md §13.5 is this graph.
"""

from __future__ import annotations

from pushmail_site.states import RetryPolicy, State, StateGraph

from .models import SubscriptionState as S

# Retried until acknowledged, with the usual backoff: a reader's unsubscribe must not be lost.
REQUEST_RETRY = RetryPolicy()

SUBSCRIPTION = StateGraph(
    "subscription",
    states=[
        State(S.PENDING, retry=REQUEST_RETRY, doc="Subscribe sent (or to be sent), not acknowledged yet."),
        State(S.ACTIVE, doc="The list recorded it: its issues are delivered here."),
        State(S.PAUSING, retry=REQUEST_RETRY, doc="Pause asked: issues are no longer delivered; not acknowledged yet."),
        State(S.PAUSED, doc="The list recorded the pause."),
        State(S.RESUMING, retry=REQUEST_RETRY, doc="Resume asked: issues are delivered again; not acknowledged yet."),
        State(
            S.UNSUBSCRIBING,
            retry=REQUEST_RETRY,
            doc="Unsubscribe asked: nothing more is delivered here; not acknowledged yet.",
        ),
        State(S.UNSUBSCRIBED, doc="The list acknowledged the unsubscribe (or has no such subscriber)."),
        State(S.REFUSED, doc="The list's instance refused the subscription for good (no such list)."),
    ],
    edges={
        S.PENDING: [S.PENDING, S.ACTIVE, S.REFUSED, S.UNSUBSCRIBING],
        S.ACTIVE: [S.PAUSING, S.UNSUBSCRIBING],
        S.PAUSING: [S.PAUSING, S.PAUSED, S.RESUMING, S.UNSUBSCRIBING],
        S.PAUSED: [S.RESUMING, S.UNSUBSCRIBING],
        S.RESUMING: [S.RESUMING, S.ACTIVE, S.PAUSING, S.UNSUBSCRIBING],
        S.UNSUBSCRIBING: [S.UNSUBSCRIBING, S.UNSUBSCRIBED, S.PENDING],
        S.UNSUBSCRIBED: [S.PENDING],
        S.REFUSED: [S.PENDING],
    },
)

#: What each waiting state asks the list to record, and the state the acknowledgement leads to.
REQUESTS: dict[str, tuple[str, str]] = {
    S.PENDING: ("active", S.ACTIVE),
    S.RESUMING: ("active", S.ACTIVE),
    S.PAUSING: ("paused", S.PAUSED),
    S.UNSUBSCRIBING: ("unsubscribed", S.UNSUBSCRIBED),
}

#: States in which the reader wants the list's issues: delivered here. Any other is skipped.
RECEIVING = (S.PENDING, S.ACTIVE, S.RESUMING)
