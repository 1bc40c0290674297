"""Settings pages: preferences, and API tokens (also the app passwords of mail programs).

Account security pages are allauth's (/accounts/).
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from accounts import selectors, services
from accounts.forms import PreferencesForm, TokenForm
from accounts.http import AuthedRequest
from attachments.selectors import quota_for
from gateway.submission import mail_program_settings
from mailaccess.program_settings import imap_program_settings
from mailbox import remote_content
from mailbox.models import AllowedSender


def _add_errors(form: forms.Form, exc: ValidationError) -> None:
    for field, errors in exc.message_dict.items():
        for error in errors:
            form.add_error(field if field in form.fields else None, error)


@login_required
@require_http_methods(["GET", "POST"])
def preferences(request: AuthedRequest) -> HttpResponse:
    user = request.user
    form = PreferencesForm(request.POST or None, user=user)
    if request.method == "POST" and form.is_valid():
        try:
            services.update_preferences(user=user, **form.cleaned_data)
        except ValidationError as exc:
            _add_errors(form, exc)
        else:
            messages.success(request, "Settings saved.")
            return redirect("webmail:settings")
    context = {
        "form": form,
        "storage": quota_for(user),
        "security": selectors.security_for(user=user),
        "domain": user.domain,
        "allowed_senders": remote_content.allowed_senders_for(user=user),
    }
    return render(request, "webmail/settings/preferences.html", context, status=400 if form.errors else 200)


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def tokens(request: AuthedRequest) -> HttpResponse:
    form = TokenForm(request.POST or None)
    new_token = None
    if request.method == "POST" and form.is_valid():
        # Shown in this response only; only its hash is kept.
        new_token = services.issue_api_token(user=request.user, name=form.cleaned_data["name"])
        form = TokenForm()
    context = {
        "form": form,
        "tokens": selectors.api_tokens_for(user=request.user),
        "new_token": new_token,
        "mail_program": mail_program_settings(),
        "imap": imap_program_settings(),
    }
    return render(request, "webmail/settings/tokens.html", context, status=400 if form.errors else 200)


@login_required
@require_POST
def revoke_token(request: AuthedRequest, token_id: int) -> HttpResponse:
    if not services.revoke_api_token(user=request.user, token_id=token_id):
        raise Http404("no such token")
    messages.success(request, "Token revoked. Programs using it can no longer sign in.")
    return redirect("webmail:tokens")


@login_required
@require_POST
def remove_allowed_sender(request: AuthedRequest, sender_id: int) -> HttpResponse:
    """Images from this sender are blocked again until allowed."""
    try:
        remote_content.forget_allowed_sender(user=request.user, sender_id=sender_id)
    except AllowedSender.DoesNotExist:
        raise Http404("No such sender in your list.") from None
    messages.success(request, "Images from that sender are blocked again until you allow them.")
    return redirect("webmail:settings")
