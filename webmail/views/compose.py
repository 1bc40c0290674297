"""Compose: new messages, drafts with autosave, reply/forward, attachments, send with undo.

Views are thin: every write is a verb in outbox.services, every read a selector
scoped to the signed-in user (another user's draft is a 404 by construction).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import partial, wraps
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlencode, urlsplit

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from accounts.http import AuthedRequest, HtmxRequest
from attachments.uploads import allowance_for, limit_uploads, upload_problem
from mailbox import replies
from mailbox.models import EntryState
from mailbox.selectors import inbox_for
from mailsettings.selectors import suggestions_for
from outbox import services as drafts_service
from outbox.models import Draft, DraftState
from outbox.reach import domains_in, reach_of
from outbox.selectors import drafts_for, open_drafts_for, sent_messages_for
from webmail import undo

if TYPE_CHECKING:
    from outbox.models import DraftAttachment

    class LinkedAttachment(DraftAttachment):
        """A draft's attachment with the link the compose page shows for it."""

        url: str


View = Callable[..., HttpResponse]

SESSION_EXPIRED = "Your session has expired, so nothing was sent or saved. Sign in again, then repeat the last step."
LOCKED = "This message is being sent: press Undo to change it."
WITHDRAWN = "The sender withdrew this message: there is nothing to reply to or forward."


