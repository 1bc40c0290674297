"""Composing: Markdown, and what replies and forwards are made of (mailbox.replies answers received mail)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import markdown
import nh3
from django.core.exceptions import ValidationError
from django.utils import timezone

from accounts.models import User
from accounts.validators import normalize_address

from .drafts import Prepared, create_draft
from .models import Message

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


def quotable_text(body: dict[str, Any]) -> str:
    """The text a reply or forward quotes: the text part, or the HTML part's text when there is none."""
    text = body.get("text") or ""
    if not text and body.get("html"):
        # An HTML-only message: quote its text content.
        text = nh3.clean(body["html"], tags=set())
        text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text


def reply_references(message_id: str, references: list[str]) -> list[str]:
    """The References of a reply to ``message_id``: its parent's chain and the parent, the root kept."""
    if not message_id:
        return []
    chain = [*references, message_id]
    return chain[:1] + chain[-19:] if len(chain) > 20 else chain


def other_addresses(addresses: list[str], exclude: set[str]) -> list[str]:
    """The valid ``addresses`` not in ``exclude``, once each, in order."""
    result = []
    for value in addresses:
        try:
            address = normalize_address(value)
        except ValidationError:
            continue
        if address not in exclude and address not in result:
            result.append(address)
    return result


def reply_to_sent(*, owner: User, message: Message, reply_all: bool = False) -> Prepared:
    """A follow-up to the user's own sent message: to its recipients, quoting it."""
    own = {owner.email.lower()}
    to = other_addresses(list(message.to or []), own)
    cc = other_addresses(list(message.cc or []), own | set(to)) if reply_all else []
    if not to and not cc:
        to = [owner.email]
    notes: list[str] = []
    # The sender's copy keeps its body for as long as it is in their mailbox.
    body_text = quotable_text({"text": message.text, "html": message.html})
    text = f"\n\nOn {format_date(message.date)}, {message.sender_address} wrote:\n{quote(body_text)}\n"
    draft = create_draft(
        owner=owner,
        to=", ".join(to),
        cc=", ".join(cc),
        subject=reply_subject(message.subject),
        text=text,
        in_reply_to=message.message_id,
        references=reply_references(message.message_id, list(message.references or [])),
        signature=False,
    )
    return Prepared(draft, notes)


def forward_header(*, sender: str, date: datetime, subject: str, to: list[str], cc: list[str]) -> str:
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
