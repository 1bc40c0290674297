"""Where mail new to this instance goes, before anyone has read it.

A message is judged spam on arrival when it belongs to a campaign already judged
spam here, or when its sender or origin has earned a poor reputation; the reason
given is what the Spam folder and the domain admin see.
"""

from __future__ import annotations

from collections.abc import Sequence

from mailbox.models import RemoteMessage

from . import campaigns, scores


def spam_reason_for_new(*, remote: RemoteMessage, recipients: Sequence[str] = ()) -> str:
    """Why ``remote`` (just notified, no entries yet) goes straight to Spam, or "" for the Inbox.

    A chain: the first reason found wins. Filing the message in its campaign comes first, always.
    """
    return campaigns.spam_reason_for_new(remote=remote, recipients=recipients) or scores.reason_for_new(remote) or ""


def spam_reasons_for_new(*, arrivals: Sequence[tuple[RemoteMessage, Sequence[str]]]) -> list[str]:
    """:func:`spam_reason_for_new` for messages new here together (a batch), in a few queries, in order."""
    by_campaign = campaigns.spam_reasons_for_new(arrivals)
    by_reputation = scores.reasons_for_new([remote for remote, _ in arrivals])
    return [first or second or "" for first, second in zip(by_campaign, by_reputation, strict=True)]
