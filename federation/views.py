"""Server-to-server endpoints (docs/protocol.md). Every error is JSON naming the problem."""

from __future__ import annotations

import base64
import json
import logging
import re
import time
import uuid
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.utils import timezone
from django.utils.cache import get_conditional_response, patch_vary_headers
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.gzip import gzip_page

from accounts.validators import domain_of, normalize_address
from pushmail_site import counters, logs

from . import discovery, evidence, inbound, payloads, publickeys
from .models import SignedRequest
from .signatures import SignatureRejected, Verified, verify_request

log = logging.getLogger(__name__)


def error(status: int, code: str, detail: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"error": code, "detail": detail}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def invalid_payload(exc: payloads.PayloadError) -> JsonResponse:
    """``400 invalid_payload``, with ``field`` naming the offending field (§5.2)."""
    return JsonResponse({"error": "invalid_payload", "field": exc.field, "detail": str(exc)}, status=400)


def _refused(exc: SignatureRejected) -> JsonResponse:
    """The answer to a request whose signature failed, or could not be checked now (503, Retry-After)."""
    if exc.retry_after is None:
        return error(exc.status, exc.code, exc.detail)
    return error(exc.status, exc.code, exc.detail, Retry_After=str(exc.retry_after))


def _read_json(request: HttpRequest, body: bytes) -> Any:
    content_type = request.content_type or ""
    if content_type != "application/json":
        raise payloads.PayloadError("Content-Type", f"must be application/json, not {content_type or 'missing'}")
    return payloads.loads(body)


def _body_within(request: HttpRequest, limit: int) -> bytes | JsonResponse:
    length = request.META.get("CONTENT_LENGTH") or "0"
    try:
        declared = int(length)
    except ValueError:
        return error(400, "bad_request", "Content-Length is not a number")
    if declared > limit:
        return error(413, "too_large", f"body of {declared} bytes exceeds the limit of {limit}")
    body = request.read(limit + 1)
    if len(body) > limit:
        return error(413, "too_large", f"body exceeds the limit of {limit} bytes")
    return body


def _method_not_allowed(allowed: list[str]) -> JsonResponse:
    response = error(405, "method_not_allowed", f"use {', '.join(allowed)}")
    response["Allow"] = ", ".join(allowed)
    return response


def _signed(request: HttpRequest, method: str, limit: int) -> tuple[Verified, bytes] | HttpResponse:
    """A signed request's signer and body (at most ``limit`` bytes), or the answer refusing it."""
    if request.method != method:
        return _method_not_allowed([method])
    body = _body_within(request, limit)
    if isinstance(body, JsonResponse):
        return body
    try:
        return verify_request(request, body), body
    except SignatureRejected as exc:
        counters.SIGNATURE_FAILURES.labels(code=exc.code).inc()
        return _refused(exc)


@csrf_exempt  # read-only; without this a POST would get Django's HTML CSRF page, not the JSON 405
def well_known(request: HttpRequest) -> HttpResponse:
    """``GET /.well-known/pushmail``: the discovery document (§2), cacheable (§2.6).

    The answer carries a strong ``ETag`` (a digest of the exact bytes sent, so the
    gzip-coded and the identity answers have their own) and ``Cache-Control:
    public, max-age=N``; a request whose ``If-None-Match`` names the ETag gets
    ``304 Not Modified`` without a body.
    """
    if request.method not in ("GET", "HEAD"):
        return _method_not_allowed(["GET", "HEAD"])
    document = discovery.own_document(request)
    response = discovery.document_response(document, accepts_gzip=_accepts_gzip(request))
    vary = ["Accept-Encoding"]
    if not settings.PUSHMAIL_BASE_URL:
        vary.append("Host")  # development: "api" names the host asked
    patch_vary_headers(response, vary)
    response["Access-Control-Allow-Origin"] = "*"
    answer = get_conditional_response(request, etag=response["ETag"], response=response) or response
    if answer is not response:  # 304 Not Modified (or 412 to an If-Match that does not match)
        answer["Access-Control-Allow-Origin"] = "*"
    return answer


_GZIP = re.compile(r"\bgzip\b")


def _accepts_gzip(request: HttpRequest) -> bool:
    return bool(_GZIP.search(request.META.get("HTTP_ACCEPT_ENCODING", "")))


