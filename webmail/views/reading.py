"""Reading: a message and its conversation, the pull made visible, the sender's view."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.http import AuthedRequest
from mailbox.models import EntryState, InboxEntry
from mailbox.selectors import attachment_items_for_entry, body_of, body_on_its_way
from mailbox.services import open_entries, open_entry, retry_fetch_now
from newsletters import selectors as newsletter_selectors
from outbox.reach import withdrawal_scope
from outbox.selectors import attachment_items_for_message
from outbox.services import withdraw_message
from webmail import reading
from webmail.polling import poll_delay, polls_so_far

# What a message's own menu in a conversation offers (the toolbar acts on the whole conversation).
MESSAGE_MENU = [
    ("archive", "Archive this message"),
    ("delete", "Delete this message"),
    ("unread", "Mark this message unread"),
    ("star", "Star this message"),
    ("report_spam", "Report this message as spam"),
]


def _state_context(
    entry: InboxEntry, body: dict[str, Any] | None, *, polls: int = 0, retrying: bool = False
) -> dict[str, Any]:
    """What the body region of one entry needs: the body, or the state it is in."""
    pending = body is None and body_on_its_way(entry)  # the page polls until it arrives
    return {
        "entry": entry,
        "body": body,
        "sender": reading.entry_from(entry),
        "date": reading.entry_date(entry),
        "pending": pending,
        "retrying": retrying,
        "next_poll": polls + 1,
        "poll_delay": poll_delay(polls, waiting_for_retry=entry.state == EntryState.UNAVAILABLE and not retrying),
        "last_try": entry.remote.last_attempt_at if entry.remote is not None else None,
        "attachment_items": attachment_items_for_entry(entry) if body is not None else [],
    }


def _actions(entry: InboxEntry) -> dict[str, str]:
    args = [entry.pk]
    return {
        # Reply and Forward make a draft once per page view (outbox.services.open_once).
        "compose_key": str(uuid.uuid4()),
        "reply": reverse("webmail:reply", args=args),
        "forward": reverse("webmail:forward", args=args),
        "action": reverse("webmail:entry-action", args=args),
        "eml": reverse("webmail:entry-eml", args=args),
        "text": reverse("webmail:entry-text", args=args),
    }


def _list_issue(request: AuthedRequest, item: InboxEntry) -> dict[str, object] | None:
    """For an issue of a list (Newsletters): the list and the reader's subscription, for the one-click buttons."""
    if item.local is not None and item.local.list_address:  # an issue of a list hosted here
        address, name = item.local.list_address, item.local.sender_name
    elif item.remote is not None and item.remote.transport == "pushmail" and item.remote.list_id:
        address, name = item.remote.list_id, item.remote.sender_name
    else:
        return None
    subscription = newsletter_selectors.subscription_to(user=request.user, list_address=address)
    return {
        "address": address,
        "name": name or address,
        "subscription": subscription,
        "label": newsletter_selectors.state_label(subscription.state) if subscription else "",
        "here": request.get_full_path(),
    }


@login_required
@require_GET
def entry(request: AuthedRequest, entry_id: int) -> HttpResponse:
    """Open an entry and show its conversation.

    The entry and every unread message of the conversation are opened at once: each is
    marked read and its fetch queued (one per message, as opening it alone would), and
    each is shown expanded, its body swapped in as it arrives.
    """
    item = reading.entry_or_404(user=request.user, entry_id=entry_id)
    thread = reading.conversation(user=request.user, entry=item, body=None)
    plain = request.GET.get("plain") == "1"
    unread_items = [other for other in thread.items if other.entry is not None and other.unread and not other.current]
    whole = reading.entries_by_id(
        user=request.user, entry_ids=[other.entry.pk for other in unread_items if other.entry]
    )
    # One batch for them all: its queries do not grow with the conversation (mailbox.services.open_entries).
    fetching = open_entries(entries=[item, *whole.values()])
    if fetching:  # their state moved on (a fetch is on its way): show it
        reloaded = reading.entries_by_id(user=request.user, entry_ids=fetching)
        item = reloaded.get(item.pk, item)
        whole.update((pk, entry) for pk, entry in reloaded.items() if pk in whole)
        if thread.current is not None:
            thread.current.entry = item
    body = body_of(item)
    if thread.current is not None:
        thread.current.body = body
    for other in unread_items:
        unread = whole.get(other.entry.pk) if other.entry else None
        if unread is None:
            continue  # deleted meanwhile
        other.entry, other.body, other.expanded = unread, body_of(unread), True
        other.region = render_to_string(
            "webmail/reading/_state.html", {**_state_context(unread, other.body), "plain": plain}, request=request
        )
    return render(
        request,
        "webmail/reading/entry.html",
        {
            "entry": item,
            "thread": thread,
            "plain": plain,
            "menu_actions": MESSAGE_MENU,
            "actions": _actions(item),
            "labels": list(item.labels.order_by("name")),
            "list_issue": _list_issue(request, item),
            **_state_context(item, body),
        },
    )


