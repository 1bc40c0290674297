"""The job row of the SMTP gateway: a spooled message (gateway.models.SpooledMessage). Its states and moves.

A message is ``queued`` from the moment it is answered ``250``; the filing loop
files it (``filed``), or gives it up when it cannot be filed (``failed``: its
recipients get a notice). A passing error (the database) leaves it ``queued``
with a later ``next_attempt_at``. Filing runs inside one transaction with the row
locked, so a process killed mid-batch leaves its rows ``queued`` and due: no
claim to lapse.
"""

from __future__ import annotations

from pushmail_site.states import RetryPolicy, State, StateGraph

from .models import SpoolState

SPOOLED_MESSAGE = StateGraph(
    "spooled message",
    states=[
        State(
            SpoolState.QUEUED,
            retry=RetryPolicy(window="PUSHMAIL_SMTP_FILING_WINDOW"),
            doc="Answered 250 and committed; filed by the filing loop, in batches.",
        ),
        State(SpoolState.FILED, terminal=True, doc="In the recipients' mailboxes; the spooled bytes are dropped."),
        State(
            SpoolState.FAILED,
            terminal=True,
            doc="Could not be filed (unreadable, or kept failing for the window); the recipients got a notice.",
        ),
    ],
    edges={SpoolState.QUEUED: [SpoolState.QUEUED, SpoolState.FILED, SpoolState.FAILED]},
)
