"""Signed calls to other instances, with their answers sorted into
"done", "try again later" and "permanent" (docs/protocol.md §5–§7)."""

from __future__ import annotations

import json
import uuid
from typing import IO, Any

from django.conf import settings

from . import http
from .discovery import Instance
from .payloads import ListNotification, Notification, Report, Subscription, Withdrawal, clean_text, notification_batch
from .signatures import sign_as


class PeerError(Exception):
    """A call failed. ``retryable`` says whether trying later may succeed."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class Gone(Exception):
    """The sender answered 410: the body was withdrawn or has expired."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _call(
    method: str,
    url: str,
    *,
    as_domain: str,
    payload: dict[str, Any] | None,
    max_bytes: int,
    accept: str = "application/json",
    **options: Any,
) -> http.Response:
    body = json.dumps(payload, separators=(",", ":")).encode() if payload is not None else None
    headers = {"Accept": accept}
    if body is not None:
        headers["Content-Type"] = "application/json"
    headers = sign_as(as_domain, method=method, url=url, headers=headers, body=body)
    try:
        return http.request(method, url, headers=headers, body=body, max_bytes=max_bytes, **options)
    except http.OutboundError as exc:
        raise PeerError(str(exc), retryable=exc.retryable) from exc


def _error_text(response: http.Response) -> str:
    try:
        data = response.json()
        detail = clean_text(data.get("detail") or data.get("error"))
    except (ValueError, AttributeError):
        detail = None
    return f"HTTP {response.status}" + (f": {detail}" if detail else "")


# A peer's Retry-After is obeyed up to a day: "nan", "inf" or 40 digits must not break the schedule.
MAX_RETRY_AFTER = 86400


def _retry_after(value: str) -> float:
    """``Retry-After`` as delta-seconds (§6.1): 60 when missing or not digits, from 1 to MAX_RETRY_AFTER."""
    value = value.strip()
    if not (value.isascii() and value.isdigit()):
        return 60.0
    return float(min(max(int(value[:12]), 1), MAX_RETRY_AFTER))


def _raise_for(response: http.Response) -> None:
    status = response.status
    if status == 429 or status == 503:
        retry_after = _retry_after(response.headers.get("retry-after", ""))
        raise PeerError(_error_text(response), retryable=True, retry_after=retry_after)
    # 401 may be a key cache that has not caught up with a rotation yet.
    retryable = status >= 500 or status in (401, 408)
    raise PeerError(_error_text(response), retryable=retryable)


def send_notification(
    *, instance: Instance, sender_domain: str, notification: Notification
) -> dict[str, dict[str, str]]:
    """POST a notification; return ``{address: {"status": ..., "reason": ...}}``."""
    response = _call(
        "POST",
        instance.url("notifications"),
        as_domain=sender_domain,
        payload=notification.to_json(),
        max_bytes=1 << 20,
    )
    if response.status not in (200, 201, 202):
        _raise_for(response)
    try:
        return _recipient_answers(response.json()["results"])
    except (ValueError, KeyError, TypeError) as exc:
        raise PeerError("notification answer is not the documented JSON", retryable=True) from exc


def _recipient_answers(results: Any) -> dict[str, dict[str, str]]:
    """``{address: {"status": ..., "reason": ...}}`` from a notification answer's ``results``."""
    if not isinstance(results, list):
        raise TypeError("results is not a list")
    # The peer's words are stored and shown to the sender: only strings, no control characters.
    return {
        r["address"]: {"status": clean_text(r["status"]), "reason": clean_text(r.get("reason", ""))}
        for r in results
        if isinstance(r, dict) and isinstance(r.get("address"), str)
    }


class BatchRefused(PeerError):
    """The peer will not take this batch as a batch: it takes none (any more: 404, 405), or not this one
    (413, or 400 about the batch itself, each notification in it being answered on its own otherwise).
    Send them one by one."""


#: One notification's outcome in a batch: each recipient's answer, or what a lone request would have raised.
BatchOutcome = dict[str, dict[str, str]] | PeerError


