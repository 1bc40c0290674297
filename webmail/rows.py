"""Mail list rows, rendered in Python.

The rows are the hot path of every list page (50 per page, and the live-update
partial): built with ``escape`` here they cost a fraction of the same markup in
the template engine. The markup follows the DOM contract for list rows
(``data-testid="message-row"``, ``data-entry-id``, ``data-state``, "at sender's", one size).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from mailbox.models import InboxEntry
from pushmail_site.sizes import human_size

if TYPE_CHECKING:
    from mailbox.models import Label

    class ListedEntry(InboxEntry):
        """An entry with what a list shows beyond its columns, which the list views set on it."""

        sender_name: str  # the sender's display name when the sender has a mailbox here
        cursor: str
        at_sender: bool  # the body is still at the sender's
        spam_reason: str  # why a spam verdict filed it in Spam, on the Spam folder's rows
        label_list: list[Label]  # prefetched
        thread_count: int  # messages in the conversation the row stands for
        participants: list[tuple[str, str]]  # its senders (address, display name), oldest first

    class EntryRow(ListedEntry):
        """A listed entry with its row's links (``webmail.views.mail._with_sender_names``)."""

        url: str
        action_url: str


_AT_SENDER_TITLE = "The body is still on the sender's server; it is fetched when you open the message"
_PAPERCLIP = (
    '<svg class="icon" aria-hidden="true" viewBox="0 0 24 24" width="16" height="16"><path fill="none" '
    'stroke="currentColor" stroke-width="2" stroke-linecap="round" d="M21 11.5l-8.5 8.5a5 5 0 0 1-7-7L14 4.5'
    'a3.5 3.5 0 0 1 5 5L10.5 18a2 2 0 0 1-3-3L15 7.5"/></svg>'
)
_UNREAD = '<span class="visually-hidden">Unread: </span>'
_STATE_CHIPS = {
    "withdrawn": '<span class="state-chip withdrawn">Withdrawn</span>',
    "expired": '<span class="state-chip expired">Expired</span>',
    "tampered": '<span class="state-chip tampered">Tampered</span>',
    "malformed": '<span class="state-chip malformed">Malformed</span>',
}


def _short_date(local: datetime, today: datetime) -> str:
    if local.date() == today.date():
        return local.strftime("%H:%M")
    if local.year == today.year:
        return f"{local.day} {local.strftime('%b')}"
    return f"{local.day} {local.strftime('%b %Y')}"


def _short_name(address: str, name: str) -> str:
    if address == "me" or name:
        return name or "me"
    return address.partition("@")[0] or address


def person_html(address: str, name: str, *, brackets: bool = False) -> str:
    """A sender as people read one: the display name, and the address beside it always, since a
    name is whatever the sender chose (docs/protocol.md §4.1). Just the address without a name."""
    if not name:
        return f'<span class="person-address">{escape(address)}</span>'
    shown = f"&lt;{escape(address)}&gt;" if brackets else escape(address)
    return f'<span class="person-name">{escape(name)}</span> <span class="person-address">{shown}</span>'


def _sender_cell(entry: EntryRow) -> str:
    """The row's sender (name and address), or a conversation's participants ("ann, bob, me") with its count."""
    people = entry.participants
    count = entry.thread_count
    if len(people) <= 1:
        shown, title = person_html(entry.sender, entry.sender_name), entry.sender
        if entry.sender_name:
            title = f"{entry.sender_name} <{entry.sender}>"
    else:
        names = [_short_name(address, name) for address, name in people]
        if len(names) > 3:  # the first and the two most recent, as the mail clients people know
            names = [names[0], "…", *names[-2:]]
        shown, title = escape(", ".join(names)), ", ".join(address for address, _ in people)
    badge = (
        f' <span class="thread-count" data-testid="thread-count" title="{count} messages in this conversation">'
        f"{count}</span>"
        if count > 1
        else ""
    )
    return f'<td class="sender" title="{escape(title)}"><span class="sender-text">{shown}</span>{badge}</td>'


def render_rows(entries: Iterable[EntryRow]) -> SafeString:
    """The ``<tr>`` rows for entries prepared by ``webmail.views.mail._with_sender_names``."""
    today = timezone.localtime()
    out: list[str] = []
    for entry in entries:
        pk = entry.pk
        subject = escape(entry.subject or "(no subject)")
        action_url = escape(entry.action_url)
        url = escape(entry.url)
        unread = not entry.read
        local = timezone.localtime(entry.received_at)
        size = human_size(entry.size + entry.attachments_size)  # what opening everything would pull
        if entry.starred:
            star = (
                f'<button type="submit" form="bulk-form" formaction="{action_url}" name="action" value="unstar" '
                f'class="star-toggle starred" aria-pressed="true" title="Starred"><span aria-hidden="true">★</span>'
                f'<span class="visually-hidden">Unstar: {subject}</span></button>'
            )
        else:
            star = (
                f'<button type="submit" form="bulk-form" formaction="{action_url}" name="action" value="star" '
                f'class="star-toggle" aria-pressed="false" title="Not starred"><span aria-hidden="true">☆</span>'
                f'<span class="visually-hidden">Star: {subject}</span></button>'
            )
        labels = "".join(f'<span class="label-chip">{escape(label.name)}</span>' for label in entry.label_list)
        if entry.at_sender:
            # The size is in its own column: one size per row.
            chip = f'<span class="state-chip at-sender" title="{escape(_AT_SENDER_TITLE)}">at sender\'s</span>'
        else:
            chip = _STATE_CHIPS.get(entry.state, "")
        reason = getattr(entry, "spam_reason", "")
        if reason:  # why a verdict of this instance filed it in Spam
            chip += f'<span class="state-chip spam-verdict" data-testid="spam-reason">{escape(reason)}</span>'
        attach = (
            f'<span title="Has attachments">{_PAPERCLIP}<span class="visually-hidden">Has attachments</span></span>'
            if entry.has_attachments
            else ""
        )
        out.append(
            f'<tr data-testid="message-row" data-entry-id="{pk}" data-state="{escape(entry.state)}" '
            f'data-cursor="{escape(entry.cursor)}" data-href="{url}" data-action-url="{action_url}" '
            f'data-conversation="{escape(entry.thread_key or f"entry-{pk}")}" data-count="{entry.thread_count}" '
            f'class="message-row{" unread" if unread else ""}">\n'
            f'  <td class="select"><input type="checkbox" name="ids" value="{pk}" form="bulk-form" '
            f'aria-label="Select: {subject}"></td>\n'
            f'  <td class="star">{star}</td>\n'
            f"  {_sender_cell(entry)}\n"
            f'  <td class="subject">{chip}{labels}<a href="{url or "#"}" class="open">'
            f"{_UNREAD if unread else ''}{subject}</a></td>\n"
            f'  <td class="attach">{attach}</td>\n'
            f'  <td class="size">{size}</td>\n'
            f'  <td class="date"><time datetime="{local.isoformat()}" title="{local.day} {local:%b %Y %H:%M}">'
            f"{_short_date(local, today)}</time></td>\n"
            "</tr>\n"
        )
    return mark_safe("".join(out))  # noqa: S308 - every value above is escaped
