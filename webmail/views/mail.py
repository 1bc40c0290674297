"""Webmail lists and actions: folders, labels, Sent, and what a user does to a selection."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, cast

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from accounts.http import AuthedRequest
from accounts.models import User
from mailbox import folders, selectors
from mailbox.models import EntryState, Folder, InboxEntry, Label
from outbox import selectors as outbox_selectors
from outbox import services as sent_copies
from outbox.models import Message
from reputation import services as reputation
from webmail import lists, undo
from webmail.templatetags.webmail_lists import unread_badge

if TYPE_CHECKING:
    from webmail.rows import EntryRow

FOLDER_NAMES = {
    Folder.INBOX: "Inbox",
    Folder.NEWS: "Newsletters",
    selectors.STARRED: "Starred",
    Folder.ARCHIVE: "Archive",
    Folder.SPAM: "Spam",
    Folder.TRASH: "Trash",
}
MOVE_TARGETS = [(Folder.INBOX, "Inbox"), (Folder.ARCHIVE, "Archive"), (Folder.SPAM, "Spam"), (Folder.TRASH, "Trash")]
# Where a moved selection is said to have gone, for the confirmation message.
_MOVED: dict[str, str] = {
    Folder.INBOX: "the Inbox",
    Folder.NEWS: "Newsletters",
    Folder.ARCHIVE: "Archive",
    Folder.SPAM: "Spam",
    Folder.TRASH: "Trash",
}


def home(request: HttpRequest) -> HttpResponse:
    """The site root: the inbox when signed in, the login page otherwise."""
    if request.user.is_authenticated:
        return redirect("webmail:folder", folder=Folder.INBOX)
    return redirect("account_login")


# --- Lists -----------------------------------------------------------------------------


def _url_pattern(name: str) -> str:
    """The URL of ``name`` for any entry id, as a format string (reversed once per page, not per row)."""
    marker = 987654321
    return reverse(f"webmail:{name}", args=[marker]).replace(str(marker), "{}")


def _with_sender_names(entries: list[InboxEntry], *, user: User, folder: str) -> list[EntryRow]:
    """Attach what a row shows beyond the entry: its conversation's summary (participants, count,
    unread, at the sender's; two queries for the page), the senders' display names where they
    have a mailbox here (one query for the page), the row's links and its keyset cursor."""
    summaries = selectors.conversation_summaries(user=user, rows=entries, folder=folder) if entries else {}
    addresses = {entry.sender for entry in entries}
    for each in summaries.values():
        addresses.update(each.participants)
    names = (
        dict(User.objects.filter(email__in=addresses).exclude(display_name="").values_list("email", "display_name"))
        if addresses
        else {}
    )
    entry_url, action_url = _url_pattern("entry"), _url_pattern("entry-action")
    rows = cast("list[EntryRow]", entries)  # the same objects, given the attributes below
    for entry in rows:
        # A mailbox here is named as its owner names it now; another sender as it named itself.
        entry.sender_name = names.get(entry.sender) or entry.sender_name
        entry.cursor = selectors.Cursor.of(entry).encode()
        entry.url = entry_url.format(entry.pk) if entry_url else ""
        entry.action_url = action_url.format(entry.pk)
        entry.at_sender = selectors.body_at_sender(entry)
        entry.thread_count = 1
        entry.participants = []
        summary = summaries.get(entry.thread_key)
        if summary is not None:
            entry.thread_count = summary.count
            entry.read = not summary.unread
            entry.at_sender = summary.at_sender
            entry.participants = [
                (address, names.get(address) or summary.names.get(address, "")) for address in summary.participants
            ]
    _with_spam_reasons(rows)
    return rows


def _with_spam_reasons(rows: list[EntryRow]) -> None:
    """On rows in Spam, why this instance judged their message spam (one query, and only for such rows)."""
    in_spam = {row.remote_id: row for row in rows if row.folder == Folder.SPAM and row.remote_id is not None}
    reasons = selectors.spam_verdicts(remote_ids=in_spam.keys()) if in_spam else {}
    for row in rows:
        row.spam_reason = ""
    for remote_id, reason in reasons.items():
        in_spam[remote_id].spam_reason = reason


