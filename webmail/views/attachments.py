"""Attachment downloads and previews; every answer with the bytes is built by attachments.responses.serve_blob."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from accounts.http import AuthedRequest
from attachments.responses import serve_blob
from attachments.selectors import previewable
from mailbox.models import InboxEntry
from mailbox.received_attachments import (
    AttachmentStatus,
    AttachmentUnavailable,
    attachment_for_entry,
    retry_attachment_now,
)
from outbox.models import DraftAttachment, MessageAttachment
from outbox.selectors import sent_messages_for
from pushmail_site.sizes import human_size
from webmail.polling import poll_delay, polls_so_far


def _unavailable(request: AuthedRequest, problem: AttachmentUnavailable, back: str) -> HttpResponse:
    return render(
        request,
        "webmail/attachment_unavailable.html",
        {"problem": problem.message, "back": back},
        status=problem.status,
    )


def _entry(request: AuthedRequest, entry_id: int) -> InboxEntry:
    return get_object_or_404(InboxEntry.objects.owned_by(request.user).select_related("remote", "local"), pk=entry_id)


def _fetch_context(request: AuthedRequest, entry: InboxEntry, index: int, status: AttachmentStatus) -> dict[str, Any]:
    """What templates/webmail/partials/attachment_fetch.html needs: the state, and where to ask again."""
    polls = polls_so_far(request)
    download = reverse("webmail:entry-attachment", kwargs={"entry_id": entry.pk, "index": index})
    preview = previewable(status.item.content_type) and request.GET.get("mode", request.POST.get("mode")) == "preview"
    return {
        "status": status,
        "item": status.item,
        "size": human_size(status.item.size),
        "mode": "preview" if preview else "download",
        "download_url": download,
        "preview_url": f"{download}?inline=1",
        "fetch_url": reverse("webmail:entry-attachment-fetch", kwargs={"entry_id": entry.pk, "index": index}),
        "back": reverse("webmail:entry", kwargs={"entry_id": entry.pk}),
        "polling": status.in_flight or status.retrying,
        "next_poll": polls + 1,
        "poll_delay": poll_delay(polls, waiting_for_retry=status.retrying),
    }


@login_required
@require_GET
def entry_attachment(request: AuthedRequest, entry_id: int, index: int) -> HttpResponseBase:
    """``entry-attachment``: an attachment of the user's own inbox entry.

    Its bytes when they are here; else the fetch from the sender is started (or
    joined) and a page says "Fetching attachment…", asks again by itself and
    starts the download once the bytes are here.
    """
    entry = _entry(request, entry_id)
    try:
        status = attachment_for_entry(entry=entry, index=index)
    except LookupError:
        raise Http404("no such attachment") from None
    if status.blob is not None:
        return serve_blob(request, status.blob, name=status.item.name, content_type=status.item.content_type)
    context = _fetch_context(request, entry, index, status)
    problem = status.problem
    if problem is not None and not status.retrying:
        return _unavailable(request, problem, context["back"])
    return render(request, "webmail/attachment_fetch.html", context, status=problem.status if problem else 202)


@login_required
@require_http_methods(["GET", "POST"])
def entry_attachment_fetch(request: AuthedRequest, entry_id: int, index: int) -> HttpResponse:
    """``entry-attachment-fetch``: the fetch of an attachment as a page fragment, polled by htmx.

    GET starts or joins the fetch and answers its state: "Fetching attachment…",
    "Unavailable — retrying", why it cannot be had, or (once here) the preview,
    or the link that attachments.js follows to start the download. POST is
    "Retry now".
    """
    entry = _entry(request, entry_id)
    try:
        if request.method == "POST":
            status = retry_attachment_now(entry=entry, index=index)
        else:
            status = attachment_for_entry(entry=entry, index=index)
    except LookupError:
        raise Http404("no such attachment") from None
    context = _fetch_context(request, entry, index, status)
    if request.method == "POST" and not request.htmx:
        return redirect(context["download_url"])
    return render(request, "webmail/partials/attachment_fetch.html", context)


@login_required
@require_GET
def sent_attachment(request: AuthedRequest, message_id: uuid.UUID, index: int) -> HttpResponseBase:
    """``sent-attachment``: an attachment of a message the user sent."""
    message = get_object_or_404(sent_messages_for(user=request.user), pk=message_id)
    attachment = get_object_or_404(MessageAttachment.objects.select_related("blob"), message=message, position=index)
    return serve_blob(request, attachment.blob, name=attachment.name, content_type=attachment.content_type)


@login_required
@require_http_methods(["GET", "POST"])
def draft_attachment(request: AuthedRequest, draft_id: int, attachment_id: int) -> HttpResponseBase:
    """``draft-attachment``: GET downloads an attachment of the user's draft; POST removes it from the draft."""
    attachment = get_object_or_404(
        DraftAttachment.objects.select_related("blob").filter(draft__owner=request.user, draft_id=draft_id),
        pk=attachment_id,
    )
    if request.method == "POST":
        attachment.delete()  # the Blob stays: other messages or drafts may use the same bytes
        if getattr(request, "htmx", False):
            return HttpResponse("")
        return redirect("webmail:draft", draft_id=draft_id)
    return serve_blob(request, attachment.blob, name=attachment.name, content_type=attachment.content_type)
