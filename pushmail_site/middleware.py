"""JSON errors on the API and federation paths, in development as in production.

Django's debug pages are HTML with tracebacks; a client of the JSON APIs gets
a JSON error naming the problem instead, and never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.core.exceptions import RequestDataTooBig
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