def _list_context(request: AuthedRequest, page: selectors.Page, *, folder: str, **extra: object) -> dict[str, object]:
    _with_sender_names(page.items, user=request.user, folder=folder)
    return {
        "page": page,
        "entries": page.items,
        "next_url": request.get_full_path(),
        "move_targets": MOVE_TARGETS,
        "trash_days": f"{settings.PUSHMAIL_TRASH_DAYS:g}",
        "folder": folder,
        **extra,
    }


@login_required
@require_GET
def folder(request: AuthedRequest, folder: str) -> HttpResponse:
    page = selectors.folder_page(
        user=request.user, folder=folder, before=request.GET.get("before"), after=request.GET.get("after")
    )
    context = _list_context(
        request,
        page,
        folder=folder,
        folder_name=FOLDER_NAMES[folder],
        # New mail is polled for on the newest page of the inbox only.
        live=folder == Folder.INBOX and page.first,
    )
    return render(request, "webmail/folder.html", context)


@login_required
@require_GET
def label(request: AuthedRequest, label_id: int) -> HttpResponse:
    the_label = get_object_or_404(selectors.labels_for(user=request.user), pk=label_id)
    page = selectors.label_page(
        user=request.user, label=the_label, before=request.GET.get("before"), after=request.GET.get("after")
    )
    context = _list_context(request, page, folder="label", folder_name=the_label.name, label=the_label)
    return render(request, "webmail/folder.html", context)


@login_required
@require_GET
def folder_updates(request: AuthedRequest, folder: str) -> HttpResponse:
    """Rows that arrived after ``after`` (a row cursor), for an open list polling for new mail.

    ``shown`` lists the ids of the rows the list shows: those that have left the folder since
    (a spam verdict hid them, they were moved or deleted) come back in ``X-Gone``, those their
    sender withdrew in ``X-Withdrawn``. The inbox's unread count comes back in ``X-Unread-Count``.
    """
    entries = selectors.entries_newer_than(user=request.user, folder=folder, after=request.GET.get("after", ""))
    changes = selectors.shown_changes(user=request.user, folder=folder, entry_ids=_shown_ids(request))
    _with_sender_names(entries, user=request.user, folder=folder)
    response = render(
        request,
        "webmail/partials/message_rows.html",
        {"entries": entries, "next_url": reverse("webmail:folder", args=[folder]), "folder": folder},
    )
    response["X-Unread-Count"] = unread_badge(selectors.unread_counts(user=request.user)[Folder.INBOX])
    response["X-Gone"] = ",".join(map(str, changes.gone))
    response["X-Withdrawn"] = ",".join(map(str, changes.withdrawn))
    response["Cache-Control"] = "no-store"
    return response


def _shown_ids(request: HttpRequest) -> list[int]:
    """The ``shown`` row ids of a poll (comma-separated); anything that is not an id is ignored."""
    raw = request.GET.get("shown", "")[:4000]
    return [int(part) for part in raw.split(",")[: selectors.SHOWN_CAP] if part.isdigit() and len(part) < 19]


@login_required
@require_GET
def sent(request: AuthedRequest) -> HttpResponse:
    in_trash = request.GET.get("in") == "trash"
    page = lists.sent_page(
        user=request.user,
        folder="trash" if in_trash else "sent",
        before=request.GET.get("before"),
        after=request.GET.get("after"),
    )
    for message in page.items:
        message.recipient_summary = _recipient_summary(message)
    return render(
        request,
        "webmail/sent.html",
        {
            "page": page,
            "sent_messages": page.items,
            "in_trash": in_trash,
            "folder": "sent-trash" if in_trash else "sent",
            "folder_name": "Deleted sent messages" if in_trash else "Sent",
            "next_url": request.get_full_path(),
        },
    )


def _recipient_summary(message: Message) -> str:
    addresses = [*message.to, *message.cc, *message.bcc]
    if not addresses:
        return "(no recipients)"
    shown = ", ".join(addresses[:3])
    return f"{shown} and {len(addresses) - 3} more" if len(addresses) > 3 else shown


# --- Actions ---------------------------------------------------------------------------


def _back(request: AuthedRequest, default: str) -> HttpResponseRedirect:
    target = request.POST.get("next", "")
    if target.startswith("/") and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return HttpResponseRedirect(target)
    return HttpResponseRedirect(default)


