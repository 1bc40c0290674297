"""Log lines for machines: JSON, one object a line, with the message and peer they are about.

``LOG_FORMAT=json`` gives every process (web, worker, beat, the gateways) the
:class:`JsonFormatter`. Code that works on a message or for a peer says so once with
:func:`about` (a context manager, kept in a context variable, so it holds for every line
logged meanwhile by any module, and does not leak to the next request or task); a single
line may also pass ``extra={"message_id": ..., "peer": ...}``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

#: The fields a line may carry about what it concerns, in the order they are written.
CONTEXT_FIELDS = ("message_id", "peer")

_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("pushmail_log_context", default={})  # noqa: B039 - never mutated, replaced


@contextmanager
def about(*, message_id: object = None, peer: object = None) -> Iterator[None]:
    """Every line logged inside names this message (its global id) and peer domain."""
    given = {"message_id": message_id, "peer": peer}
    current = {**_context.get(), **{key: str(value) for key, value in given.items() if value is not None}}
    token = _context.set(current)
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Puts the message id and peer of :func:`about` on each record (a line's own ``extra`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the context
    fields that are set, the process id, and the traceback of an exception if there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = str(value)
        line["pid"] = record.process
        if record.exc_info:
            line["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, ensure_ascii=False, default=str)
