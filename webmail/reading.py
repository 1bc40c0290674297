"""Reads for the message and conversation views, always scoped to the user.

A conversation is every inbox entry of the user that shares the opened entry's
``thread_key`` (in the folders it spans seen from the opened one's:
mailbox.selectors.conversation_folders), plus the user's own sent messages with
that key, in date order.
Its size does not change the number of queries: two, whatever the thread holds.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db.models import Prefetch
from django.http import Http404
from django.urls import reverse

from accounts.models import User
from mailbox.models import InboxEntry
from mailbox.selectors import body_of, conversation_folders
from outbox.models import Message, MessageAttachment
from outbox.selectors import body_of_message, domain_status, sent_message_detail, sent_messages_for

# Primary keys are 64-bit: a larger id in the URL is simply not found (not a database error).
MAX_ID = 2**63 - 1
# A conversation page shows at most this many messages, the newest ones.
THREAD_LIMIT = 100

# What a conversation shows of its other entries (no search document, no notification details).
THREAD_ENTRY_FIELDS = (
    "owner_id",
    "remote_id",
    "local_id",
    "sender",
    "sender_name",
    "subject",
    "size",
    "received_at",
    "state",
    "read",
    "opened_at",
    "notice_text",
    "thread_key",
    # A copy a spam verdict hid shows nothing, in a conversation too (mailbox.content).
    "folder",
    "remote__spam_verdict",
    "remote__date",
    "remote__state",
    "remote__content",
)

# --- one entry ----------------------------------------------------------------------


def entry_or_404(*, user: User, entry_id: int) -> InboxEntry:
    """The user's entry with its message; another user's id, or no such id, is a 404."""
    if not 0 < entry_id <= MAX_ID:
        raise Http404("No such message.")
    found = list(
        # The search document can be far larger than the body; the page never shows it.
        InboxEntry.objects.owned_by(user).select_related("remote").defer("search_document").filter(pk=entry_id)[:1]
    )
    if not found:
        raise Http404("No such message.")
    _load_local_messages(found)
    return found[0]


def entries_by_id(*, user: User, entry_ids: list[int]) -> dict[int, InboxEntry]:
    """The user's entries with these ids, whole (as entry_or_404 loads one), in two queries at most."""
    found = list(
        InboxEntry.objects.owned_by(user).select_related("remote").defer("search_document").filter(pk__in=entry_ids)
    )
    # Their bodies are shown: a local message's attachments come with it, for all of them at once.
    _load_local_messages(found, with_attachments=True)
    return {entry.pk: entry for entry in found}


def _load_local_messages(entries: list[InboxEntry], *, with_attachments: bool = False) -> None:
    """Attach the local messages (with their senders) of entries sent on this instance.

    One query (two ``with_attachments``), and none at all when every entry came from
    another instance, which is most mail (a join or prefetch_related would cost every
    page for the rare case).
    """
    wanted = {e.local_id for e in entries if e.local_id is not None}
    if not wanted:
        return
    found = Message.objects.select_related("sender")
    if with_attachments:
        found = found.prefetch_related(
            Prefetch("attachments", queryset=MessageAttachment.objects.select_related("blob").order_by("position"))
        )
    messages = found.in_bulk(wanted)
    for entry in entries:
        if entry.local_id in messages:
            entry.local = messages[entry.local_id]


def entry_date(entry: InboxEntry) -> datetime:
    if entry.remote is not None:
        return entry.remote.date
    if entry.local is not None:
        return entry.local.date
    return entry.received_at


@dataclass(frozen=True)
class Person:
    """A sender as shown: "Name <address>" as text; in a page, ``{{ sender|as_person }}``."""

    address: str
    name: str = ""

    def __str__(self) -> str:
        return f"{self.name} <{self.address}>" if self.name else self.address


def entry_from(entry: InboxEntry) -> Person:
    """The sender as shown: a mailbox here by its owner's name now, another by the name it gave."""
    if entry.local is not None and entry.local.sender.display_name:
        return Person(entry.sender, entry.local.sender.display_name)
    return Person(entry.sender, entry.sender_name)


# --- a conversation ------------------------------------------------------------------


