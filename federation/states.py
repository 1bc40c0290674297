"""The federation app's job rows: a domain learned from an SMTP message's ``Pushmail`` header.

Every change of ``LearnedDomain.state`` goes through
:func:`pushmail_site.states.transition` with this graph (the table in
docs/protocol.md, "The Pushmail header").
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings

from pushmail_site.jobs import backoff
from pushmail_site.states import RetryPolicy, State, StateGraph

from .models import LearnedDomainState

# Discovery that does not answer is tried again with the usual backoff, for a day at most.
CHECK_RETRY = RetryPolicy(window="PUSHMAIL_LEARNING_WINDOW")

LEARNED = StateGraph(
    "learned domain",
    states=[
        State(LearnedDomainState.PENDING, retry=CHECK_RETRY, doc="Heard; discovery of the domain not yet done."),
        State(LearnedDomainState.CONFIRMED, doc="Discovery returned a valid document listing the domain."),
        State(LearnedDomainState.NOT_PUSHMAIL, doc="Discovery said legacy, or never answered: the header is ignored."),
    ],
    edges={
        LearnedDomainState.PENDING: [
            LearnedDomainState.PENDING,  # discovery did not answer: try again later
            LearnedDomainState.CONFIRMED,
            LearnedDomainState.NOT_PUSHMAIL,
        ],
        # Heard again (after the cached answers may have changed): check again.
        LearnedDomainState.CONFIRMED: [LearnedDomainState.PENDING],
        LearnedDomainState.NOT_PUSHMAIL: [LearnedDomainState.PENDING],
    },
)


def retry_window(graph: StateGraph, state: str) -> timedelta:
    """How long after the domain was last heard of a check in ``state`` is retried."""
    policy = graph.by_value[state].retry
    if policy is None or policy.window is None:
        raise ValueError(f"{graph.name}: {state} has no retry window")
    window = getattr(settings, policy.window)
    return window if isinstance(window, timedelta) else timedelta(seconds=window)


def retry_delay(graph: StateGraph, state: str, *, attempts: int) -> timedelta:
    """The backoff before the next check."""
    policy = graph.by_value[state].retry
    if policy is None:
        raise ValueError(f"{graph.name}: {state} is not retried")
    return backoff(attempts, base=getattr(settings, policy.base), cap=getattr(settings, policy.cap))
