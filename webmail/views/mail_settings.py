"""Settings pages for mail: filters, the vacation reply, contacts, and import of existing mail."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from accounts.http import AuthedRequest
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


@login_required
@require_http_methods(["GET", "POST"])
def import_mail(request: AuthedRequest) -> HttpResponse:
    """Upload an mbox or .eml file: every message is stored here, in the Archive, or none is."""
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
