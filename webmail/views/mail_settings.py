"""Settings pages for mail: filters, the vacation reply, contacts, and import of existing mail."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_http_methods, require_POST

from accounts.http import AuthedRequest
from attachments.selectors import usage_bytes
from attachments.uploads import Allowance, limit_uploads, upload_problem
from mailsettings import selectors, services
from mailsettings.forms import ContactForm, FilterForm, ImportForm, VacationForm
from mailsettings.models import Filter
from pushmail_site.sizes import human_size


def _add_errors(form: forms.Form, exc: ValidationError) -> None:
    if not hasattr(exc, "error_dict"):
        for message in exc.messages:
            form.add_error(None, message)
        return
    for field, errors in exc.message_dict.items():
        for error in errors:
            form.add_error(field if field in form.fields else None, error)


@login_required
@require_http_methods(["GET", "POST"])
def filters(request: AuthedRequest) -> HttpResponse:
    """The user's filters, in the order they run, and a form to add one."""
    user = request.user
    form = FilterForm(request.POST or None, user=user)
    if request.method == "POST" and form.is_valid():
        try:
            services.create_filter(user=user, data=form.to_input())
        except ValidationError as exc:
            _add_errors(form, exc)
        else:
            messages.success(request, "Filter added. It applies to new mail from now on.")
            return redirect("webmail:filters")
    context = {"form": form, "filters": selectors.filters_for(user=user)}
    return render(request, "webmail/settings/filters.html", context, status=400 if form.errors else 200)


@login_required
@require_http_methods(["GET", "POST"])
def filter_edit(request: AuthedRequest, filter_id: int) -> HttpResponse:
    user = request.user
    try:
        rule = selectors.filter_for(user=user, filter_id=filter_id)
    except Filter.DoesNotExist:
        raise Http404("No such filter.") from None
    form = FilterForm(request.POST or None, user=user, instance=rule)
    if request.method == "POST" and form.is_valid():
        try:
            services.update_filter(user=user, filter_id=rule.pk, data=form.to_input())
        except ValidationError as exc:
            _add_errors(form, exc)
        else:
            messages.success(request, "Filter saved.")
            return redirect("webmail:filters")
    context = {"form": form, "rule": rule}
    return render(request, "webmail/settings/filter_edit.html", context, status=400 if form.errors else 200)


@login_required
@require_POST
def filter_delete(request: AuthedRequest, filter_id: int) -> HttpResponse:
    try:
        services.delete_filter(user=request.user, filter_id=filter_id)
    except Filter.DoesNotExist:
        raise Http404("No such filter.") from None
    messages.success(request, "Filter deleted.")
    return redirect("webmail:filters")


@login_required
@require_POST
def filter_move(request: AuthedRequest, filter_id: int) -> HttpResponse:
    try:
        services.move_filter(user=request.user, filter_id=filter_id, up=request.POST.get("direction") == "up")
    except Filter.DoesNotExist:
        raise Http404("No such filter.") from None
    return redirect("webmail:filters")


@login_required
@require_http_methods(["GET", "POST"])
def vacation(request: AuthedRequest) -> HttpResponse:
    user = request.user
    form = VacationForm(request.POST or None, vacation=selectors.vacation_for(user=user))
    if request.method == "POST" and form.is_valid():
        try:
            saved = services.save_vacation(user=user, **form.cleaned_data)
        except ValidationError as exc:
            _add_errors(form, exc)
        else:
            messages.success(request, "Vacation reply on." if saved.enabled else "Vacation reply off.")
            return redirect("webmail:vacation")
    context = {"form": form, "vacation": selectors.vacation_for(user=user)}
    return render(request, "webmail/settings/vacation.html", context, status=400 if form.errors else 200)


@login_required
@require_http_methods(["GET", "POST"])
def contacts(request: AuthedRequest) -> HttpResponse:
    """The address book: correspondents and added contacts, with names; add or rename one."""
    user = request.user
    form = ContactForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            services.save_contact(user=user, **form.cleaned_data)
        except ValidationError as exc:
            _add_errors(form, exc)
        else:
            messages.success(request, "Contact saved.")
            return redirect("webmail:address-book")
    query = request.GET.get("q", "")[:200]
    context = {"form": form, "contacts": selectors.contacts_for(user=user, query=query), "query": query}
    return render(request, "webmail/settings/contacts.html", context, status=400 if form.errors else 200)


@login_required
@require_POST
def contact_delete(request: AuthedRequest) -> HttpResponse:
    services.delete_contact(user=request.user, address=request.POST.get("address", "")[:320])
    messages.success(request, "Contact removed: it is no longer suggested when you write.")
    return redirect("webmail:address-book")


def _import_allowance(request: AuthedRequest) -> Allowance:
    """One file, up to the import limit and what the mailbox quota has left."""
    limit = settings.PUSHMAIL_IMPORT_MAX_BYTES
    used, quota = usage_bytes(request.user), request.user.effective_quota_bytes
    return Allowance(files=1, total=limit, quota_left=quota - used, used=used, quota=quota, file_bytes=limit)


def _import_refused(request: AuthedRequest, problem: str, status: int) -> HttpResponse:
    context = {"form": ImportForm(), "problem": problem, "limit": human_size(settings.PUSHMAIL_IMPORT_MAX_BYTES)}
    return render(request, "webmail/settings/import.html", context, status=status)


@csrf_exempt  # the upload's limits are set before the CSRF check reads the body; csrf_protect runs inside
@login_required
@require_http_methods(["GET", "POST"])
def import_mail(request: AuthedRequest) -> HttpResponse:
    """Upload an mbox or .eml file: every message is stored here, in the Archive, or none is.

    The upload is stopped at the import limit (and the mailbox quota) as it streams in.
    """
    if request.method == "POST":
        problem = limit_uploads(request, allowance=_import_allowance(request))
        if problem:
            return _import_refused(request, _import_problem(problem), 413)
    return _import_protected(request)


def _import_problem(problem: str) -> str:
    # The upload handler speaks of attachments; here the one file is the mail to import.
    limit = human_size(settings.PUSHMAIL_IMPORT_MAX_BYTES)
    if "quota" in problem:
        problem = problem.replace("Nothing was attached: ", "").replace("these files need", "this file needs")
        return f"Nothing was imported. {problem}"
    return f"Nothing was imported: the file is larger than the {limit} import limit. Split it and import the parts."


@csrf_protect
def _import_protected(request: AuthedRequest) -> HttpResponse:
    stopped = upload_problem(request) if request.method == "POST" else None
    if stopped is not None:
        return _import_refused(request, _import_problem(stopped[0]), stopped[1])
    form = ImportForm(request.POST or None, request.FILES or None)
    limit = human_size(settings.PUSHMAIL_IMPORT_MAX_BYTES)
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        try:
            result = services.import_mail(user=request.user, file=upload, name=upload.name, size=upload.size)
        except ValidationError as exc:
            _add_errors(form, exc)
        else:
            skipped = f" {result.skipped} already in your mailbox were skipped." if result.skipped else ""
            messages.success(
                request,
                f"Imported {result.imported} message{'s' if result.imported != 1 else ''} from {upload.name} "
                f"into the Archive.{skipped}",
            )
            return redirect("webmail:import")
    context = {"form": form, "limit": limit}
    return render(request, "webmail/settings/import.html", context, status=400 if form.errors else 200)