@csrf_exempt
@gzip_page
def notifications(request: HttpRequest) -> HttpResponse:
    """``POST /federation/v1/notifications``: accept a signed notification (§5)."""
    response = _answer_notification(request)
    if response.status_code == 200:
        counters.NOTIFICATIONS_RECEIVED.inc()
    else:
        counters.NOTIFICATIONS_REFUSED.labels(code=_error_code(response)).inc()
    return response


def _error_code(response: HttpResponse) -> str:
    """The ``error`` of a JSON error answer (every refusal here is one)."""
    try:
        return str(json.loads(response.content)["error"])
    except (ValueError, KeyError, TypeError):
        return f"http_{response.status_code}"


def _answer_notification(request: HttpRequest) -> HttpResponse:
    signed = _signed(request, "POST", settings.PUSHMAIL_MAX_NOTIFICATION_BYTES)
    if isinstance(signed, HttpResponse):
        return signed
    signer, body = signed
    try:
        notification = payloads.parse_notification(
            _read_json(request, body), max_recipients=settings.PUSHMAIL_MAX_RECIPIENTS
        )
    except payloads.PayloadError as exc:
        return invalid_payload(exc)
    if domain_of(notification.sender) != signer.domain:
        return error(403, "wrong_domain", f"sender {notification.sender} is not of the signing domain {signer.domain}")
    try:
        inbound.check_origin(domain=signer.domain)
    except inbound.OriginRefused as exc:
        if isinstance(exc, inbound.PoorReputation):
            return error(403, "poor_reputation", exc.detail)
        if exc.retry_after is None:
            return error(403, "blocked", exc.detail)
        return error(429, "rate_limited", exc.detail, Retry_After=str(exc.retry_after))
    with logs.about(message_id=notification.global_id, peer=signer.domain):
        try:
            results = inbound.accept_notification(origin=signer.domain, notification=notification)
        except inbound.ConflictingNotification as exc:
            return error(409, "conflicting_notification", _conflict_detail(exc, notification))
        accepted = sum(1 for r in results if r.status == "accepted")
        log.info("notification received: %d of %d recipients accepted", accepted, len(results))
    for result in results:
        counters.NOTIFICATION_RECIPIENTS.labels(status=result.status, reason=result.reason).inc()
    # Kept as evidence only when it reached someone here (docs/protocol.md Appendix C). One INSERT
    # after accept's own commit, not a transaction around it (that would cost two more round trips
    # per notification): should the process die in between, the sender got no answer and retries.
    reached = next((r.address for r in results if r.status == "accepted"), None)
    if reached is not None:
        evidence.keep(
            request=request,
            body=body,
            signer=signer,
            kind=SignedRequest.Kind.NOTIFICATION,
            global_id=notification.global_id,
            sender=notification.sender,
            local_domain=domain_of(reached),
        )
    return JsonResponse({"id": str(notification.global_id), "results": [r.to_json() for r in results]})


def _conflict_detail(exc: inbound.ConflictingNotification, notification: payloads.Notification) -> str:
    return f"{exc.field}: differs from the first notification of {notification.global_id}; nothing was changed"


