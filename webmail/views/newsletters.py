"""Newsletters in the webmail: the lists a user runs (settings), their subscriptions, and the confirm page.

The confirm page (/newsletters/subscribe/?list=…) is where a list's public page sends a
reader of this instance: only here, signed in, can they have this instance ask the list,
signed, to record them (docs/protocol.md §13.1).
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from accounts.http import AuthedRequest
from newsletters import selectors, services
from newsletters.models import Newsletter, Subscription
from outbox.complaints import SendingPaused


class NewsletterForm(forms.Form):
    local_part = forms.CharField(label="Address (before the @)", max_length=64)
    name = forms.CharField(max_length=100)
    slug = forms.CharField(label="Public page /n/…/", max_length=60)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False, max_length=2000)


class IssueForm(forms.Form):
    subject = forms.CharField(max_length=998)
    text = forms.CharField(widget=forms.Textarea(attrs={"rows": 12}))


def _add_errors(form: forms.Form, exc: ValidationError, *, aliases: dict[str, str] | None = None) -> None:
    for field, errors in exc.message_dict.items():
        field = (aliases or {}).get(field, field)
        for error in errors:
            form.add_error(field if field in form.fields else None, error)


@login_required
@require_http_methods(["GET", "POST"])
def newsletters(request: AuthedRequest) -> HttpResponse:
    """Settings › Newsletters: the user's lists, and a form for a new one on their domain."""
    form = NewsletterForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            created = services.create_newsletter(
                owner=request.user,
                address=f"{data['local_part']}@{request.user.domain.name}",
                name=data["name"],
                description=data["description"],
                slug=data["slug"],
            )
        except ValidationError as exc:
            _add_errors(form, exc, aliases={"address": "local_part"})
        else:
            messages.success(request, f"List {created.address} created.")
            return redirect("webmail:newsletter", newsletter_id=created.pk)
    context = {"form": form, "newsletters": selectors.newsletters_for(user=request.user)}
    return render(request, "webmail/settings/newsletters.html", context, status=400 if form.errors else 200)


@login_required
@require_http_methods(["GET", "POST"])
def newsletter(request: AuthedRequest, newsletter_id: int) -> HttpResponse:
    """One of the user's lists: subscribers per domain, issues with their per-domain figures, a new issue."""
    try:
        item = selectors.newsletter_for(user=request.user, newsletter_id=newsletter_id)
    except Newsletter.DoesNotExist:
        raise Http404("no such list") from None
    form = IssueForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            issue = services.publish_issue(newsletter=item, **form.cleaned_data)
        except ValidationError as exc:
            _add_errors(form, exc)
        except SendingPaused as exc:
            form.add_error(None, str(exc))
        else:
            count = issue.message.deliveries.count()
            messages.success(request, f"Issue sent: one notification to each of {count} subscriber domain(s).")
            return redirect("webmail:newsletter", newsletter_id=item.pk)
    context = {
        "newsletter": item,
        "form": form,
        "domains": selectors.subscriber_counts(newsletter=item),
        "stats": selectors.issue_stats(newsletter=item),
        "page_url": reverse("newsletter-page", args=[item.slug]),
    }
    return render(request, "webmail/settings/newsletter.html", context, status=400 if form.errors else 200)


@login_required
@require_http_methods(["GET"])
def subscriptions(request: AuthedRequest) -> HttpResponse:
    """Settings › Subscriptions: every list the user is on, its last issue, pause and one-click unsubscribe."""
    items = list(selectors.subscriptions_for(user=request.user))
    for item in items:
        setattr(item, "label", selectors.state_label(item.state))  # noqa: B010 - shown in the row
    return render(request, "webmail/settings/subscriptions.html", {"subscriptions": items})


_ACTIONS = {"unsubscribe": services.unsubscribe, "pause": services.pause, "resume": services.resume}


@login_required
@require_POST
def subscription_action(request: AuthedRequest, subscription_id: int) -> HttpResponse:
    """Unsubscribe, pause or resume: effective here at once, shown done once the list acknowledges."""
    if not selectors.subscriptions_for(user=request.user).filter(pk=subscription_id).exists():
        raise Http404("no such subscription")  # another's is unknown, whatever the action
    act = _ACTIONS.get(request.POST.get("action", ""))
    if act is None:
        return HttpResponse("unknown action: use unsubscribe, pause or resume", status=400)
    try:
        item = act(user=request.user, subscription_id=subscription_id)
    except Subscription.DoesNotExist:  # deleted meanwhile
        raise Http404("no such subscription") from None
    messages.success(request, f"{item.list_name or item.list_address}: {selectors.state_label(item.state)}.")
    back = request.POST.get("next", "")
    if back.startswith("/") and not back.startswith("//"):
        return redirect(back)
    return redirect("webmail:subscriptions")


@login_required
@require_http_methods(["GET", "POST"])
def confirm_subscribe(request: AuthedRequest) -> HttpResponse:
    """``/newsletters/subscribe/?list=<address>&name=<name>``: the reader confirms; this instance asks the list."""
    source = request.POST if request.method == "POST" else request.GET
    list_address = source.get("list", "")
    list_name = source.get("name", "")[:100]
    existing = selectors.subscription_to(user=request.user, list_address=list_address.strip().lower())
    if request.method == "POST":
        try:
            services.subscribe(user=request.user, list_address=list_address, list_name=list_name)
        except ValidationError as exc:
            return render(
                request,
                "webmail/newsletters/confirm.html",
                {"error": "; ".join(exc.messages), "list_address": list_address, "list_name": list_name},
                status=400,
            )
        messages.success(request, f"Subscription to {list_name or list_address} requested.")
        return redirect("webmail:subscriptions")
    context = {"list_address": list_address, "list_name": list_name, "existing": existing}
    return render(request, "webmail/newsletters/confirm.html", context)
