"""The request types views receive, as the middleware stack makes them.

Django and DRF type ``request.user`` as a mailbox or an anonymous user. A view
behind ``login_required`` (or DRF's default ``IsAuthenticated``) only ever sees
a signed-in mailbox: annotating it with these types says so to the type checker,
so ``request.user`` is a ``User`` without a cast at every call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.http import HttpRequest
from rest_framework.request import Request

if TYPE_CHECKING:
    from django_htmx.middleware import HtmxDetails

    from .models import User


class HtmxRequest(HttpRequest):
    """Any request to a page: django-htmx's middleware sets ``request.htmx`` on every one."""

    htmx: HtmxDetails


class AuthedRequest(HtmxRequest):
    """A request to a page that requires sign-in."""

    user: User


class AuthedApiRequest(Request):
    """A request to the user API, where every view requires authentication."""

    user: User
