"""Transactions that PostgreSQL aborts only because another one ran at the same time, run again.

Two requests storing overlapping rows (the notifications of one message to several domains
hosted here, in batches that arrive at once) can deadlock: PostgreSQL then aborts one of them
with ``deadlock detected`` (SQLSTATE 40P01), as it aborts a transaction that could not be
serialized (40001). Neither says anything about the request: run it again and it succeeds.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django.db import OperationalError, connection

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

RETRIED_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock detected, serialization failure
ATTEMPTS = 4


def is_conflict(exc: BaseException) -> bool:
    """True for an error PostgreSQL raises only because of a concurrent transaction."""
    cause = exc.__cause__
    return isinstance(exc, OperationalError) and getattr(cause, "sqlstate", None) in RETRIED_SQLSTATES


def retry_on_conflict(func: Callable[P, R]) -> Callable[P, R]:
    """Run ``func`` again (up to ``ATTEMPTS`` times, after a short random pause) when PostgreSQL
    aborts it for a deadlock or a serialization failure. ``func`` must own its transactions:
    inside a caller's transaction (which the abort has spoilt) it runs once, unguarded."""

    @functools.wraps(func)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        if connection.in_atomic_block:
            return func(*args, **kwargs)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return func(*args, **kwargs)
            except OperationalError as exc:
                if attempt == ATTEMPTS or not is_conflict(exc):
                    raise
                log.info("%s met a concurrent transaction (%s); running it again", func.__qualname__, exc)
                time.sleep(random.uniform(0.01, 0.05 * attempt))  # noqa: S311 - jitter, not security
        raise AssertionError("unreachable")

    return run
