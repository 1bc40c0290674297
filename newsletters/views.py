"""A list's public pages: its page with the archive and a subscribe form, and its Atom feed.

Subscribing sends the reader to their OWN instance's confirm page (docs/protocol.md §13.1):
only their instance may ask, signed, for their address to be recorded. An address at an ordinary
mail domain (no Pushmail instance) gets a confirmation mail instead (newsletters/legacy.py), and
each issue by SMTP with a one-click unsubscribe link, answered here without sign-in (RFC 8058).
"""

from __future__ import annotations

from urllib.parse import urlencode

from django import forms
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods

from accounts.validators import domain_of, normalize_address
from federation import client, discovery
from outbox.complaints import SendingPaused
from outbox.smtp import smtp_enabled

from . import legacy, selectors
from .models import Newsletter, SubscriberState

#: Where a reader's instance shows its confirm page (§13.1): ``?list=<address>&name=<name>``.
CONFIRM_PATH = "/newsletters/subscribe/"


class SubscribeForm(forms.Form):
    address = forms.CharField(label="Your address", max_length=320)

    def clean_address(self) -> str:
        try:
            return normalize_address(self.cleaned_data["address"])
        except ValidationError as exc:
            raise ValidationError(exc.messages[0]) from exc


def _newsletter(slug: str) -> Newsletter:
    try:
        return selectors.public_newsletter(slug=slug)
    except Newsletter.DoesNotExist:
        raise Http404("no such list") from None


def confirm_url(*, address: str, newsletter: Newsletter) -> str:
    """The subscriber's own instance's confirm page for this list."""
    base = discovery.base_url_for(domain_of(address)).rstrip("/")
    return base + CONFIRM_PATH + "?" + urlencode({"list": newsletter.address, "name": newsletter.name})


@require_http_methods(["GET", "POST"])
def page(request: HttpRequest, slug: str) -> HttpResponse:
    """``/n/<slug>/``: the list, its archive, and a form that sends the reader to their instance to confirm."""
    newsletter = _newsletter(slug)
    form = SubscribeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        address = form.cleaned_data["address"]
        domain = domain_of(address)
        try:
            instance = discovery.discover(domain)
        except (discovery.DiscoveryError, client.PeerError):
            return _problem(request, newsletter, 503, f"{domain} did not answer just now: try again in a few minutes.")
        if instance is None:
            return _subscribe_by_mail(request, newsletter, address)
        # Not a redirect: the page's Content-Security-Policy (form-action 'self') would stop a form's
        # redirect to another origin. A page that moves on by itself, with the link to follow.
        target = confirm_url(address=address, newsletter=newsletter)
        return render(
            request, "newsletters/continue.html", {"newsletter": newsletter, "target": target, "domain": domain}
        )
    context = {
        "newsletter": newsletter,
        "issues": selectors.archive(newsletter=newsletter),
        "form": form,
        "feed_url": reverse("newsletter-feed", args=[newsletter.slug]),
    }
    return render(request, "newsletters/page.html", context, status=400 if form.errors else 200)


@require_GET
def feed(request: HttpRequest, slug: str) -> HttpResponse:
    """``/n/<slug>/feed.atom``: the archive as Atom, to read without subscribing."""
    newsletter = _newsletter(slug)
    page_url = request.build_absolute_uri(reverse("newsletter-page", args=[slug]))
    content = selectors.atom_feed(newsletter=newsletter, page_url=page_url, feed_url=request.build_absolute_uri())
    return HttpResponse(content, content_type="application/atom+xml; charset=utf-8")


def _problem(request: HttpRequest, newsletter: Newsletter | None, status: int, reason: str) -> HttpResponse:
    return render(request, "newsletters/problem.html", {"newsletter": newsletter, "reason": reason}, status=status)


def _subscribe_by_mail(request: HttpRequest, newsletter: Newsletter, address: str) -> HttpResponse:
    """An ordinary mail address: a confirmation link by mail (double opt-in), when this instance sends mail."""
    if not smtp_enabled():
        reason = f"{domain_of(address)} has no Pushmail instance, and this instance does not send ordinary mail."
        return _problem(request, newsletter, 400, reason)
    try:
        legacy.subscribe_by_mail(newsletter=newsletter, address=address)
    except SendingPaused:
        return _problem(request, newsletter, 503, f"{newsletter.name} cannot take subscriptions just now.")
    # The same page whether a mail went or not: it tells nobody whether the address is subscribed.
    return render(request, "newsletters/check_mail.html", {"newsletter": newsletter, "address": address})


@csrf_exempt  # the signed token is the capability; the form posts back to the link itself
@require_http_methods(["GET", "POST"])
def confirm(request: HttpRequest, slug: str, token: str) -> HttpResponse:
    """``/n/<slug>/confirm/<token>/``: GET shows what is confirmed, the Confirm button POSTs; only then
    is the reader subscribed (a link checker fetching the mail's link subscribes nobody)."""
    newsletter = _newsletter(slug)
    try:
        if request.method == "POST":
            subscriber = legacy.confirm(newsletter=newsletter, token=token)
            return render(request, "newsletters/confirmed.html", {"newsletter": newsletter, "subscriber": subscriber})
        subscriber = legacy.check_confirmation(newsletter=newsletter, token=token)
    except legacy.LinkProblem as problem:
        return _problem(request, newsletter, problem.status, problem.reason)
    context = {"newsletter": newsletter, "subscriber": subscriber, "done": subscriber.state == SubscriberState.ACTIVE}
    return render(request, "newsletters/confirm.html", context)


@csrf_exempt  # RFC 8058: mail programs POST the link without any cookie; the token identifies the subscription
@require_http_methods(["GET", "POST"])
def unsubscribe(request: HttpRequest, slug: str, token: str) -> HttpResponse:
    """``/n/<slug>/unsubscribe/<token>/``, the List-Unsubscribe link: a POST (``List-Unsubscribe=One-Click``,
    or the page's button) unsubscribes at once, no sign-in; a GET only shows the button."""
    try:
        if request.method == "POST":
            subscriber = legacy.unsubscribe_by_token(slug=slug, token=token)
        else:
            subscriber = legacy.subscriber_by_token(slug=slug, token=token)
    except legacy.LinkProblem as problem:
        return _problem(request, None, problem.status, problem.reason)
    context = {
        "newsletter": subscriber.newsletter,
        "subscriber": subscriber,
        "left": subscriber.state == SubscriberState.UNSUBSCRIBED,
    }
    return render(request, "newsletters/unsubscribe.html", context)
