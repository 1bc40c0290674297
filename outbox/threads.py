"""Conversation keys: messages that share one are shown as one thread."""

from __future__ import annotations

from collections.abc import Sequence


def thread_key(*, message_id: str, in_reply_to: str = "", references: Sequence[str] = ()) -> str:
    """The Message-ID that started the conversation.

    ``references`` lists the chain oldest first (RFC 5322 §3.6.4), so its first
    entry is the root; a reply without references hangs off its parent.
    """
    for candidate in (*references[:1], in_reply_to, message_id):
        if candidate:
            return candidate[:400]
    return ""
