"""JSON errors for the APIs: a clear 4xx naming the problem, never a traceback."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework.views import exception_handler

log = logging.getLogger(__name__)

JSON_PREFIXES = ("/api/", "/federation/", "/.well-known/")


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> HttpResponse:
    if isinstance(exc, RequestDataTooBig):
        return JsonResponse({"error": "too_large", "detail": "request body is too large"}, status=413)
    if isinstance(exc, Http404):
        return JsonResponse({"error": "not_found", "detail": str(exc) or "not found"}, status=404)
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