def batch_timeout(count: int) -> float:
    """How long a batch of ``count`` notifications is waited for: a lone request's timeout, and
    PUSHMAIL_BATCH_SECONDS_PER_NOTIFICATION more for each notification in it."""
    return http.default_timeout() + settings.PUSHMAIL_BATCH_SECONDS_PER_NOTIFICATION * count


def send_notification_batch(
    *, instance: Instance, sender_domain: str, notifications: list[Notification], body: bytes | None = None
) -> list[BatchOutcome]:
    """POST several notifications to one domain in one signed request (§5.4.1); one outcome each, in order.

    A batch refused as a whole raises PeerError (BatchRefused when the peer takes no batches).
    ``body``: the batch already serialized (the caller measured it against the peer's limit).
    """
    if body is None:
        body = json.dumps(notification_batch(notifications), separators=(",", ":")).encode()
    url = instance.url("notifications/batch")
    headers = sign_as(
        sender_domain,
        method="POST",
        url=url,
        headers={"Accept": "application/json", "Content-Type": "application/json"},
        body=body,
    )
    try:
        response = http.request(
            "POST", url, headers=headers, body=body, max_bytes=4 << 20, timeout=batch_timeout(len(notifications))
        )
    except http.OutboundError as exc:
        raise PeerError(str(exc), retryable=exc.retryable) from exc
    if response.status in (400, 404, 405, 413):
        raise BatchRefused(_error_text(response), retryable=True)
    if response.status != 200:
        _raise_for(response)
    try:
        answers = response.json()["answers"]
        if not isinstance(answers, list):
            raise TypeError("answers is not a list")
        outcomes = [_batch_outcome(answer) for answer in answers[: len(notifications)]]
    except (ValueError, KeyError, TypeError) as exc:
        raise PeerError("notification batch answer is not the documented JSON", retryable=True) from exc
    missing = PeerError("no answer for this notification in the batch", retryable=True)
    return outcomes + [missing] * (len(notifications) - len(outcomes))


def _batch_outcome(answer: Any) -> BatchOutcome:
    """One answer of a batch, sorted as the same status of a lone notification would be (§6.1)."""
    if not isinstance(answer, dict):
        return PeerError("an answer in the batch is not an object", retryable=True)
    status = answer.get("status")
    if status == 200:
        return _recipient_answers(answer.get("results"))
    text = f"HTTP {status}" if type(status) is int else "no status"
    detail = clean_text(answer.get("detail") or answer.get("error"))
    text += f": {detail}" if detail else ""
    if type(status) is not int:
        return PeerError(text, retryable=True)
    if status == 429 or status == 503:
        return PeerError(text, retryable=True, retry_after=_retry_after(str(answer.get("retry_after", ""))))
    return PeerError(text, retryable=status >= 500 or status in (401, 408))


def send_withdrawal(*, instance: Instance, sender_domain: str, withdrawal: Withdrawal) -> dict[str, Any]:
    response = _call(
        "POST", instance.url("withdrawals"), as_domain=sender_domain, payload=withdrawal.to_json(), max_bytes=65536
    )
    if response.status == 404:
        return {"status": "unknown"}  # never notified there: nothing to withdraw
    if response.status != 200:
        _raise_for(response)
    try:
        data = response.json()
    except ValueError as exc:
        raise PeerError("withdrawal answer is not JSON", retryable=True) from exc
    return data if isinstance(data, dict) else {}


def send_report(*, instance: Instance, as_domain: str, report: Report) -> dict[str, str]:
    """POST a spam report to the message's origin (§5.8): its answer's ``status`` and ``complaint``.

    Any other answer than 200/202 raises PeerError, retryable or not by §6.1
    (so ``404 unknown_message`` and ``403 not_a_recipient`` are permanent).
    """
    response = _call("POST", instance.url("reports"), as_domain=as_domain, payload=report.to_json(), max_bytes=65536)
    if response.status not in (200, 202):
        _raise_for(response)
    try:
        data = response.json()
    except ValueError as exc:
        raise PeerError("report answer is not JSON", retryable=True) from exc
    if not isinstance(data, dict):
        raise PeerError("report answer is not a JSON object", retryable=True)
    return {"status": clean_text(data.get("status")), "complaint": clean_text(data.get("complaint"))}


