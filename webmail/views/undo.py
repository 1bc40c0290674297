"""Undo: the button of the notice that follows a send or a change to a selection (webmail.undo)."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from accounts.http import AuthedRequest
from mailbox import folders
from outbox import services as drafts_service
from outbox.selectors import drafts_for
from reputation import services as reputation
from webmail import undo as notices


def safe_next(request: AuthedRequest, value: str, default: str) -> str:
    """``value`` when it is a path on this site, else ``default``."""
    if value.startswith("/") and url_has_allowed_host_and_scheme(
        value, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return value
    return default


@login_required
@require_POST
def undo(request: AuthedRequest) -> HttpResponse:
    """Reverse the action the notice names: a send goes back to its draft, a move or label change is put back."""
    back = safe_next(request, request.POST.get("next", ""), reverse("webmail:folder", args=["inbox"]))
    notice = notices.take(request.session, request.POST.get("token", ""))
    if notice is None:
        messages.warning(request, "Too late to undo: that was done a while ago, or already undone.")
        return HttpResponseRedirect(back)
    if notice.kind == notices.SEND:
        draft = get_object_or_404(drafts_for(user=request.user), pk=int(notice.data["draft"]))
        if not drafts_service.undo_send(draft=draft):
            messages.warning(request, "Too late to undo: the message has already been sent.")
            return HttpResponseRedirect(back)
        messages.success(request, "Sending cancelled. The message is back in Drafts.")
        url = reverse("webmail:draft", args=[draft.pk])
        return HttpResponseRedirect(f"{url}?{urlencode({'next': back})}")
    try:
        notices.reverse(user=request.user, data=notice.data)
    except folders.FolderError as exc:
        messages.error(request, f"Could not undo: {exc}")
    except reputation.ReportRefused as refused:
        messages.error(request, f"Could not undo: {refused.detail}")
    else:
        messages.success(request, "Undone.")
    return HttpResponseRedirect(back)
