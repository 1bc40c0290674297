"""Conversation keys: messages that share one are shown as one thread."""

from __future__ import annotations

import re
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


# "Re:", "Fwd:", "Fw:" and the forms other languages' clients write ("AW:", "SV:", "WG:"...),
# with an optional count ("Re[2]:"), repeated any number of times.
_REPLY_PREFIX = re.compile(r"^\s*(?:re|fwd?|aw|sv|vs|antw|wg|tr|rv|ref|r)\s*(?:\[\d+\])?\s*:\s*", re.IGNORECASE)


def reply_prefixed(subject: str) -> bool:
    """The subject reads as a reply or a forward ("Re: …", "Fwd: …")."""
    return bool(_REPLY_PREFIX.match(subject or ""))


def normalized_subject(subject: str) -> str:
    """The subject without its reply and forward prefixes, spaces folded, case ignored."""
    text = subject or ""
    while True:
        stripped = _REPLY_PREFIX.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    return " ".join(text.split()).casefold()
