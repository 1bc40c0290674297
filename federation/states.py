"""The federation app's job rows: a domain learned from an SMTP message's ``Pushmail`` header.

Every change of ``LearnedDomain.state`` goes through
:func:`pushmail_site.states.transition` with this graph (the table in
docs/protocol.md, "The Pushmail header").
"""

from __future__ import annotations

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
