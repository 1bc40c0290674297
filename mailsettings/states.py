"""The job rows of mail settings: a vacation reply owed, a filter's forward. Their states and moves.

Every change of ``VacationReply.state`` and ``Forward.state`` goes through
:func:`pushmail_site.states.transition` with one of these graphs.
"""

from __future__ import annotations

from pushmail_site.states import RetryPolicy, State, StateGraph

from .models import AutoSendState

# A reply or forward that could not be sent (the sender's sending paused, a passing error)
# is tried again with backoff for a day, then given up.
AUTO_RETRY = RetryPolicy(window="PUSHMAIL_AUTO_SEND_WINDOW")

VACATION_REPLY = StateGraph(
    "vacation reply",
    states=[
        State(AutoSendState.WAITING, retry=AUTO_RETRY, doc="Owed to the correspondent; sent by the worker."),
        State(AutoSendState.SENT, terminal=True, doc="Sent through the normal send path (sent_message_id)."),
        State(AutoSendState.SKIPPED, terminal=True, doc="Not sent: the vacation reply was turned off meanwhile."),
        State(AutoSendState.FAILED, terminal=True, doc="Given up: the reply could not be sent within the window."),
    ],
    edges={
        AutoSendState.WAITING: [AutoSendState.WAITING, AutoSendState.SENT, AutoSendState.SKIPPED, AutoSendState.FAILED]
    },
)

FORWARD = StateGraph(
    "forward",
    states=[
        State(
            AutoSendState.WAITING,
            retry=AUTO_RETRY,
            doc="Waiting for the body and its attachments (fetched on demand), then sent.",
        ),
        State(AutoSendState.SENT, terminal=True, doc="Forwarded through the normal send path (sent_message_id)."),
        State(AutoSendState.SKIPPED, terminal=True, doc="Not sent: the message was deleted or is spam."),
        State(
            AutoSendState.FAILED,
            terminal=True,
            doc="Given up: the body never came (withdrawn, expired, refused) or sending kept failing.",
        ),
    ],
    edges={
        AutoSendState.WAITING: [AutoSendState.WAITING, AutoSendState.SENT, AutoSendState.SKIPPED, AutoSendState.FAILED]
    },
)
