"""JSON errors for the APIs: a clear 4xx naming the problem, never a traceback."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework.views import exception_handler

log = logging.getLogger(__name__)

JSON_PREFIXES = ("/api/", "/federation/", "/.well-known/")
# How long a client is asked to wait when the database is away (a restart takes seconds).
DATABASE_RETRY_AFTER_SECONDS = 5


def database_unavailable(exc: BaseException) -> HttpResponse | None:
    """503 with Retry-After for an error of the database connection rather than of the request
    (the server restarting, a connection it cut, a deadlock it broke): the client tries again,
    as a sending peer does after any 503. None for any other error."""
    if not isinstance(exc, OperationalError | InterfaceError):
        return None
    log.warning("database unavailable: %s", exc)
    response = JsonResponse(
        {"error": "unavailable", "detail": "the database is unavailable for a moment; try again shortly"},
        status=503,
    )
    response["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
    return response


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> HttpResponse:
    if isinstance(exc, RequestDataTooBig):
        return JsonResponse({"error": "too_large", "detail": "request body is too large"}, status=413)
    if isinstance(exc, Http404):
        return JsonResponse({"error": "not_found", "detail": str(exc) or "not found"}, status=404)
    unavailable = database_unavailable(exc)
    if unavailable is not None:
        return unavailable
    response = exception_handler(exc, context)
    if response is None:
        log.exception("unhandled API error", exc_info=exc)
        return JsonResponse({"error": "server_error", "detail": "internal error; it has been logged"}, status=500)
    data = response.data
    if isinstance(data, dict) and "detail" in data and len(data) == 1:
        response.data = {"error": getattr(exc, "default_code", "error"), "detail": data["detail"]}
    else:
        response.data = {"error": "invalid", "detail": "the request has invalid fields", "fields": data}
    return response


def _wants_json(request: HttpRequest) -> bool:
    return request.path.startswith(JSON_PREFIXES) or "application/json" in request.headers.get("Accept", "")


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse({"error": "not_found", "detail": f"nothing at {request.path}"}, status=404)
    return defaults.page_not_found(request, exception)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse({"error": "bad_request", "detail": "the request could not be read"}, status=400)
    return defaults.bad_request(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse({"error": "server_error", "detail": "internal error; it has been logged"}, status=500)
    return defaults.server_error(request)
