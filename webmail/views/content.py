"""Showing mail safely: sanitized HTML for a sandboxed iframe, plain text, .eml, the image proxy.

The HTML views answer with their own Content-Security-Policy (replacing the
site-wide one): nothing may load but this instance's images (the proxy) and
inline data: images, no script at all, and the document is sandboxed by the
policy itself as well as by the iframe, so opening the URL directly is as safe
as seeing it framed.
"""

from __future__ import annotations

import html as html_lib
import uuid
from typing import Any, Literal, cast

import nh3
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.http import content_disposition_header
from django.views.decorators.http import require_GET

from accounts.http import AuthedRequest
from mailbox import remote_content
from mailbox.content import ReadableContent, readable_content_for
from mailbox.eml import EmlSource, build_eml, eml_filename
from mailbox.eml_entries import entry_eml_source, sent_eml_source
from mailbox.models import InboxEntry
from mailbox.sanitize import sanitize_html
from mailbox.selectors import body_of
from outbox.models import Message
from outbox.selectors import body_of_message, sent_messages_for

FRAME_CSP = (
    "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'self'; "
    "sandbox allow-popups allow-popups-to-escape-sandbox"
)
# Text, .eml files and proxied images: nothing inside may run or load anything.
INERT_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox"


def _entry(request: AuthedRequest, entry_id: int) -> InboxEntry:
    return get_object_or_404(InboxEntry.objects.owned_by(request.user).select_related("remote", "local"), pk=entry_id)


def _sent(request: AuthedRequest, message_id: uuid.UUID) -> Message:
    return get_object_or_404(sent_messages_for(user=request.user), pk=message_id)


def _entry_body(entry: InboxEntry, content: ReadableContent | None = None) -> dict[str, Any]:
    body = (content or readable_content_for(entry=entry)).body
    if body is None:
        raise Http404("The body is not here yet.")
    return body


def text_of(body: dict[str, Any]) -> str:
    """The plain text of a body; for an HTML-only message, its HTML without the markup."""
    text = body.get("text") or ""
    if text.strip() or not body.get("html"):
        return text
    stripped = nh3.clean(body["html"], tags={"br", "p", "div"}, clean_content_tags={"script", "style"}, attributes={})
    for tag in ("<br>", "</p>", "</div>"):
        stripped = stripped.replace(tag, tag + "\n")
    return html_lib.unescape(nh3.clean(stripped, tags=set())).strip() + "\n"


def _frame(request: AuthedRequest, html: str, *, allow_remote: bool) -> HttpResponse:
    sanitized = sanitize_html(
        html,
        allow_remote=allow_remote,
        proxy_url=lambda url: request.build_absolute_uri(remote_content.proxy_path(url, user=request.user)),
    )
    response = render(request, "webmail/content/frame.html", {"html": sanitized.html})
    response["Content-Security-Policy"] = FRAME_CSP
    response["X-Frame-Options"] = "SAMEORIGIN"  # the message page frames it; every other page is DENY
    _private(response)
    return response


def _private(response: HttpResponseBase) -> None:
    response["X-Content-Type-Options"] = "nosniff"
    response["Referrer-Policy"] = "no-referrer"
    response["Cache-Control"] = "private, no-cache"
    response["Vary"] = "Cookie"


@login_required
@require_GET
def entry_html(request: AuthedRequest, entry_id: int) -> HttpResponse:
    """The entry's HTML body, sanitized, as a document for the sandboxed iframe."""
    entry = _entry(request, entry_id)
    body = _entry_body(entry)
    if not body.get("html"):
        raise Http404("This message has no HTML part.")
    allowed = remote_content.remote_allowed_for_entry(user=request.user, entry=entry)
    return _frame(request, body["html"], allow_remote=allowed)


@login_required
@require_GET
def sent_html(request: AuthedRequest, message_id: uuid.UUID) -> HttpResponse:
    """A sent message's HTML for its sender; images the sender put in load through the proxy."""
    message = _sent(request, message_id)
    if not message.html:
        raise Http404("This message has no HTML part.")
    return _frame(request, message.html, allow_remote=True)