def _raise_for_fetch(response: http.Response, what: str) -> None:
    """A fetch that did not answer 200: Gone on 410, a retryable PeerError on 404, else by status."""
    if response.status == 410:
        try:
            reason = response.json().get("reason", "expired")
        except (ValueError, AttributeError):
            reason = "expired"
        raise Gone("withdrawn" if reason == "withdrawn" else "expired")
    if response.status == 404:
        raise PeerError(f"the sender's instance does not offer this {what} to us (404)", retryable=True)
    _raise_for(response)


def fetch_body(*, instance: Instance, as_domain: str, global_id: uuid.UUID) -> bytes:
    """GET the canonical body bytes; raise Gone on 410, PeerError otherwise."""
    response = _call(
        "GET",
        instance.url(f"messages/{global_id}/body"),
        as_domain=as_domain,
        payload=None,
        max_bytes=settings.PUSHMAIL_MAX_BODY_BYTES,
    )
    if response.status == 200:
        return response.content
    _raise_for_fetch(response, "message")
    raise AssertionError("unreachable")


def attachment_timeout(size: int) -> float:
    """The deadline for one attachment: the usual one plus 1 s per 32 KiB, at most 15 minutes.

    A background worker waits for it, not a reader's web request, so a large
    file from a slow sender (down to 32 KiB/s) still arrives.
    """
    return max(min(settings.PUSHMAIL_HTTP_TIMEOUT + size / (32 * 1024), 900.0), settings.PUSHMAIL_HTTP_TIMEOUT)


def fetch_attachment(
    *, instance: Instance, as_domain: str, global_id: uuid.UUID, digest: str, size: int, sink: IO[bytes]
) -> None:
    """GET one attachment's bytes into ``sink`` (a file), at most ``size`` bytes (its manifest size).

    The caller verifies the digest (attachments.services.store_verified).
    Raises Gone on 410 and PeerError otherwise; more bytes than ``size`` is a
    permanent PeerError.
    """
    response = _call(
        "GET",
        instance.url(f"messages/{global_id}/attachments/{digest}"),
        as_domain=as_domain,
        payload=None,
        max_bytes=size,
        accept="application/octet-stream",
        sink=sink,
        timeout=attachment_timeout(size),
    )
    if response.status == 200:
        return
    _raise_for_fetch(response, "attachment")


def send_subscription(*, instance: Instance, subscription: Subscription) -> str:
    """POST a subscription request as the subscriber's domain (§13.2): the state the list now records.

    A 404 ``unknown_list`` and a 403 are permanent PeerErrors; 5xx, 401, 429 and 503 retryable (§6.1).
    """
    as_domain = subscription.subscriber.rpartition("@")[2]
    response = _call(
        "POST", instance.url("subscriptions"), as_domain=as_domain, payload=subscription.to_json(), max_bytes=65536
    )
    if response.status != 200:
        _raise_for(response)
    try:
        data = response.json()
    except ValueError as exc:
        raise PeerError("subscription answer is not JSON", retryable=True) from exc
    state = clean_text(data.get("state")) if isinstance(data, dict) else ""
    if state not in ("active", "paused", "unsubscribed"):
        raise PeerError("subscription answer has no state", retryable=True)
    return state


def send_list_notification(*, instance: Instance, notification: ListNotification) -> int:
    """POST an issue's notification to one subscriber domain (§13.3): how many subscribers there got it."""
    as_domain = notification.list_address.rpartition("@")[2]
    response = _call(
        "POST",
        instance.url("list-notifications"),
        as_domain=as_domain,
        payload=notification.to_json(),
        max_bytes=65536,
    )
    if response.status != 200:
        _raise_for(response)
    try:
        data = response.json()
        delivered = data["delivered"]
    except (ValueError, KeyError, TypeError) as exc:
        raise PeerError("list notification answer is not the documented JSON", retryable=True) from exc
    if not isinstance(delivered, int) or isinstance(delivered, bool) or delivered < 0:
        raise PeerError("list notification answer has no count", retryable=True)
    return delivered
