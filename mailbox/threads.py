"""Conversations: which received messages are shown together as one thread.

Sent and received mail get their key the same way, so the key function lives
below both, with the sender side (outbox.threads), which keys a message as it
is sent; the recipient side keys each message as it arrives (mailbox.ingest),
with :func:`conversation_keys`, which also threads mail whose client dropped
``In-Reply-To`` and ``References`` (as Gmail does: see its docstring).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from outbox import selectors as outbox_selectors
from outbox.threads import normalized_subject, reply_prefixed, thread_key

from .models import InboxEntry

__all__ = ["SUBJECT_WINDOW", "conversation_keys", "normalized_subject", "thread_key"]

# How far back a reply that lost its headers is matched to a conversation by its subject.
SUBJECT_WINDOW = timedelta(days=30)
# At most this many recent messages of the same correspondent are compared by subject.
_SUBJECT_SCAN = 200


def conversation_keys(
    *,
    owner_ids: Sequence[int],
    message_id: str,
    in_reply_to: str,
    references: Sequence[str],
    subject: str,
    sender: str,
    at: datetime,
) -> dict[int, str]:
    """Each owner's conversation key for a message arriving for them.

    - ``References`` name the root: that is the key (``thread_key``).
    - ``In-Reply-To`` alone: the parent's key when the parent was sent from
      here or received by the owner, else the parent itself.
    - Neither, and a subject that reads as a reply or forward ("Re: …",
      "Fwd: …"): the conversation, within SUBJECT_WINDOW, of the owner's most
      recent message with the same subject (prefixes aside) that shares a
      participant: one from the same sender, or one the owner sent to them.
      Two queries, whatever the number of owners.
    - Otherwise the message starts its own conversation.
    """
    key = thread_key(message_id=message_id, in_reply_to=in_reply_to, references=references)
    keys = dict.fromkeys(owner_ids, key)
    if references or not owner_ids:
        return keys
    if in_reply_to:
        parent = outbox_selectors.thread_key_of_sent(message_id=in_reply_to)
        if parent:
            return dict.fromkeys(owner_ids, parent)
        parents = (
            InboxEntry.objects.filter(owner_id__in=owner_ids, remote__message_id=in_reply_to)
            .exclude(thread_key="")
            .values_list("owner_id", "thread_key")
        )
        keys.update(parents)
        return keys
    if not reply_prefixed(subject):
        return keys
    wanted = normalized_subject(subject)
    if not wanted:
        return keys
    since = at - SUBJECT_WINDOW
    found: dict[int, tuple[datetime, str]] = {}
    received = (
        InboxEntry.objects.filter(owner_id__in=owner_ids, sender=sender, received_at__gte=since)
        .exclude(thread_key="")
        .order_by("-received_at")
        .values_list("owner_id", "subject", "thread_key", "received_at")[:_SUBJECT_SCAN]
    )
    for owner_id, their_subject, their_key, when in received:
        if owner_id not in found and normalized_subject(their_subject) == wanted:
            found[owner_id] = (when, their_key)
    for owner_id, their_subject, their_key, when in outbox_selectors.recent_threads_to(
        user_ids=list(owner_ids), address=sender, since=since, limit=_SUBJECT_SCAN
    ):
        if normalized_subject(their_subject) == wanted and (owner_id not in found or found[owner_id][0] < when):
            found[owner_id] = (when, their_key)
    for owner_id, (_, their_key) in found.items():
        keys[owner_id] = their_key
    return keys