def _plural(n: int, what: str = "message") -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _apply(request: AuthedRequest, action: str, ids: list[str]) -> None:
    """Run one action on a selection of the user's entries and say what happened (or why not).

    A selected entry stands for its whole conversation (as seen from its folder), unless the
    form asks for that one message (``scope=message``: the message menu in a conversation).
    """
    user = request.user
    if request.POST.get("scope") != "message":
        # A report covers the conversation's mail from senders: not notices, nor withdrawn messages.
        skip = (EntryState.NOTICE, EntryState.WITHDRAWN) if action in ("report_spam", "not_spam") else ()
        ids = [str(pk) for pk in selectors.conversation_entry_ids(user=user, entry_ids=ids, skip_states=skip)]
    extra_label = request.POST.get("label", "")
    if action == "move":
        action = request.POST.get("folder", "")
    if action == "label" and extra_label:
        action = f"label:{extra_label}"

    def move(target: str) -> int:
        return folders.move_entries(user=user, entry_ids=ids, folder=target)

    def move_to(target: str) -> Callable[[], str]:
        return lambda: f"{_plural(move(target))} moved to {_MOVED[target]}."

    handlers: dict[str, Callable[[], str]] = {
        **{target: move_to(target) for target in Folder.values},
        "report_spam": lambda: _reported(reputation.report_entries(user=user, entry_ids=ids, spam=True)),
        "not_spam": lambda: _reported(reputation.report_entries(user=user, entry_ids=ids, spam=False)),
        "archive": lambda: f"{_plural(move(Folder.ARCHIVE))} archived.",
        "delete": lambda: _deleted(*folders.delete(user=user, entry_ids=ids)),
        "read": lambda: f"{_plural(folders.mark_read(user=user, entry_ids=ids))} marked read.",
        "unread": lambda: f"{_plural(folders.mark_read(user=user, entry_ids=ids, read=False))} marked unread.",
        "star": lambda: f"{_plural(folders.star(user=user, entry_ids=ids))} starred.",
        "unstar": lambda: f"{_plural(folders.star(user=user, entry_ids=ids, starred=False))} unstarred.",
    }
    verb, _, arg = action.partition(":")
    before = undo.snapshot(user=user, action=action, entry_ids=ids)

    def label() -> str:
        n = folders.apply_label(user=user, entry_ids=ids, label_id=arg)
        return f"Label added to {_plural(n)}."

    def unlabel() -> str:
        folders.remove_label(user=user, entry_ids=ids, label_id=arg)
        return f"Label removed from {_plural(len(set(ids)))}."

    if arg and verb in ("label", "unlabel"):
        _report(request, label if verb == "label" else unlabel, before)
    else:
        _report(request, handlers.get(action), before)


def _report(request: HttpRequest, run: Callable[[], str] | None, before: dict[str, object] | None = None) -> None:
    """Run the chosen action and say what it did; an unknown action, or a refused selection, changes nothing.

    With ``before`` (what the entries were, webmail.undo.snapshot) the saying comes with an Undo button.
    """
    if run is None:
        messages.error(request, "That action is not available. Nothing was changed.")
        return
    try:
        text = run()
    except folders.FolderError as exc:
        messages.error(request, f"{exc} Nothing was changed.")
        return
    except reputation.ReportRefused as refused:
        messages.error(request, f"{refused.detail} Nothing was changed.")
        return
    if before is not None:
        undo.offer(request.session, kind=undo.ENTRIES, text=text, data=before)
        return
    messages.success(request, text)


def _reported(outcomes: list[reputation.ReportOutcome]) -> str:
    if len(outcomes) == 1:
        return outcomes[0].detail
    spam = outcomes[0].spam
    return f"{_plural(len(outcomes))} {'reported as spam' if spam else 'marked as not spam'}."


def _deleted(trashed: int, deleted: int) -> str:
    parts = []
    if trashed:
        parts.append(f"{_plural(trashed)} moved to Trash")
    if deleted:
        parts.append(f"{_plural(deleted)} deleted forever")
    text = "; ".join(parts)
    return text[:1].upper() + text[1:] + "." if parts else "Nothing to delete."


def _folder_url(name: str) -> str:
    return reverse("webmail:folder", args=[name])