@csrf_exempt
@gzip_page
def notification_batch(request: HttpRequest) -> HttpResponse:
    """``POST /federation/v1/notifications/batch``: several notifications in one signed request (§5.4.1).

    One signature for the batch; each notification is then checked and answered as it would be
    alone (its answer's ``status`` is the status it would have had), and those that pass are
    stored in one transaction. A batch refused as a whole gets the error answer of §5.2.
    """
    if settings.PUSHMAIL_MAX_BATCH_NOTIFICATIONS < 2:
        return error(404, "not_found", "this instance takes no notification batches")
    signed = _signed(request, "POST", settings.PUSHMAIL_MAX_BATCH_BYTES)
    if isinstance(signed, HttpResponse):
        return signed
    signer, body = signed
    try:
        items = payloads.parse_notification_batch(
            _read_json(request, body),
            max_notifications=settings.PUSHMAIL_MAX_BATCH_NOTIFICATIONS,
            max_recipients=settings.PUSHMAIL_MAX_RECIPIENTS,
        )
    except payloads.PayloadError as exc:
        return invalid_payload(exc)
    answers: list[dict[str, Any] | None] = [None] * len(items)
    valid: list[int] = []
    for i, item in enumerate(items):
        if isinstance(item, payloads.PayloadError):
            answers[i] = {"status": 400, "error": "invalid_payload", "field": item.field, "detail": str(item)}
        elif domain_of(item.sender) != signer.domain:
            detail = f"sender {item.sender} is not of the signing domain {signer.domain}"
            answers[i] = {"status": 403, "id": str(item.global_id), "error": "wrong_domain", "detail": detail}
        else:
            valid.append(i)
    admitted = 0
    if valid:
        try:
            admitted = inbound.check_origin(domain=signer.domain, count=len(valid))
        except inbound.OriginRefused as exc:
            if isinstance(exc, inbound.PoorReputation):
                return error(403, "poor_reputation", exc.detail)
            if exc.retry_after is None:
                return error(403, "blocked", exc.detail)
            return error(429, "rate_limited", exc.detail, Retry_After=str(exc.retry_after))
    for i in valid[admitted:]:
        answers[i] = {
            "status": 429,
            "id": str(items[i].global_id),  # type: ignore[union-attr]
            "error": "rate_limited",
            "detail": f"{signer.domain} is over its limit of notifications per minute",
            "retry_after": _seconds_to_next_minute(),
        }
    taken = [items[i] for i in valid[:admitted]]
    notifications = [n for n in taken if isinstance(n, payloads.Notification)]
    outcomes = inbound.accept_notifications(origin=signer.domain, notifications=notifications) if notifications else []
    reached: tuple[payloads.Notification, str] | None = None
    for i, notification, outcome in zip(valid, notifications, outcomes, strict=False):
        if isinstance(outcome, inbound.ConflictingNotification):
            answers[i] = {
                "status": 409,
                "id": str(notification.global_id),
                "error": "conflicting_notification",
                "detail": _conflict_detail(outcome, notification),
            }
            continue
        answers[i] = {"status": 200, "id": str(notification.global_id), "results": [r.to_json() for r in outcome]}
        for result in outcome:
            counters.NOTIFICATION_RECIPIENTS.labels(status=result.status, reason=result.reason).inc()
        address = next((r.address for r in outcome if r.status == "accepted"), None)
        if reached is None and address is not None:
            reached = (notification, address)
    if reached is not None:
        # Kept once, under the first notification of it that reached someone here (Appendix C).
        evidence.keep(
            request=request,
            body=body,
            signer=signer,
            kind=SignedRequest.Kind.NOTIFICATION,
            global_id=reached[0].global_id,
            sender=reached[0].sender,
            local_domain=domain_of(reached[1]),
        )
    for answer in answers:
        if answer is None or answer["status"] == 200:
            counters.NOTIFICATIONS_RECEIVED.inc()
        else:
            counters.NOTIFICATIONS_REFUSED.labels(code=answer["error"]).inc()
    log.info("notification batch received from %s: %d notifications", signer.domain, len(answers))
    return JsonResponse({"answers": answers})


def _seconds_to_next_minute() -> int:
    """A rate-limited notification's ``retry_after``: until the next clock minute, plus one (as Retry-After)."""
    return max(1, int(60 - time.time() % 60) + 1)


@csrf_exempt
@gzip_page
def withdrawals(request: HttpRequest) -> HttpResponse:
    """``POST /federation/v1/withdrawals``: the sender withdrew a message (§7)."""
    signed = _signed(request, "POST", 65536)
    if isinstance(signed, HttpResponse):
        return signed
    signer, body = signed
    try:
        withdrawal = payloads.parse_withdrawal(_read_json(request, body))
    except payloads.PayloadError as exc:
        return invalid_payload(exc)
    if domain_of(withdrawal.sender) != signer.domain:
        return error(403, "wrong_domain", f"sender {withdrawal.sender} is not of the signing domain {signer.domain}")
    result = inbound.accept_withdrawal(origin=signer.domain, withdrawal=withdrawal)
    if result is not None:
        evidence.keep(
            request=request,
            body=body,
            signer=signer,
            kind=SignedRequest.Kind.WITHDRAWAL,
            global_id=withdrawal.global_id,
            sender=withdrawal.sender,
        )
    if result is None:
        return error(404, "unknown_message", f"no notification {withdrawal.global_id} from {signer.domain} here")
    return JsonResponse(
        {"id": str(withdrawal.global_id), "status": "withdrawn", "fetched_before": result.fetched_before}
    )