def signed_in(view: View) -> View:
    """login_required that explains itself: an expired session on a POST says nothing was done,
    and an htmx request (autosave) sends the whole page to the login form."""

    @wraps(view)
    def wrapper(request: HtmxRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.user.is_authenticated:
            return view(request, *args, **kwargs)
        if request.method == "GET" and not request.htmx:
            back = request.get_full_path()
        else:
            back = _same_site_path(request) or reverse("webmail:drafts")
            messages.warning(request, SESSION_EXPIRED)
        login = f"{reverse('account_login')}?{urlencode({'next': back})}"
        if request.htmx:
            return HttpResponseClientRedirect(login)
        return redirect(login)

    return wrapper


def _same_site_path(request: HtmxRequest) -> str | None:
    """The page the request came from, when it is on this site."""
    current = getattr(request.htmx, "current_url", None) if request.htmx else None
    referer = current or request.headers.get("referer") or ""
    if referer and url_has_allowed_host_and_scheme(referer, allowed_hosts={request.get_host()}):
        parts = urlsplit(referer)
        return parts.path + (f"?{parts.query}" if parts.query else "")
    return None


def _origin(request: HtmxRequest) -> str:
    """Where the person was before composing, to go back to after Send: the form's or link's
    ``next``, else the page that opened compose (a reply's message, Drafts), else the inbox."""
    # Not compose itself (new messages and drafts alike are under it), nor the sign-in pages.
    not_back = (reverse("webmail:compose"), reverse("account_login").rstrip("/").rsplit("/", 1)[0] + "/")
    for candidate in (request.POST.get("next", ""), request.GET.get("next", ""), _same_site_path(request) or ""):
        if (
            candidate.startswith("/")
            and not candidate.startswith(not_back)
            and url_has_allowed_host_and_scheme(candidate, allowed_hosts={request.get_host()})
        ):
            return candidate
    return reverse("webmail:folder", args=["inbox"])


def _to_draft(request: HtmxRequest, draft_id: int) -> HttpResponse:
    """The draft's page, still knowing where to go back to after Send."""
    url = reverse("webmail:draft", args=[draft_id])
    back = _origin(request)
    if back == reverse("webmail:folder", args=["inbox"]):
        return HttpResponseRedirect(url)  # where Send goes back to anyway
    return HttpResponseRedirect(f"{url}?{urlencode({'next': back})}")


def _draft(request: AuthedRequest, draft_id: int) -> Draft:
    return get_object_or_404(drafts_for(user=request.user).select_related("owner__domain"), pk=draft_id)


def _errors(exc: ValidationError) -> list[str]:
    if hasattr(exc, "error_dict"):
        return [message for messages_ in exc.message_dict.values() for message in messages_]
    return list(exc.messages)


def _invalid(exc: ValidationError) -> set[str]:
    """The form fields an error names, marked aria-invalid on the page."""
    return set(exc.message_dict) if hasattr(exc, "error_dict") else set()


# --- Pages -------------------------------------------------------------------------------


@require_GET
@signed_in
def compose(request: AuthedRequest) -> HttpResponse:
    """A new message, with To prefilled from ?to=. Nothing is stored until its first save
    (autosave, Save draft, Attach or Send), which makes the draft under the page's key."""
    to = request.GET.get("to", "")[:2000]
    return _render_draft(request, drafts_service.unsaved_draft(owner=request.user, to=to), key=uuid.uuid4())


@require_GET
@signed_in
def draft(request: AuthedRequest, draft_id: int) -> HttpResponse:
    item = _draft(request, draft_id)
    if item.sent_message_id is not None:
        messages.info(request, "This message has been sent.")
        return redirect(reverse("webmail:sent-message", args=[item.sent_message_id]))
    return _render_draft(request, item)


def _form_urls(item: Draft, key: uuid.UUID | None) -> dict[str, str]:
    """Where the compose form posts: a stored draft by its id, a new one by its page's key."""
    actions = ("save", "attach", "send", "delete")
    if item.pk is None:
        return {action: reverse(f"webmail:new-draft-{action}", args=[key]) for action in actions}
    return {action: reverse(f"webmail:draft-{action}", args=[item.pk]) for action in actions}


def _render_draft(
    request: AuthedRequest,
    item: Draft,
    *,
    key: uuid.UUID | None = None,
    error: ValidationError | None = None,
    status: int = 200,
) -> HttpResponse:
    attachments = cast("list[LinkedAttachment]", list(item.attachments.all()) if item.pk is not None else [])
    for attachment in attachments:
        attachment.url = reverse("webmail:draft-attachment", args=[item.pk, attachment.pk])
    context = {
        "draft": item,
        "urls": _form_urls(item, key),
        "attachments": attachments,
        "errors": _errors(error) if error else [],
        "invalid": _invalid(error) if error else set(),
        "undo": _undo_context(item),
        "back": _origin(request),
        "attached_bytes": sum(attachment.size for attachment in attachments),
        "max_file": settings.PUSHMAIL_MAX_ATTACHMENT_BYTES,
        "max_total": settings.PUSHMAIL_MAX_MESSAGE_ATTACHMENTS_BYTES,
    }
    return render(request, "webmail/compose/draft.html", context, status=status)


def _undo_context(item: Draft) -> dict[str, Any] | None:
    if item.send_at is None:
        return None
    remaining = max(0, round((item.send_at - timezone.now()).total_seconds()))
    return {"seconds": remaining, "send_at": item.send_at}


@require_GET
@signed_in
def drafts(request: AuthedRequest) -> HttpResponse:
    items = list(open_drafts_for(user=request.user)[:200])
    return render(request, "webmail/compose/drafts.html", {"drafts": items})


# --- Saving and attachments ----------------------------------------------------------------


def _target(request: AuthedRequest, draft_id: int | None, key: uuid.UUID | None, *, create: bool) -> Draft | None:
    """The draft a form posts to: by id (another user's is a 404), or by its page's key, made by the first save."""
    if draft_id is not None:
        return _draft(request, draft_id)
    assert key is not None
    return drafts_service.draft_for_key(owner=request.user, key=key, create=create)


def _refused(
    request: AuthedRequest, item: Draft | None, key: uuid.UUID | None, problem: str, status: int, *, read: bool = False
) -> HttpResponse:
    """The compose page again, saying why the upload was refused; nothing of the request is stored.

    When the fields before the files were ``read``, the page shows them as typed (still unsaved).
    """
    page = item if item is not None else drafts_service.unsaved_draft(owner=request.user)
    if read:
        for name in ("to", "cc", "bcc", "subject", "text"):
            setattr(page, name, request.POST.get(name, getattr(page, name)))
    return _render_draft(request, page, key=key, error=ValidationError({"attachments": [problem]}), status=status)


def takes_uploads(*, discard: bool = False) -> Callable[[View], View]:
    """A compose POST whose files are counted against the draft's limits as they stream in.

    The limits are set before anything reads the body, so the CSRF check runs
    after them (``csrf_protect`` inside, ``csrf_exempt`` outside). A request
    whose Content-Length is over the limits is refused before its body is read.
    With ``discard``, files are not stored at all (Save draft, Delete and
    Remove ignore them).
    """

    def decorate(view: View) -> View:
        protected = csrf_protect(view)

        @wraps(view)
        def wrapper(request: AuthedRequest, **kwargs: Any) -> HttpResponse:
            key = kwargs.get("key")
            existing = _target(request, kwargs.get("draft_id"), key, create=False)
            attached = [a.size for a in existing.attachments.all()] if existing is not None else []
            allowance = allowance_for(user=request.user, attached=attached)
            problem = limit_uploads(request, allowance=allowance, discard=discard)
            if problem:
                # Refused unread, so before the CSRF check (which reads the body): it changes nothing.
                return _refused(request, existing, key, problem, 413)
            return protected(request, **kwargs)

        return csrf_exempt(wrapper)

    return decorate


def _stopped(request: AuthedRequest, item: Draft | None, key: uuid.UUID | None) -> HttpResponse | None:
    """The page saying why the upload handler stopped this request's upload, if it did."""
    stopped = upload_problem(request)
    if stopped is None:
        return None
    return _refused(request, item, key, *stopped, read=True)


def _untouched(request: AuthedRequest) -> bool:
    """The posted form is still what a new message's page showed: empty, with only the signature."""
    post = request.POST
    blank = drafts_service.unsaved_draft(owner=request.user)
    empty = all(not post.get(name, "").strip() for name in ("to", "cc", "bcc", "subject"))
    text = post.get("text", "").replace("\r\n", "\n").strip()  # browsers send a textarea's lines with CRLF
    return empty and text == blank.text.strip() and not post.get("markdown")


def _discardable(item: Draft) -> bool:
    """A new message's draft that holds nothing worth keeping once its form is empty again."""
    return item.state == DraftState.DRAFT and not item.in_reply_to and not item.attachments.exists()


def _save_from_post(request: AuthedRequest, item: Draft) -> Draft:
    post = request.POST
    return drafts_service.update_draft(
        draft=item,
        to=post.get("to", item.to),
        cc=post.get("cc", item.cc),
        bcc=post.get("bcc", item.bcc),
        subject=post.get("subject", item.subject),
        text=post.get("text", item.text),
        markdown=bool(post.get("markdown")) if "subject" in post or "text" in post else item.markdown,
    )


@require_POST
@signed_in
@takes_uploads(discard=True)
def draft_save(request: AuthedRequest, draft_id: int | None = None, key: uuid.UUID | None = None) -> HttpResponse:
    """Autosave (htmx) or the Save draft button; a new message's first real change makes its draft.

    A new message's form that is untouched again (nothing written, or all of it erased) keeps
    no draft: the one its first change made is discarded, and the next change makes it again.
    """
    existing = _target(request, draft_id, key, create=False)
    if key is not None and _untouched(request) and (existing is None or _discardable(existing)):
        if existing is not None:
            drafts_service.delete_draft(draft=existing)
        if request.htmx:
            response = HttpResponse("")
            if existing is not None:
                response["HX-Replace-Url"] = reverse("webmail:compose")  # a reload opens a new message
            return response
        messages.info(request, "Nothing to save: the message is empty, so no draft was kept.")
        return HttpResponseRedirect(_origin(request))
    item = _target(request, draft_id, key, create=True)
    assert item is not None
    try:
        item = _save_from_post(request, item)
    except drafts_service.DraftLocked:
        if request.htmx:
            # 200 so htmx shows it in the status line (it does not swap error responses).
            return HttpResponse(f'<span class="save-error">Not saved. {LOCKED}</span>')
        messages.warning(request, LOCKED)
        return _to_draft(request, item.pk)
    if request.htmx:
        response = render(request, "webmail/compose/_saved.html", {"draft": item})
        if draft_id is None:
            # The page now shows a stored draft: a reload or Back opens it.
            response["HX-Replace-Url"] = reverse("webmail:draft", args=[item.pk])
        return response
    messages.success(request, "Draft saved.")
    return _to_draft(request, item.pk)


@require_POST
@signed_in
@takes_uploads()
def draft_attach(request: AuthedRequest, draft_id: int | None = None, key: uuid.UUID | None = None) -> HttpResponse:
    stopped = _stopped(request, _target(request, draft_id, key, create=False), key)
    if stopped is not None:
        return stopped
    item = _target(request, draft_id, key, create=True)
    assert item is not None
    try:
        item = _save_from_post(request, item)
        added = drafts_service.add_attachments(draft=item, files=request.FILES.getlist("files"))
    except drafts_service.DraftLocked:
        messages.warning(request, LOCKED)
        return _to_draft(request, item.pk)
    except ValidationError as exc:
        return _render_draft(request, item, error=exc, status=400)
    if added:
        messages.success(request, "Attached: " + ", ".join(a.name for a in added) + ".")
    else:
        messages.info(request, "Choose one or more files to attach.")
    return _to_draft(request, item.pk)


@require_POST
@signed_in
@takes_uploads(discard=True)
def draft_attachment_remove(request: AuthedRequest, draft_id: int, attachment_id: int) -> HttpResponse:
    item = _draft(request, draft_id)
    attachment = get_object_or_404(item.attachments, pk=attachment_id)
    try:
        item = _save_from_post(request, item)
        drafts_service.remove_attachment(draft=item, attachment_id=attachment.pk)
    except drafts_service.DraftLocked:
        messages.warning(request, LOCKED)
        return _to_draft(request, item.pk)
    messages.success(request, f"Removed {attachment.name}.")
    return _to_draft(request, item.pk)


@require_POST
@signed_in
@takes_uploads(discard=True)
def draft_delete(request: AuthedRequest, draft_id: int | None = None, key: uuid.UUID | None = None) -> HttpResponse:
    item = _target(request, draft_id, key, create=False)
    if item is None:  # a new message never saved: nothing to delete
        messages.success(request, "Message discarded.")
        return HttpResponseRedirect(_origin(request))
    try:
        drafts_service.delete_draft(draft=item)
    except drafts_service.DraftLocked:
        messages.warning(request, LOCKED)
        return _to_draft(request, item.pk)
    messages.success(request, "Draft deleted.")
    return HttpResponseRedirect(_origin(request))


# --- Send and undo ------------------------------------------------------------------------


@require_POST
@signed_in
@takes_uploads()
def draft_send(request: AuthedRequest, draft_id: int | None = None, key: uuid.UUID | None = None) -> HttpResponse:
    """Check everything, then queue the send after the undo delay; errors are shown on the form."""
    stopped = _stopped(request, _target(request, draft_id, key, create=False), key)
    if stopped is not None:
        return stopped
    item = _target(request, draft_id, key, create=True)
    assert item is not None
    if item.state != DraftState.DRAFT:
        return _to_draft(request, item.pk)
    try:
        item = _save_from_post(request, item)
        drafts_service.add_attachments(draft=item, files=request.FILES.getlist("files"))
        item = drafts_service.queue_send(draft=item)
    except drafts_service.DraftLocked:
        return _to_draft(request, item.pk)
    except ValidationError as exc:
        item.refresh_from_db()
        return _render_draft(request, item, error=exc, status=400)
    # Back where the person was, at once; the notice there can still stop the send.
    assert item.send_at is not None
    undo.offer(request.session, kind=undo.SEND, text="", data={"draft": item.pk}, until=item.send_at)
    return HttpResponseRedirect(_origin(request))


@require_POST
@signed_in
def draft_undo(request: AuthedRequest, draft_id: int) -> HttpResponse:
    item = _draft(request, draft_id)
    if drafts_service.undo_send(draft=item):
        messages.success(request, "Sending cancelled. The message is back in Drafts.")
        return _to_draft(request, item.pk)
    messages.warning(request, "Too late to undo: the message has already been sent.")
    return _to_draft(request, item.pk)


@require_GET
@signed_in
def draft_status(request: AuthedRequest, draft_id: int) -> HttpResponse:
    """The undo panel, polled while a send is pending; "Sent" once it went out."""
    item = _draft(request, draft_id)
    context = {
        "draft": item,
        "undo": _undo_context(item),
        "sent_url": reverse("webmail:sent-message", args=[item.sent_message_id]) if item.sent_message_id else "",
    }
    return render(request, "webmail/compose/_undo.html", context)


# --- Reply, reply all, forward ------------------------------------------------------------------
# They make a draft, so they are POSTs (a GET changes nothing: it goes back to the message). The
# form's key makes a repeated POST (a double click) open the draft the first one made.


def _open(request: AuthedRequest, prepared: drafts_service.Prepared) -> HttpResponse:
    for note in prepared.notes:
        messages.info(request, note)
    return _to_draft(request, prepared.draft.pk)


def _entry(request: AuthedRequest, entry_id: int) -> Any:
    return get_object_or_404(inbox_for(user=request.user).select_related("remote", "local"), pk=entry_id)


def _key(request: AuthedRequest, action: str) -> uuid.UUID | None:
    """This action's key, derived from the page's: Reply and Forward on one page make different drafts."""
    try:
        page = uuid.UUID(request.POST.get("key", ""))
    except ValueError:
        return None
    return uuid.uuid5(page, action)


@require_http_methods(["GET", "POST"])
@signed_in
def reply(request: AuthedRequest, entry_id: int) -> HttpResponse:
    entry = _entry(request, entry_id)
    if request.method == "GET":
        return redirect("webmail:entry", entry_id=entry.pk)
    if entry.state == EntryState.WITHDRAWN:
        messages.error(request, WITHDRAWN)
        return redirect("webmail:entry", entry_id=entry.pk)
    reply_all = request.POST.get("all") == "1"
    return _open(
        request,
        drafts_service.open_once(
            owner=request.user,
            key=_key(request, f"reply{'-all' if reply_all else ''}:{entry.pk}"),
            prepare=partial(replies.reply_to_entry, owner=request.user, entry=entry, reply_all=reply_all),
        ),
    )


@require_http_methods(["GET", "POST"])
@signed_in
def forward(request: AuthedRequest, entry_id: int) -> HttpResponse:
    entry = _entry(request, entry_id)
    if request.method == "GET":
        return redirect("webmail:entry", entry_id=entry.pk)
    if entry.state == EntryState.WITHDRAWN:
        messages.error(request, WITHDRAWN)
        return redirect("webmail:entry", entry_id=entry.pk)
    return _open(
        request,
        drafts_service.open_once(
            owner=request.user,
            key=_key(request, f"forward:{entry.pk}"),
            prepare=partial(replies.forward_entry, owner=request.user, entry=entry),
        ),
    )


@require_http_methods(["GET", "POST"])
@signed_in
def reply_sent(request: AuthedRequest, message_id: uuid.UUID) -> HttpResponse:
    message = get_object_or_404(sent_messages_for(user=request.user), pk=message_id)
    if request.method == "GET":
        return redirect(reverse("webmail:sent-message", args=[message.pk]))
    reply_all = request.POST.get("all") == "1"
    return _open(
        request,
        drafts_service.open_once(
            owner=request.user,
            key=_key(request, f"reply-sent{'-all' if reply_all else ''}:{message.pk}"),
            prepare=partial(drafts_service.reply_to_sent, owner=request.user, message=message, reply_all=reply_all),
        ),
    )


# --- Autocomplete --------------------------------------------------------------------------------


@require_GET
@signed_in
def contacts(request: AuthedRequest) -> HttpResponse:
    """Past correspondents whose address or name matches what is typed: <option>s for htmx (the
    address, labelled with the name beside it), JSON otherwise (``names`` by address, when known).

    The query may be a whole comma-separated field (``q``, or the field's own
    name ``to``/``cc``/``bcc`` as htmx sends it): the last item is matched,
    and each suggestion keeps the items before it, so picking one completes
    the field.
    """
    raw = next((request.GET[k] for k in ("q", "to", "cc", "bcc") if k in request.GET), "")[:2000]
    head, sep, last = raw.rpartition(",")
    prefix = f"{head.strip()}, " if sep and head.strip() else ""
    query = last.strip()
    # Contacts by name or address first (Settings → Contacts), then other recent correspondents.
    found = suggestions_for(user=request.user, query=query) if query else []
    if request.htmx:
        options = [{"value": prefix + s.address, "address": s.address, "name": s.name} for s in found]
        return render(request, "webmail/compose/_contacts.html", {"options": options})
    return JsonResponse(
        {"query": query, "contacts": [s.address for s in found], "names": {s.address: s.name for s in found if s.name}}
    )


@require_GET
@signed_in
def recipient_reach(request: AuthedRequest) -> HttpResponse:
    """How the recipients of one address field would be reached: an htmx partial marking the ones
    that go by ordinary email (SMTP) or could not be checked; JSON with every domain otherwise.

    The field comes as ``to``, ``cc`` or ``bcc`` (the input's own name, as htmx sends it) or ``q``.
    Answers come from discovery's caches; a domain not known yet is waited for a moment at most.
    """
    raw = next((request.GET[k] for k in ("to", "cc", "bcc", "q") if k in request.GET), "")[:4000]
    by_domain = domains_in(raw)
    answers = reach_of(list(by_domain))
    if request.htmx:
        marked = [
            {"domain": a.domain, "kind": a.kind, "note": a.note, "addresses": by_domain[a.domain]}
            for a in answers
            if a.note
        ]
        return render(request, "webmail/compose/_reach.html", {"marked": marked})
    return JsonResponse(
        {
            "domains": [
                {"domain": a.domain, "reach": a.kind, "note": a.note, "addresses": by_domain[a.domain]} for a in answers
            ]
        }
    )
