"""The message body partial's view of a message: HTML or text, and whether remote images wait."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django import template
from django.core.cache import caches
from django.urls import reverse

from mailbox import remote_content
from mailbox.sanitize import sanitize_html

if TYPE_CHECKING:
    from accounts.models import User
    from mailbox.models import InboxEntry

register = template.Library()

LINKIFY_MAX_CHARS = 10_000


@dataclass(frozen=True)
class MessageContent:
    has_html: bool
    text: str
    frame_url: str = ""
    text_url: str = ""
    eml_url: str = ""
    allow_url: str = ""
    #: Remote images were left out and the reader may choose to show them.
    remote_blocked: bool = False

    @property
    def linkify(self) -> bool:
        # Django's urlize costs about 2 ms per KB: long texts are shown without links.
        return len(self.text) <= LINKIFY_MAX_CHARS


def _no_proxy(url: str) -> str:
    return url


def _allowed_senders(context: template.Context, reader: User) -> set[str]:
    """Read once per request, however many messages a conversation shows."""
    request = context.get("request")
    cached = getattr(request, "_pushmail_allowed_senders", None)
    if cached is not None and cached[0] == reader.pk:
        return cached[1]
    senders = remote_content.allowed_senders(user=reader)
    if request is not None:
        request._pushmail_allowed_senders = (reader.pk, senders)
    return senders


def _has_remote(entry: InboxEntry, html: str) -> bool:
    """Whether the body refers to remote images, remembered per body digest in this process."""
    source = entry.remote if entry.remote_id is not None else entry.local
    digest = getattr(source, "digest", "") if source is not None else ""
    key = f"pushmail:has-remote:{digest}" if digest else None
    if key is not None:
        cached = caches["local"].get(key)
        if cached is not None:
            return bool(cached)
    found = sanitize_html(html, allow_remote=False, proxy_url=_no_proxy).has_remote
    if key is not None:
        caches["local"].set(key, found, 24 * 3600)
    return found


def _reader(context: template.Context, entry: InboxEntry) -> User:
    """The entry's owner, without a query when it is the signed-in user (it always is, in a view)."""
    user = getattr(context.get("request"), "user", None)
    if user is not None and user.pk == entry.owner_id:
        return user
    return entry.owner


@register.simple_tag(takes_context=True)
def message_content(context: template.Context) -> MessageContent | None:
    """Use as ``{% message_content as content %}`` with ``entry`` or ``message`` and ``body`` in the context."""
    body: dict[str, Any] | None = context.get("body")
    if body is None:
        return None
    html = body.get("html") or ""
    text = body.get("text") or ""
    entry = context.get("entry")
    message = context.get("message")
    if entry is not None:
        blocked = False
        if html and _has_remote(entry, html):
            reader = _reader(context, entry)
            senders = _allowed_senders(context, reader)
            blocked = not remote_content.remote_allowed_for_entry(user=reader, entry=entry, senders=senders)
        return MessageContent(
            has_html=bool(html),
            text=text,
            frame_url=reverse("webmail:entry-html", args=[entry.pk]),
            text_url=reverse("webmail:entry-text", args=[entry.pk]),
            eml_url=reverse("webmail:entry-eml", args=[entry.pk]),
            allow_url=reverse("webmail:entry-allow-remote", args=[entry.pk]),
            remote_blocked=blocked,
        )
    if message is not None:
        return MessageContent(
            has_html=bool(html),
            text=text,
            frame_url=reverse("webmail:sent-html", args=[message.pk]),
            text_url=reverse("webmail:sent-text", args=[message.pk]),
            eml_url=reverse("webmail:sent-eml", args=[message.pk]),
        )
    return MessageContent(has_html=False, text=text)
