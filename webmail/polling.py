"""How a page that waits for a job (a body or an attachment on its way) asks again, by htmx polling."""

from __future__ import annotations

from django.http import HttpRequest


def polls_so_far(request: HttpRequest) -> int:
    """How many times the page has asked already (its ``n`` parameter), capped."""
    value = request.GET.get("n", "")
    return min(int(value), 10_000) if value.isdigit() and len(value) < 6 else 0


def poll_delay(polls: int, *, waiting_for_retry: bool) -> str:
    """Quickly at first, then less often; every 5 s while the job waits for its next attempt."""
    if waiting_for_retry:
        return "5s"  # the worker retries on its own schedule; "Retry now" is there meanwhile
    if polls < 20:
        return "500ms"
    return "2s" if polls < 60 else "5s"