def _signed_get(request: HttpRequest, global_id: str) -> tuple[str, uuid.UUID] | HttpResponse:
    """Check a signed GET for a message: (the signing domain, the message id), or the error answer."""
    signed = _signed(request, "GET", 0)
    if isinstance(signed, HttpResponse):
        return signed
    signer, _body = signed
    try:
        return signer.domain, uuid.UUID(global_id)
    except ValueError:
        return error(404, "not_found", "no such message")


_GONE_DETAIL = {
    "withdrawn": "the sender withdrew this message",
    "expired": "the sender's retention of this message has ended",
    "fetched": "every recipient domain of this message has fetched it",
}


def _gone(gone: inbound.BodyGone) -> JsonResponse:
    detail = _GONE_DETAIL.get(gone.reason, f"message {gone.reason}")
    return JsonResponse({"error": "gone", "reason": gone.reason, "detail": detail}, status=410)


def _no_accepted_recipient(domain: str) -> JsonResponse:
    return error(
        403, "not_accepted", f"every recipient of this message at {domain} was rejected, so {domain} may not fetch it"
    )


@csrf_exempt
@gzip_page
def public_keys(request: HttpRequest, address: str) -> HttpResponse:
    """``GET {api}keys/{address}``: the OpenPGP keys a hosted address publishes, signed by its domain (§14).

    Not signed as a request: the keys are public (the Web Key Directory serves them too). The answer is
    signed inside, so a copy can be checked later. 404 when the address publishes no key or is not here.
    """
    if request.method not in ("GET", "HEAD"):
        return _method_not_allowed(["GET", "HEAD"])
    try:
        normalized = normalize_address(address)
    except ValidationError as exc:
        return error(400, "bad_request", exc.messages[0])
    if not discovery.is_local(domain_of(normalized)):
        return error(404, "not_found", f"{domain_of(normalized)} is not hosted here")
    keys = publickeys.published_keys(address=normalized)
    if not keys:
        return error(404, "not_found", f"{normalized} publishes no OpenPGP key here")
    response = JsonResponse(publickeys.key_document(address=normalized, keys=keys))
    response["Cache-Control"] = "no-cache"
    response["Access-Control-Allow-Origin"] = "*"
    return response


@csrf_exempt
@gzip_page
def message_body(request: HttpRequest, global_id: str) -> HttpResponse:
    """``GET /federation/v1/messages/{id}/body``: the canonical body, for recipient domains only (§5.5)."""
    checked = _signed_get(request, global_id)
    if isinstance(checked, HttpResponse):
        return checked
    domain, parsed = checked
    try:
        content = inbound.serve_body(global_id=parsed, to_domain=domain)
    except inbound.NotOffered:
        return error(404, "not_found", "no such message for your domain")
    except inbound.NoAcceptedRecipient:
        return _no_accepted_recipient(domain)
    except inbound.BodyGone as gone:
        return _gone(gone)
    # No Content-Digest here: the answer may be gzip-coded in transit, and the
    # notified digest over the decoded bytes is what the recipient checks.
    response = HttpResponse(content, content_type="application/json")
    response["Cache-Control"] = "no-store"
    return response


@csrf_exempt
def message_attachment(request: HttpRequest, global_id: str, digest: str) -> HttpResponseBase:
    """``GET /federation/v1/messages/{id}/attachments/{digest}``: one attachment's bytes (§5.7).

    The body's access rule: recipient domains only (else 404, like an unknown
    id), with a recipient not rejected (else 403), 410 once withdrawn or expired
    (not when every domain fetched the body). Streamed from storage, never content-coded.
    """
    checked = _signed_get(request, global_id)
    if isinstance(checked, HttpResponse):
        return checked
    domain, parsed = checked
    if not payloads.is_digest(digest):
        return error(404, "not_found", "no such attachment")
    try:
        blob = inbound.serve_attachment(global_id=parsed, digest=digest, to_domain=domain)
    except inbound.NotOffered:
        return error(404, "not_found", "no such attachment of a message for your domain")
    except inbound.NoAcceptedRecipient:
        return _no_accepted_recipient(domain)
    except inbound.BodyGone as gone:
        return _gone(gone)
    response = FileResponse(blob.file.open("rb"), content_type="application/octet-stream")
    response["Content-Length"] = str(blob.size)
    response["Content-Digest"] = "sha-256=:" + base64.b64encode(bytes.fromhex(blob.sha256)).decode() + ":"
    response["Cache-Control"] = "no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response