@login_required
@require_POST
def entry_action(request: AuthedRequest, entry_id: int) -> HttpResponse:
    """One action on one entry (the message view's buttons, a row's star)."""
    entry = get_object_or_404(InboxEntry.objects.owned_by(request.user).only("pk", "folder"), pk=entry_id)
    action = request.POST.get("action", "")
    _apply(request, action, [str(entry.pk)])
    # After archive, delete and friends the message has left the folder: back to that folder.
    stays = action in ("read", "star", "unstar", "label") or action.startswith(("label:", "unlabel:"))
    default = _folder_url(entry.folder)
    if stays:
        default = reverse("webmail:entry", args=[entry.pk])
    return _back(request, default)


@login_required
@require_POST
def bulk_action(request: AuthedRequest) -> HttpResponse:
    """One action on the checked rows of a list."""
    ids = request.POST.getlist("ids")
    _apply(request, request.POST.get("action", ""), ids)
    return _back(request, _folder_url(Folder.INBOX))


@login_required
@require_POST
def empty_trash(request: AuthedRequest) -> HttpResponse:
    """Empty the user's Trash now, without waiting for the 30 days."""
    result = folders.empty_trash(user=request.user, older_than=timezone.now() + timedelta(seconds=1))
    deleted = result["entries"] + result["sent_deleted"] + result["sent_hidden"]
    messages.success(request, f"Trash emptied: {_plural(deleted)} deleted forever.")
    return _back(request, _folder_url(Folder.TRASH))


def _sent_apply(request: AuthedRequest, action: str, ids: list[str]) -> None:
    user = request.user

    def trash() -> str:
        return _deleted(*sent_copies.trash_sent(user=user, message_ids=ids))

    handlers: dict[str, Callable[[], str]] = {
        "trash": trash,
        "delete": trash,
        "restore": lambda: f"{_plural(sent_copies.restore_sent(user=user, message_ids=ids))} moved back to Sent.",
        "star": lambda: f"{_plural(sent_copies.star_sent(user=user, message_ids=ids))} starred.",
        "unstar": lambda: f"{_plural(sent_copies.star_sent(user=user, message_ids=ids, starred=False))} unstarred.",
    }
    _report(request, handlers.get(action))


@login_required
@require_POST
def sent_action(request: AuthedRequest, message_id: uuid.UUID) -> HttpResponse:
    """Trash, restore or star the sender's copy of one sent message."""
    message = get_object_or_404(outbox_selectors.sent_messages_for(user=request.user).only("pk"), pk=message_id)
    _sent_apply(request, request.POST.get("action", ""), [str(message.pk)])
    return _back(request, reverse("webmail:sent"))


@login_required
@require_POST
def sent_bulk(request: AuthedRequest) -> HttpResponse:
    _sent_apply(request, request.POST.get("action", ""), request.POST.getlist("ids"))
    return _back(request, reverse("webmail:sent"))


# --- Labels page -----------------------------------------------------------------------


@login_required
def labels(request: AuthedRequest) -> HttpResponse:
    if request.method == "POST":
        try:
            made = folders.create_label(user=request.user, name=request.POST.get("name", ""))
        except folders.FolderError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"Label “{made.name}” created.")
        return redirect("webmail:labels")
    return render(
        request,
        "webmail/labels.html",
        {"all_labels": selectors.labels_with_unread(user=request.user), "folder": "labels"},
    )


def _own_label(request: AuthedRequest, label_id: int) -> Label:
    try:
        return selectors.label_for(user=request.user, label_id=label_id)
    except Label.DoesNotExist:
        raise Http404("no such label") from None


@login_required
@require_POST
def label_rename(request: AuthedRequest, label_id: int) -> HttpResponse:
    the_label = _own_label(request, label_id)
    try:
        renamed = folders.rename_label(user=request.user, label_id=the_label.pk, name=request.POST.get("name", ""))
    except folders.FolderError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Label renamed to “{renamed.name}”.")
    return redirect("webmail:labels")


@login_required
@require_POST
def label_delete(request: AuthedRequest, label_id: int) -> HttpResponse:
    the_label = _own_label(request, label_id)
    folders.delete_label(user=request.user, label_id=the_label.pk)
    messages.success(request, f"Label “{the_label.name}” deleted; its messages are still in their folders.")
    return redirect("webmail:labels")
