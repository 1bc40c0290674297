"""Where mail new to this instance goes, before anyone has read it.

A message is judged spam on arrival when it belongs to a campaign already judged
spam here, or when its sender or origin has earned a poor reputation; the reason
given is what the Spam folder and the domain admin see.
"""

from __future__ import annotations

from mailbox.models import RemoteMessage

from . import scores


def spam_reason_for_new(*, remote: RemoteMessage) -> str:
    """Why ``remote`` (just notified, no entries yet) goes straight to Spam, or "" for the Inbox."""
    return scores.reason_for_new(remote) or ""