@login_required
@require_GET
def entry_body(request: AuthedRequest, entry_id: int) -> HttpResponse:
    """The body region alone: polled by htmx until the fetch finishes, then the body."""
    item = reading.entry_or_404(user=request.user, entry_id=entry_id)
    if item.opened_at is None and item.state == EntryState.FETCHED:
        open_entry(entry=item)  # the body arrived while the reader watched: now it is seen
    elif item.state == EntryState.NOTIFIED:
        open_entry(entry=item)  # asked for the body without opening the page: fetch it
    return render(
        request, "webmail/reading/_state.html", _state_context(item, body_of(item), polls=polls_so_far(request))
    )


@login_required
@require_POST
def entry_retry(request: AuthedRequest, entry_id: int) -> HttpResponse:
    """ "Retry now" on an entry whose sender's server did not answer."""
    item = reading.entry_or_404(user=request.user, entry_id=entry_id)
    retry_fetch_now(entry=item)
    if request.htmx:
        item = reading.entry_or_404(user=request.user, entry_id=entry_id)
        return render(request, "webmail/reading/_state.html", _state_context(item, body_of(item), retrying=True))
    return redirect("webmail:entry", entry_id=item.pk)


@login_required
@require_GET
def sent_message(request: AuthedRequest, message_id: uuid.UUID) -> HttpResponse:
    """The sender's own message with its delivery status per recipient domain."""
    message = reading.sent_message_or_404(user=request.user, message_id=message_id)
    rows = reading.delivery_rows(message)
    # Readers on this instance read the stored message: only remote domains have an offer to end.
    remote = any(not row["delivery"].local for row in rows)
    attachment_items = attachment_items_for_message(message)
    return render(
        request,
        "webmail/reading/sent.html",
        {
            "message": message,
            # The name it went out with; a message from before names were kept shows today's.
            "sender": reading.Person(message.sender_address, message.sender_name or request.user.display_name),
            "offer_end": message.offer_end() if remote else None,
            "body": reading.message_body(message),
            "rows": rows,
            "scope": withdrawal_scope(message),
            "attachment_items": attachment_items,
            "attachments_size": sum(item.size for item in attachment_items),
            "compose_key": str(uuid.uuid4()),
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def sent_withdraw(request: AuthedRequest, message_id: uuid.UUID) -> HttpResponse:
    """GET asks for confirmation; POST withdraws the message from every recipient domain."""
    message = reading.sent_message_or_404(user=request.user, message_id=message_id)
    if request.method == "GET" or message.withdrawn_at:
        if message.withdrawn_at:
            return redirect("webmail:sent-message", message_id=message.pk)
        return render(
            request, "webmail/reading/withdraw_confirm.html", {"message": message, "scope": withdrawal_scope(message)}
        )
    withdraw_message(message=message)
    scope = withdrawal_scope(message)
    done = "Message withdrawn. Recipients who have not opened it can no longer read it."
    if scope.smtp:
        done = (
            f"Message withdrawn from {', '.join(scope.pushmail)}: recipients there who have not opened it can no "
            f"longer read it. Copies sent by ordinary email (SMTP) to {', '.join(scope.smtp)} cannot be withdrawn."
        )
    messages.success(request, done)
    return redirect("webmail:sent-message", message_id=message.pk)
