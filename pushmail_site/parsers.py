"""Request bodies of the user API, read only up to a limit."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from rest_framework import renderers
from rest_framework.exceptions import APIException
from rest_framework.parsers import BaseParser, JSONParser
from rest_framework.settings import api_settings

from .sizes import human_size


class RequestTooLarge(APIException):
    status_code = 413
    default_code = "too_large"
    default_detail = "The request body is too large."


class LimitedJSONParser(BaseParser):
    """JSON up to the view's ``max_body_bytes()`` (default ``DATA_UPLOAD_MAX_MEMORY_SIZE``).

    A larger ``Content-Length`` is answered ``413 too_large`` before the body is
    read; a body without one is read only one byte past the limit. (Not a
    JSONParser subclass: DRF reads ``request.body`` whole for those, under
    Django's one limit for every endpoint.)
    """

    media_type = "application/json"
    renderer_class = renderers.JSONRenderer
    strict = api_settings.STRICT_JSON

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        context = parser_context or {}
        view = context.get("view")
        request = context.get("request")
        limit_of = getattr(view, "max_body_bytes", None)
        limit = int(limit_of()) if callable(limit_of) else settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        reason_of = getattr(view, "max_body_reason", None)
        reason = reason_of() if callable(reason_of) else ""
        what = f" ({reason})" if reason else ""
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
        except ValueError:
            declared = 0
        if declared > limit:
            raise RequestTooLarge(
                f"The request body is {human_size(declared)}, over the {human_size(limit)} limit{what}; "
                "it was not read."
            )
        data = stream.read(limit + 1) if stream is not None else b""
        if len(data) > limit:
            raise RequestTooLarge(f"The request body is over the {human_size(limit)} limit{what}.")
        return JSONParser().parse(io.BytesIO(data), media_type, parser_context)