@csrf_exempt
@gzip_page
def reports(request: HttpRequest) -> HttpResponse:
    """``POST /federation/v1/reports``: a recipient domain judged one of our messages spam, or took it back (§5.8).

    Signed by the reporting domain, which must have had an accepted recipient
    of the message. Idempotent: the same report again, or an older one, changes nothing.
    """
    signed = _signed(request, "POST", 65536)
    if isinstance(signed, HttpResponse):
        return signed
    signer, body = signed
    latest = timezone.now() + settings.PUSHMAIL_SIGNATURE_WINDOW
    try:
        report = payloads.parse_report(_read_json(request, body), latest=latest)
    except payloads.PayloadError as exc:
        return invalid_payload(exc)
    try:
        result = inbound.accept_report(reporter=signer.domain, report=report)
    except inbound.UnknownMessage:
        return error(404, "unknown_message", f"no message {report.global_id} was sent from this instance")
    except inbound.NotARecipient:
        return error(
            403, "not_a_recipient", f"{signer.domain} had no accepted recipient of {report.global_id}: nothing recorded"
        )
    return JsonResponse(
        {
            "id": str(report.global_id),
            "verdict": report.verdict,
            "status": result.status,
            "complaint": result.complaint,
        }
    )


@csrf_exempt
@gzip_page
def subscriptions(request: HttpRequest) -> HttpResponse:
    """``POST /federation/v1/subscriptions``: a reader's instance subscribes, pauses or unsubscribes them (§13.2).

    Signed by the subscriber's domain, and only by it: nobody else can subscribe
    an address, nor take it off a list. Idempotent, ordered by ``requested_at``.
    """
    signed = _signed(request, "POST", 65536)
    if isinstance(signed, HttpResponse):
        return signed
    signer, body = signed
    latest = timezone.now() + settings.PUSHMAIL_SIGNATURE_WINDOW
    try:
        subscription = payloads.parse_subscription(_read_json(request, body), latest=latest)
    except payloads.PayloadError as exc:
        return invalid_payload(exc)
    if domain_of(subscription.subscriber) != signer.domain:
        return error(
            403, "wrong_domain", f"subscriber {subscription.subscriber} is not of the signing domain {signer.domain}"
        )
    try:
        result = inbound.accept_subscription(origin=signer.domain, subscription=subscription)
    except inbound.UnknownList:
        return error(404, "unknown_list", f"no list {subscription.list_address} here")
    return JsonResponse(
        {
            "list": subscription.list_address,
            "subscriber": subscription.subscriber,
            "state": result.state,
            "status": result.status,
        }
    )


@csrf_exempt
@gzip_page
def list_notifications(request: HttpRequest) -> HttpResponse:
    """``POST /federation/v1/list-notifications``: an issue of a list, once per subscriber domain (§13.3).

    Names the list, never recipients: the receiving instance delivers it to its own
    subscribers of record, and refuses it when it has none.
    """
    signed = _signed(request, "POST", settings.PUSHMAIL_MAX_NOTIFICATION_BYTES)
    if isinstance(signed, HttpResponse):
        return signed
    signer, body = signed
    try:
        notification = payloads.parse_list_notification(_read_json(request, body))
    except payloads.PayloadError as exc:
        return invalid_payload(exc)
    if domain_of(notification.list_address) != signer.domain:
        return error(
            403, "wrong_domain", f"list {notification.list_address} is not of the signing domain {signer.domain}"
        )
    try:
        inbound.check_origin(domain=signer.domain)
    except inbound.OriginRefused as exc:
        if isinstance(exc, inbound.PoorReputation):
            return error(403, "poor_reputation", exc.detail)
        if exc.retry_after is None:
            return error(403, "blocked", exc.detail)
        return error(429, "rate_limited", exc.detail, Retry_After=str(exc.retry_after))
    try:
        delivered = inbound.accept_list_notification(origin=signer.domain, notification=notification)
    except inbound.NotSubscribed:
        return error(
            403, "not_subscribed", f"nobody here is subscribed to {notification.list_address}: nothing was delivered"
        )
    except inbound.ConflictingNotification as exc:
        return error(
            409,
            "conflicting_notification",
            f"{exc.field}: differs from the first notification of {notification.global_id}; nothing was changed",
        )
    return JsonResponse(
        {
            "id": str(notification.global_id),
            "list": notification.list_address,
            "status": "accepted",
            "delivered": delivered,
        }
    )
