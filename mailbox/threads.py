"""Conversation keys: messages that share one are shown as one thread.

Sent and received mail get their key the same way, so the function lives
below both, with the sender side (outbox.threads), which keys a message as it
is sent; the recipient side keys each message as it arrives (mailbox.ingest).
"""

from outbox.threads import thread_key

__all__ = ["thread_key"]
