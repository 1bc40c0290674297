"""Composing: Markdown, and drafts that reply to or forward another message."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import markdown
import nh3
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from accounts.validators import normalize_address
from mailbox.content import ReadableContent, readable_content_for
from mailbox.models import EntryState

from .drafts import Prepared, create_draft
from .models import Draft, DraftAttachment, Message

# --- Markdown --------------------------------------------------------------------

# A conservative allowlist: text structure and links only. No images (remote
# content), no style, no forms, no frames; nh3 drops everything else.
MARKDOWN_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6",
    "hr", "i", "li", "ol", "p", "pre", "strong", "sub", "sup", "table", "tbody", "td", "th", "thead",
    "tr", "ul",
}  # fmt: skip
MARKDOWN_ATTRIBUTES = {"a": {"href", "title"}, "abbr": {"title"}, "td": {"align"}, "th": {"align"}}


def render_markdown(text: str) -> str:
    """Markdown to HTML, then sanitized: no script, handler, style or remote resource survives."""
    html = markdown.markdown(text, extensions=["extra", "sane_lists"], output_format="html")
    return nh3.clean(
        html,
        tags=MARKDOWN_TAGS,
        attributes=MARKDOWN_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )


# --- Reply and forward ---------------------------------------------------------------------

_RE = re.compile(r"^\s*(re|aw|sv)\s*:\s*", re.IGNORECASE)
_FWD = re.compile(r"^\s*(fwd?|fw)\s*:\s*", re.IGNORECASE)


def reply_subject(subject: str) -> str:
    return subject if _RE.match(subject or "") else f"Re: {subject or ''}".rstrip()


def forward_subject(subject: str) -> str:
    return subject if _FWD.match(subject or "") else f"Fwd: {subject or ''}".rstrip()


def quote(text: str) -> str:
    return "\n".join(f"> {line}".rstrip() for line in (text or "").rstrip("\n").split("\n"))


def format_date(value: datetime) -> str:
    return timezone.localtime(value).strftime("%a, %d %b %Y at %H:%M %Z").strip()


def _body_text(body: dict[str, Any]) -> str:
    text = body.get("text") or ""
    if not text and body.get("html"):
        # An HTML-only message: quote its text content.
        text = nh3.clean(body["html"], tags=set())
        text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text


def _entry_parent(entry: Any) -> tuple[str, list[str], datetime]:
    """(message id, references, date) of an inbox entry's message; notices have none."""
    if entry.local is not None:
        return entry.local.message_id, list(entry.local.references or []), entry.local.date
    if entry.remote is not None:
        return entry.remote.message_id, list(entry.remote.references or []), entry.remote.date
    return "", [], entry.received_at


def _references(message_id: str, references: list[str]) -> list[str]:
    if not message_id:
        return []
    chain = [*references, message_id]
    return chain[:1] + chain[-19:] if len(chain) > 20 else chain


def _others(addresses: list[str], exclude: set[str]) -> list[str]:
    result = []
    for value in addresses:
        try:
            address = normalize_address(value)
        except ValidationError:
            continue
        if address not in exclude and address not in result:
            result.append(address)
    return result


def _why_no_body(entry: Any) -> str:
    return {
        EntryState.WITHDRAWN: "The message was withdrawn by the sender",
        EntryState.EXPIRED: "The message expired at the sender's server before it was fetched",
        EntryState.TAMPERED: "The message's body did not match what was announced and was refused",
        EntryState.MALFORMED: "The message's body was malformed and was refused",
    }.get(entry.state, "The message is still at the sender's server")


def reply_to_entry(*, owner: User, entry: Any, reply_all: bool = False) -> Prepared:
    """A draft answering an inbox entry, quoting it when its body is here."""
    body = readable_content_for(entry=entry).body
    message_id, references, date = _entry_parent(entry)
    own = {owner.email.lower()}
    to = _others([entry.sender], own)
    cc: list[str] = []
    notes = []
    if reply_all:
        if body is not None:
            to = _others([entry.sender, *(body.get("to") or [])], own)
            cc = _others(body.get("cc") or [], own | set(to))
        else:
            notes.append(
                f"{_why_no_body(entry)}, so only the sender is addressed: the other recipients are listed in its body."
            )
    if body is not None and _body_text(body):
        text = f"\n\nOn {format_date(date)}, {entry.sender} wrote:\n{quote(_body_text(body))}\n"
    else:
        text = ""
        if body is None:
            notes.append(f"{_why_no_body(entry)}, so the reply does not quote it.")
    draft = create_draft(
        owner=owner,
        to=", ".join(to),
        cc=", ".join(cc),
        subject=reply_subject(entry.subject),
        text=text,
        in_reply_to=message_id,
        references=_references(message_id, references),
        signature=False,
    )
    return Prepared(draft, notes)


def reply_to_sent(*, owner: User, message: Message, reply_all: bool = False) -> Prepared:
    """A follow-up to the user's own sent message: to its recipients, quoting it."""
    own = {owner.email.lower()}
    to = _others(list(message.to or []), own)
    cc = _others(list(message.cc or []), own | set(to)) if reply_all else []
    if not to and not cc:
        to = [owner.email]
    notes: list[str] = []
    # The sender's copy keeps its body for as long as it is in their mailbox.
    body_text = _body_text({"text": message.text, "html": message.html})
    text = f"\n\nOn {format_date(message.date)}, {message.sender_address} wrote:\n{quote(body_text)}\n"
    draft = create_draft(
        owner=owner,
        to=", ".join(to),
        cc=", ".join(cc),
        subject=reply_subject(message.subject),
        text=text,
        in_reply_to=message.message_id,
        references=_references(message.message_id, list(message.references or [])),
        signature=False,
    )
    return Prepared(draft, notes)


def _forward_header(*, sender: str, date: datetime, subject: str, to: list[str], cc: list[str]) -> str:
    lines = [
        "---------- Forwarded message ----------",
        f"From: {sender}",
        f"Date: {format_date(date)}",
        f"Subject: {subject}",
    ]
    if to:
        lines.append("To: " + ", ".join(to))
    if cc:
        lines.append("Cc: " + ", ".join(cc))
    return "\n".join(lines)


def forward_entry(*, owner: User, entry: Any) -> Prepared:
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
    header = _forward_header(
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
        text = f"\n\n{header}\n\n{_body_text(body)}\n"

    with transaction.atomic():
        draft = create_draft(owner=owner, subject=forward_subject(entry.subject), text=text, signature=False)
        notes += _carry_attachments(draft, content)
    return Prepared(draft, notes)


def _carry_attachments(draft: Draft, content: ReadableContent) -> list[str]:
    """Attach to ``draft`` the files of ``content`` held here; notes name those left out and why."""
    refused = [item.name for item in content.attachments if item.blocked]
    carried = [item for item in content.attachments if not item.blocked]
    left = [item.name for item in carried if item.blob is None]
    DraftAttachment.objects.bulk_create(
        DraftAttachment(
            draft=draft, blob=item.blob, name=item.name, content_type=item.content_type, size=item.blob.size
        )
        for item in carried
        if item.blob is not None
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
