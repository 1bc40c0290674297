"""JSON errors on the API and federation paths, in development as in production; and the
lean middleware stack of the server-to-server paths.

Django's debug pages are HTML with tracebacks; a client of the JSON APIs gets
a JSON error naming the problem instead, and never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.handlers.base import BaseHandler
from django.http import HttpRequest, HttpResponse, JsonResponse

from .errors import JSON_PREFIXES, database_unavailable

log = logging.getLogger(__name__)


class JsonApiErrors:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            response.status_code == 404
            and request.path.startswith(JSON_PREFIXES)
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            return JsonResponse({"error": "not_found", "detail": f"nothing at {request.path}"}, status=404)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not request.path.startswith(JSON_PREFIXES):
            return None
        if isinstance(exception, RequestDataTooBig):
            return JsonResponse({"error": "too_large", "detail": "request body is too large"}, status=413)
        unavailable = database_unavailable(exception)
        if unavailable is not None:
            return unavailable
        log.exception("unhandled error on %s", request.path, exc_info=exception)
        return JsonResponse({"error": "server_error", "detail": "internal error; it has been logged"}, status=500)


#: Middleware for people in browsers: sessions, sign-in, CSRF, flash messages, htmx, allauth. A
#: peer instance's signed request uses none of them (every federation view is CSRF-exempt, and
#: reads neither a session nor a user), so the federation paths skip them.
BROWSER_ONLY = frozenset(
    {
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
        "django_htmx.middleware.HtmxMiddleware",
        "allauth.account.middleware.AccountMiddleware",
        "allauth.usersessions.middleware.UserSessionsMiddleware",
    }
)
LEAN_PREFIXES = ("/federation/",)


class LeanFederationPaths:
    """Requests under ``/federation/`` go through the middleware after this one but those in
    :data:`BROWSER_ONLY`; every other request through all of it.

    Placed after the security headers (SecurityMiddleware) and static files, so a peer's answer
    carries the same headers and errors as before (JsonApiErrors, X-Frame-Options, CSP, Content-Length
    are all kept): only the work of the browser-facing middleware is saved, about a tenth of a
    notification's CPU.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        after = settings.MIDDLEWARE[settings.MIDDLEWARE.index(f"{__name__}.{type(self).__name__}") + 1 :]
        self.lean = _handler([path for path in after if path not in BROWSER_ONLY])

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info.startswith(LEAN_PREFIXES):
            return self.lean.get_response(request)  # type: ignore[return-value]
        return self.get_response(request)


def _handler(middleware: list[str]) -> BaseHandler:
    """A request handler (URL resolution, view, exception answers) under these middleware only."""
    handler = BaseHandler()
    full = settings.MIDDLEWARE
    settings.MIDDLEWARE = middleware  # BaseHandler reads its list from the settings, once, here
    try:
        handler.load_middleware()
    finally:
        settings.MIDDLEWARE = full
    return handler