@dataclass
class ThreadItem:
    """One message in a conversation: an inbox entry, or a message the user sent."""

    date: datetime
    sender: Person
    subject: str
    size: int
    entry: InboxEntry | None = None
    message: Message | None = None
    body: dict[str, Any] | None = None
    current: bool = False
    unread: bool = False
    expanded: bool = False  # shown open with its body (or the fetch on its way), as the current one
    region: str = ""  # the expanded body region (webmail/reading/_state.html), rendered by the view

    @property
    def key(self) -> str:
        if self.entry is not None:
            return f"entry-{self.entry.pk}"
        assert self.message is not None  # an item is an entry or a sent message
        return f"sent-{self.message.pk}"

    @property
    def state(self) -> str:
        if self.entry is not None:
            return self.entry.state
        return "withdrawn" if self.message and self.message.withdrawn_at else "sent"

    @property
    def url(self) -> str:
        if self.entry is not None:
            return reverse("webmail:entry", args=[self.entry.pk])
        assert self.message is not None
        return reverse("webmail:sent-message", args=[self.message.pk])

    @property
    def snippet(self) -> str:
        text = (self.body or {}).get("text") or ""
        return " ".join(text[:400].split())[:120]


def message_body(message: Message) -> dict[str, Any]:
    """A sent message's body as the sender sees it (Bcc included)."""
    return body_of_message(message, with_bcc=True)


@dataclass
class Conversation:
    items: list[ThreadItem] = field(default_factory=list)
    earlier: int = 0  # older messages left out (THREAD_LIMIT)

    @property
    def current(self) -> ThreadItem | None:
        return next((item for item in self.items if item.current), None)


def conversation(*, user: User, entry: InboxEntry, body: dict[str, Any] | None) -> Conversation:
    """``entry`` and the rest of its conversation, oldest first.

    ``body`` is the opened entry's body (already read by the caller). The other
    entries' bodies come from the rows loaded here; nothing is fetched for them.
    """
    entries: list[InboxEntry] = []
    sent: list[Message] = []
    if entry.thread_key:
        entries = list(
            InboxEntry.objects.owned_by(user)
            .filter(thread_key=entry.thread_key, folder__in=conversation_folders(entry.folder))
            .exclude(pk=entry.pk)
            .select_related("remote")
            .only(*THREAD_ENTRY_FIELDS)
            .order_by("-received_at", "-pk")[:THREAD_LIMIT]
        )
        _load_local_messages(entries)
        mine = {e.local_id for e in [entry, *entries] if e.local_id}
        sent = [
            m
            for m in sent_messages_for(user=user).filter(thread_key=entry.thread_key).order_by("-date")[:THREAD_LIMIT]
            if m.pk not in mine  # a message to oneself is shown once, as received
        ]
    items = [
        ThreadItem(
            date=entry_date(entry),
            sender=entry_from(entry),
            subject=entry.subject,
            size=entry.size,
            entry=entry,
            body=body,
            current=True,
        )
    ]
    for other in entries:
        items.append(
            ThreadItem(
                date=entry_date(other),
                sender=entry_from(other),
                subject=other.subject,
                size=other.size,
                entry=other,
                body=body_of(other),  # a local message's body is read from its row: no query
                unread=not other.read,
            )
        )
    name = user.display_name
    for message in sent:
        items.append(
            ThreadItem(
                date=message.date,
                sender=Person(message.sender_address, name),
                subject=message.subject,
                size=message.size,
                message=message,
                body=message_body(message),
            )
        )
    items.sort(key=lambda item: (item.date, item.key))
    earlier = max(0, len(items) - THREAD_LIMIT)
    if earlier:
        kept = items[earlier:]
        if not any(item.current for item in kept):
            kept = sorted([next(item for item in items if item.current), *kept[1:]], key=lambda i: (i.date, i.key))
        items = kept
    return Conversation(items=items, earlier=earlier)


# --- the sender's view -----------------------------------------------------------------


def sent_message_or_404(*, user: User, message_id: uuid.UUID) -> Message:
    """The user's sent message with its deliveries, recipients and fetches; anyone else's is a 404."""
    try:
        return sent_message_detail(user=user, message_id=message_id)
    except Message.DoesNotExist:
        raise Http404("No such message.") from None


def delivery_rows(message: Message) -> list[dict[str, Any]]:
    """One row per recipient domain (outbox.selectors.domain_status), with a one-word state."""
    rows = domain_status(message)
    for row in rows:
        delivery = row["delivery"]
        if delivery.state == "failed":
            row["state"] = "failed"
        elif row["fetch_status"] == "fetched":
            row["state"] = "fetched"
        elif delivery.state == "notified" and delivery.transport == "smtp":
            row["state"] = "sent-by-smtp"
        else:
            row["state"] = delivery.state
    return rows
