"""The content filter's job rows (rspamd): their kinds, states and moves, as data.

One :class:`~reputation.models.ContentCheck` row per remote message and kind is
the job of asking rspamd about that message's fetched body: ``check`` (score it,
after the fetch), ``learn_spam`` / ``learn_ham`` (a reader's "Report spam" or
"Not spam", or an overturned verdict), ``fuzzy_add`` (the message was judged spam
here: near-copies are recognized at once) and ``fuzzy_del`` (a domain admin
overturned that verdict). A worker claims a due row by pushing ``next_attempt_at``
PUSHMAIL_CLAIM_SECONDS ahead (a claim that a killed worker left lapses, and the
sweep queues the row again). Every move goes through
:func:`pushmail_site.states.transition`.
"""

from __future__ import annotations

from django.db import models

from pushmail_site.states import RetryPolicy, State, StateGraph


class ContentJobKind(models.TextChoices):
    CHECK = "check", "Check"
    LEARN_SPAM = "learn_spam", "Learn spam"
    LEARN_HAM = "learn_ham", "Learn ham"
    FUZZY_ADD = "fuzzy_add", "Add to fuzzy storage"
    FUZZY_DEL = "fuzzy_del", "Remove from fuzzy storage"


class ContentJobState(models.TextChoices):
    PENDING = "pending"
    RETRYING = "retrying"
    DONE = "done"
    FAILED = "failed"


S = ContentJobState

#: rspamd did not answer (down, timeout, 5xx, a refused password): tried again on the backoff of
#: PUSHMAIL_RETRY_BASE_SECONDS and PUSHMAIL_RETRY_CAP_SECONDS for RSPAMD_RETRY_WINDOW_SECONDS.
CONTENT_RETRY = RetryPolicy(window="RSPAMD_RETRY_WINDOW_SECONDS")

CONTENT_JOB = StateGraph(
    "content check",
    states=[
        State(S.PENDING, retry=CONTENT_RETRY, doc="Queued: due at next_attempt_at"),
        State(S.RETRYING, retry=CONTENT_RETRY, doc="rspamd did not answer; the next attempt is at next_attempt_at"),
        State(S.DONE, terminal=True, doc="rspamd answered: a check's score, or a lesson taken"),
        State(
            S.FAILED,
            terminal=True,
            doc="Given up: no body here to show rspamd, rspamd refused it, or it stayed down past the window",
        ),
    ],
    edges={
        S.PENDING: [S.DONE, S.RETRYING, S.FAILED],
        S.RETRYING: [S.DONE, S.RETRYING, S.FAILED],
    },
)

#: States a worker may claim (when due) and the sweep re-queues.
DUE = frozenset(state.value for state in CONTENT_JOB.states if state.retry is not None)