def _text_response(text: str) -> HttpResponse:
    response = HttpResponse(text, content_type="text/plain; charset=utf-8")
    response["Content-Security-Policy"] = INERT_CSP
    _private(response)
    return response


@login_required
@require_GET
def entry_text(request: AuthedRequest, entry_id: int) -> HttpResponse:
    """The entry as plain text (text/plain, never sniffed as anything else)."""
    return _text_response(text_of(_entry_body(_entry(request, entry_id))))


@login_required
@require_GET
def sent_text(request: AuthedRequest, message_id: uuid.UUID) -> HttpResponse:
    return _text_response(text_of(body_of_message(_sent(request, message_id))))


@login_required
def entry_allow_remote(request: AuthedRequest, entry_id: int) -> HttpResponse:
    """Show remote images for this message (scope=message) or its sender (scope=sender)."""
    entry = _entry(request, entry_id)  # someone else's id is a 404 whatever the method
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    scope = request.POST.get("scope", "")
    if scope not in ("message", "sender"):
        return HttpResponse("scope must be message or sender", status=400, content_type="text/plain")
    remote_content.allow_remote_content(user=request.user, entry=entry, scope=cast(Literal["message", "sender"], scope))
    if getattr(request, "htmx", False):
        context = {"entry": entry, "body": body_of(entry)}
        return HttpResponse(render_to_string("webmail/partials/message_body.html", context, request))
    return redirect(reverse("webmail:entry", args=[entry.pk]))


# --- .eml ----------------------------------------------------------------------


def _eml_response(source: EmlSource) -> HttpResponse:
    response = HttpResponse(build_eml(source), content_type="message/rfc822")
    response["Content-Disposition"] = content_disposition_header(True, eml_filename(source.subject))
    response["Content-Security-Policy"] = INERT_CSP
    _private(response)
    return response


@login_required
@require_GET
def entry_eml(request: AuthedRequest, entry_id: int) -> HttpResponseBase:
    """The entry as an .eml file (attachments held here included, others listed).

    A message received by SMTP is given as it arrived, with the headers this instance added.
    """
    entry = _entry(request, entry_id)
    content = readable_content_for(entry=entry)
    body = _entry_body(entry, content)
    if content.original is not None:
        response = FileResponse(content.original.file.open("rb"), content_type="message/rfc822")
        response["Content-Disposition"] = content_disposition_header(True, eml_filename(entry.subject))
        response["Content-Security-Policy"] = INERT_CSP
        _private(response)
        return response
    source = entry_eml_source(entry, content, body)
    return _eml_response(source)


@login_required
@require_GET
def sent_eml(request: AuthedRequest, message_id: uuid.UUID) -> HttpResponse:
    message = _sent(request, message_id)
    source = sent_eml_source(message)
    return _eml_response(source)


# --- image proxy -----------------------------------------------------------------


def _refused(message: str, status: int) -> HttpResponse:
    response = HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")
    response["Content-Security-Policy"] = INERT_CSP
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, no-store"
    return response


@require_GET
def image_proxy(request: HttpRequest) -> HttpResponse:
    """A remote image fetched by this instance, for a signed-in reader; only URLs this instance signed.

    No login check on the request itself: images in the sandboxed frame come
    without the session cookie. The signed URL names the reader and expires.
    """
    url = request.GET.get("u", "")
    if remote_content.verify_signature(url, request.GET.get("s", "")) is None:
        return _refused("This image link is not valid.", 403)
    try:
        image = remote_content.fetch_image(url)
    except remote_content.ImageRefused as exc:
        return _refused(exc.message, exc.status)
    response = HttpResponse(image.content, content_type=image.content_type)
    response["Content-Security-Policy"] = INERT_CSP
    response["X-Content-Type-Options"] = "nosniff"
    response["Referrer-Policy"] = "no-referrer"
    response["Content-Disposition"] = "inline"
    response["Cache-Control"] = "private, max-age=3600"
    return response
