"""Replies to and forwards of received mail: drafts on the sender side, made of what the reader may read."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction

from accounts.models import User
from attachments.services import AttachmentInput
from outbox import services as outbox
from outbox.models import Draft

from .content import ReadableContent, readable_content_for
from .models import EntryState


def _entry_parent(entry: Any) -> tuple[str, list[str], datetime]:
    """(message id, references, date) of an inbox entry's message; notices have none."""
    if entry.local is not None:
        return entry.local.message_id, list(entry.local.references or []), entry.local.date
    if entry.remote is not None:
        return entry.remote.message_id, list(entry.remote.references or []), entry.remote.date
    return "", [], entry.received_at


def _why_no_body(entry: Any) -> str:
    return {
        EntryState.WITHDRAWN: "The message was withdrawn by the sender",
        EntryState.EXPIRED: "The message expired at the sender's server before it was fetched",
        EntryState.TAMPERED: "The message's body did not match what was announced and was refused",
        EntryState.MALFORMED: "The message's body was malformed and was refused",
    }.get(entry.state, "The message is still at the sender's server")


def reply_to_entry(*, owner: User, entry: Any, reply_all: bool = False) -> outbox.Prepared:
    """A draft answering an inbox entry, quoting it when its body is here."""
    body = readable_content_for(entry=entry).body
    message_id, references, date = _entry_parent(entry)
    own = {owner.email.lower()}
    to = outbox.other_addresses([entry.sender], own)
    cc: list[str] = []
    notes = []
    if reply_all:
        if body is not None:
            to = outbox.other_addresses([entry.sender, *(body.get("to") or [])], own)
            cc = outbox.other_addresses(body.get("cc") or [], own | set(to))
        else:
            notes.append(
                f"{_why_no_body(entry)}, so only the sender is addressed: the other recipients are listed in its body."
            )
    if body is not None and outbox.quotable_text(body):
        text = f"\n\nOn {outbox.format_date(date)}, {entry.sender} wrote:\n{outbox.quote(outbox.quotable_text(body))}\n"
    else:
        text = ""
        if body is None:
            notes.append(f"{_why_no_body(entry)}, so the reply does not quote it.")
    draft = outbox.create_draft(
        owner=owner,
        to=", ".join(to),
        cc=", ".join(cc),
        subject=outbox.reply_subject(entry.subject),
        text=text,
        in_reply_to=message_id,
        references=outbox.reply_references(message_id, references),
        signature=False,
    )
    return outbox.Prepared(draft, notes)


def forward_entry(*, owner: User, entry: Any) -> outbox.Prepared:
    """A draft forwarding an inbox entry with the attachments its reader already has.

    What the reader may read (``mailbox.content``) is all a forward carries: a
    message withdrawn before it was opened, or refused, forwards no text and no
    file, and a received file is attached only once this message's own fetch
    brought it from its sender.
    """
    content = readable_content_for(entry=entry)
    body = content.body
    _message_id, _references_, date = _entry_parent(entry)
    notes = []
    header = outbox.forward_header(
        sender=entry.sender,
        date=date,
        subject=entry.subject,
        to=list((body or {}).get("to") or []),
        cc=list((body or {}).get("cc") or []),
    )
    if body is None:
        text = f"\n\n{header}\n\n"
        notes.append(f"{_why_no_body(entry)}, so its text is not included.")
    else:
        text = f"\n\n{header}\n\n{outbox.quotable_text(body)}\n"

    with transaction.atomic():
        draft = outbox.create_draft(
            owner=owner, subject=outbox.forward_subject(entry.subject), text=text, signature=False
        )
        notes += _carry_attachments(draft, content)
    return outbox.Prepared(draft, notes)


def _carry_attachments(draft: Draft, content: ReadableContent) -> list[str]:
    """Attach to ``draft`` the files of ``content`` held here; notes name those left out and why."""
    refused = [item.name for item in content.attachments if item.blocked]
    carried = [item for item in content.attachments if not item.blocked]
    left = [item.name for item in carried if item.blob is None]
    outbox.attach_stored(
        draft=draft,
        files=[
            AttachmentInput(blob=item.blob, name=item.name, content_type=item.content_type)
            for item in carried
            if item.blob is not None
        ],
    )
    notes = []
    if refused:
        notes.append("Not attached, because files of their type could run as programs: " + ", ".join(refused) + ".")
    if left:
        notes.append(
            "Not attached, because they have not been downloaded to this server yet: "
            + ", ".join(left)
            + ". Open them in the original message first, then forward again."
        )
    return notes
