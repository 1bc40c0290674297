"""Recipient side: the writes other apps and the views call, by concern.

- mail arriving in inboxes (notifications, mail received by SMTP, local mail, notices): mailbox.ingest
- pulling bodies on read, retries and sweeps: mailbox.fetching
- withdrawals reaching inboxes: mailbox.withdrawals
- folders, labels and Trash: mailbox.folders
- spam: a reader's report moving their copy, a verdict hiding the others: mailbox.spam

The states these write, and every move between them, are declared in mailbox.states.
"""

from __future__ import annotations

from .fetching import (
    expire_unfetched,
    fetch_body,
    open_entries,
    open_entry,
    prefetch_from_correspondents,
    request_fetch,
    requeue_due,
    retry_fetch_now,
)
from .ingest import (
    ConflictingNotification,
    RecipientResult,
    SmtpAttachment,
    SmtpDelivery,
    SmtpFiling,
    accept_notification,
    accept_notifications,
    accept_smtp_message,
    deliver_local_entries,
    file_smtp_messages,
    post_notice,
    smtp_filing,
)
from .spam import file_own_copy, hide_as_spam, lift_spam_verdict
from .withdrawals import WithdrawalResult, accept_withdrawal, withdraw_local_entries

__all__ = [
    "ConflictingNotification",
    "RecipientResult",
    "SmtpAttachment",
    "SmtpDelivery",
    "SmtpFiling",
    "WithdrawalResult",
    "accept_notification",
    "accept_notifications",
    "accept_smtp_message",
    "accept_withdrawal",
    "deliver_local_entries",
    "expire_unfetched",
    "file_own_copy",
    "file_smtp_messages",
    "hide_as_spam",
    "lift_spam_verdict",
    "fetch_body",
    "open_entries",
    "open_entry",
    "post_notice",
    "prefetch_from_correspondents",
    "request_fetch",
    "requeue_due",
    "retry_fetch_now",
    "smtp_filing",
    "withdraw_local_entries",
]
