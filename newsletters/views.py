"""A list's public pages: its page with the archive and a subscribe form, and its Atom feed.

Subscribing sends the reader to their OWN instance's confirm page (docs/protocol.md §13.1):
only their instance may ask, signed, for their address to be recorded.
"""

from __future__ import annotations

from urllib.parse import urlencode

from django import forms
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from accounts.validators import domain_of, normalize_address
from federation import discovery

from . import selectors
from .models import Newsletter

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
        # Not a redirect: the page's Content-Security-Policy (form-action 'self') would stop a form's
        # redirect to another origin. A page that moves on by itself, with the link to follow.
        address = form.cleaned_data["address"]
        target = confirm_url(address=address, newsletter=newsletter)
        return render(
            request,
            "newsletters/continue.html",
            {"newsletter": newsletter, "target": target, "domain": domain_of(address)},
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
