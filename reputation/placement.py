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
    Most messages join a campaign open here already: one statement files it and reads both reasons.
    """
    joined = campaigns.join_open_campaign(remote=remote, recipients=recipients)
    if joined is not None:
        by_campaign, sender = joined
        return by_campaign or scores.reason_from(remote, sender) or ""
    return campaigns.spam_reason_for_new(remote=remote, recipients=recipients) or scores.reason_for_new(remote) or ""


def spam_reasons_for_new(*, remotes: Sequence[RemoteMessage], recipients: Sequence[Sequence[str]]) -> list[str]:
    """:func:`spam_reason_for_new` for several messages new here (filed together): the same answers,
    in a few statements for all of them."""
    by_campaign = campaigns.spam_reasons_for_new(remotes=remotes, recipients=recipients)
    by_score = scores.reasons_for_new(remotes)
    return [campaign or score or "" for campaign, score in zip(by_campaign, by_score, strict=True)]
