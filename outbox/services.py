"""The sender side's services, as other apps (and the webmail and API) call them.

Each lives in the module of what it does: composing (``compose``), drafts
(``drafts``, ``uploads``, ``draft_sending``), sending (``sending``), the sender's
copies (``sent_folder``), the delivery worker (``delivery``), what peers may fetch
(``serving``), withdrawal (``withdrawal``) and retention (``retention``). Their state graphs are in ``states``;
what may be sent is in ``rules``.
"""

from __future__ import annotations

from .bodies import canonical_content, manifest_of
from .compose import (
    format_date,
    forward_header,
    forward_subject,
    other_addresses,
    quotable_text,
    quote,
    render_markdown,
    reply_references,
    reply_subject,
    reply_to_sent,
)
from .delivery import LEGACY_REASON, deliver_notification, notification_for, queue_deliveries, requeue_due_deliveries
from .draft_sending import Outgoing, check_draft, queue_send, send_draft, send_due_drafts, undo_send
from .drafts import (
    DraftLocked,
    Prepared,
    create_draft,
    delete_draft,
    draft_for_key,
    open_once,
    unsaved_draft,
    update_draft,
)
from .retention import mark_fetched_by_all
from .rules import check_subject, max_recipients, parse_addresses, split_addresses
from .sending import UNKNOWN_MAILBOX_REASON, send_from_list, send_list_issue, send_message
from .sent_folder import restore_sent, star_sent, trash_sent
from .serving import BodyGone, NoAcceptedRecipient, NotOffered, offered_message, serve_attachment, serve_body
from .uploads import add_attachments, attach_stored, remove_attachment
from .withdrawal import requeue_due_withdrawals, send_withdrawal, withdraw_message


def requeue_due(*, limit: int = 1000) -> int:
    """Queue every notification and withdrawal that is due, whatever the broker holds."""
    return requeue_due_deliveries(limit=limit) + requeue_due_withdrawals(limit=limit)


__all__ = [
    "LEGACY_REASON",
    "UNKNOWN_MAILBOX_REASON",
    "BodyGone",
    "DraftLocked",
    "NoAcceptedRecipient",
    "NotOffered",
    "Outgoing",
    "Prepared",
    "add_attachments",
    "attach_stored",
    "canonical_content",
    "check_draft",
    "check_subject",
    "create_draft",
    "delete_draft",
    "deliver_notification",
    "draft_for_key",
    "format_date",
    "forward_header",
    "forward_subject",
    "manifest_of",
    "mark_fetched_by_all",
    "max_recipients",
    "notification_for",
    "offered_message",
    "open_once",
    "other_addresses",
    "parse_addresses",
    "queue_deliveries",
    "queue_send",
    "quotable_text",
    "quote",
    "remove_attachment",
    "render_markdown",
    "reply_references",
    "reply_subject",
    "reply_to_sent",
    "requeue_due",
    "restore_sent",
    "send_draft",
    "send_due_drafts",
    "send_from_list",
    "send_list_issue",
    "send_message",
    "send_withdrawal",
    "serve_attachment",
    "serve_body",
    "split_addresses",
    "star_sent",
    "trash_sent",
    "undo_send",
    "unsaved_draft",
    "update_draft",
    "withdraw_message",
]
