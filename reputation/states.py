"""The reputation app's job rows: their states, the moves between them, and how they are retried.

Every change of ``FeedbackReport.state`` and ``ContentCheck.state`` goes through
:func:`pushmail_site.states.transition`, which refuses a move not declared here.

- :data:`FEEDBACK`: a spam report to a message's origin (reputation.feedback). The graph
  is the table of docs/protocol.md §8.5 (a test holds them together). Retried like a
  withdrawal: backoff, the peer's Retry-After, until PUSHMAIL_DELIVERY_WINDOW after the
  verdict.
- :data:`CONTENT_JOB`: the content filter's calls to rspamd (reputation.content_filter).
  One ``ContentCheck`` row per remote message and kind is the job of asking rspamd about
  that message's fetched body: ``check`` (score it, after the fetch), ``learn_spam`` /
  ``learn_ham`` (a reader's "Report spam" or "Not spam", or an overturned verdict),
  ``fuzzy_add`` (the message was judged spam here: near-copies are recognized at once)
  and ``fuzzy_del`` (a domain admin overturned that verdict). A worker claims a due row by
  pushing ``next_attempt_at`` PUSHMAIL_CLAIM_SECONDS ahead (a claim that a killed worker
  left lapses, and the sweep queues the row again).
"""

from __future__ import annotations

from pushmail_site.states import RetryPolicy, State, StateGraph

from .models import ContentJobState, FeedbackState

# --- Spam reports to the origin -----------------------------------------------------------------

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


# --- The content filter (rspamd) ----------------------------------------------------------------

C = ContentJobState

#: rspamd did not answer (down, timeout, 5xx, a refused password): tried again on the backoff of
#: PUSHMAIL_RETRY_BASE_SECONDS and PUSHMAIL_RETRY_CAP_SECONDS for RSPAMD_RETRY_WINDOW_SECONDS.
CONTENT_RETRY = RetryPolicy(window="RSPAMD_RETRY_WINDOW_SECONDS")

CONTENT_JOB = StateGraph(
    "content check",
    states=[
        State(C.PENDING, retry=CONTENT_RETRY, doc="Queued: due at next_attempt_at"),
        State(C.RETRYING, retry=CONTENT_RETRY, doc="rspamd did not answer; the next attempt is at next_attempt_at"),
        State(C.DONE, terminal=True, doc="rspamd answered: a check's score, or a lesson taken"),
        State(
            C.FAILED,
            terminal=True,
            doc="Given up: no body here to show rspamd, rspamd refused it, or it stayed down past the window",
        ),
    ],
    edges={
        C.PENDING: [C.DONE, C.RETRYING, C.FAILED],
        C.RETRYING: [C.DONE, C.RETRYING, C.FAILED],
    },
)

#: States a worker may claim (when due) and the sweep re-queues.
CONTENT_DUE = frozenset(state.value for state in CONTENT_JOB.states if state.retry is not None)
