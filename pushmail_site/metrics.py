"""``GET /metrics`` for Prometheus, and the admin's page of job queues.

What is shown:

* the counters the processes keep as they work (pushmail_site.counters): notifications
  received and refused, signature failures, fetch times, spam verdicts; added up over every
  process with ``PROMETHEUS_MULTIPROC_DIR`` (docs/operations.md);
* the job rows by state, the rows due now and the age of the oldest due row of each kind of
  job (:data:`JOB_TABLES`), read from the database at each scrape, one grouped query per table.

The page answers only a scraper that shows ``PUSHMAIL_METRICS_TOKEN`` as a bearer token or
comes from ``PUSHMAIL_METRICS_ALLOWED_NETWORKS``; with neither set it does not exist (404).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Iterator

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from federation.models import LearnedDomain, LearnedDomainState
from federation.states import LEARNED
from mailbox import states as mailbox_states
from mailbox.models import ReceivedAttachment, RemoteMessage
from mailsettings.models import AutoSendState, Forward, VacationReply
from mailsettings.states import FORWARD, VACATION_REPLY
from newsletters.models import Subscription
from newsletters.states import REQUESTS, SUBSCRIPTION
from outbox.models import Delivery, DeliveryState, Draft, DraftState, Withdrawal, WithdrawalState
from outbox.states import DELIVERY, DRAFT, WITHDRAWAL
from reputation import states as reputation_states
from reputation.models import ContentCheck, FeedbackReport, FeedbackState

from .queues import Census, JobTable, census

#: Every job row with a declared state graph. Inbox entries are left out: they follow their
#: message's fetch (mailbox.states.ENTRY), no worker waits on them, and they are the largest table.
JOB_TABLES = (
    JobTable("delivery", Delivery, DELIVERY, {DeliveryState.PENDING, DeliveryState.RETRYING}),
    JobTable("withdrawal", Withdrawal, WITHDRAWAL, {WithdrawalState.PENDING}),
    JobTable("draft", Draft, DRAFT, {DraftState.SCHEDULED}, due_field="send_at"),
    JobTable("fetch", RemoteMessage, mailbox_states.FETCH, mailbox_states.DUE),
    JobTable("attachment_fetch", ReceivedAttachment, mailbox_states.ATTACHMENT_FETCH, mailbox_states.CLAIMABLE),
    JobTable("learned_domain", LearnedDomain, LEARNED, {LearnedDomainState.PENDING}),
    JobTable("vacation_reply", VacationReply, VACATION_REPLY, {AutoSendState.WAITING}),
    JobTable("forward", Forward, FORWARD, {AutoSendState.WAITING}),
    JobTable("feedback", FeedbackReport, reputation_states.FEEDBACK, {FeedbackState.PENDING}),
    JobTable("content_check", ContentCheck, reputation_states.CONTENT_JOB, reputation_states.CONTENT_DUE),
    JobTable("subscription", Subscription, SUBSCRIPTION, set(REQUESTS)),
)


def job_censuses() -> list[Census]:
    return [census(table) for table in JOB_TABLES]


class JobCollector(Collector):
    """The job gauges, read from the database when Prometheus scrapes."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rows = GaugeMetricFamily("pushmail_jobs", "Job rows by kind of job and state.", labels=["job", "state"])
        due = GaugeMetricFamily("pushmail_jobs_due", "Job rows waiting for a worker: due, not claimed.", labels=["job"])
        age = GaugeMetricFamily(
            "pushmail_job_oldest_due_seconds",
            "How long the oldest due row of each kind of job has waited past its due time (0: none waits).",
            labels=["job"],
        )
        for result in job_censuses():
            for state, count in result.counts.items():
                rows.add_metric([result.table.name, state], count)
            due.add_metric([result.table.name], result.due)
            age.add_metric([result.table.name], result.oldest_due_age.total_seconds())
        yield from (rows, due, age)


class _ThisProcess(Collector):
    """This process's own counters (no multiprocess directory: development and tests)."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def exposition() -> bytes:
    """The whole page, in Prometheus's text format."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    registry.register(JobCollector())
    return generate_latest(registry)


def _refusal(request: HttpRequest) -> HttpResponse | None:
    """Why this request may not read the metrics, as the answer to give; None when it may."""
    token: str = settings.PUSHMAIL_METRICS_TOKEN
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = settings.PUSHMAIL_METRICS_ALLOWED_NETWORKS
    if not token and not networks:
        detail = "metrics are off: set PUSHMAIL_METRICS_TOKEN or PUSHMAIL_METRICS_ALLOWED_NETWORKS"
        return JsonResponse({"error": "not_found", "detail": detail}, status=404)
    if networks:
        try:
            address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
        except ValueError:
            address = None
        if address is not None and any(address in network for network in networks):
            return None
    authorization = request.headers.get("Authorization", "")
    scheme, _, given = authorization.partition(" ")
    if token and scheme.lower() == "bearer" and given:
        if hmac.compare_digest(given.strip().encode(), token.encode()):
            return None
        return JsonResponse({"error": "forbidden", "detail": "wrong metrics token"}, status=403)
    if token:
        response = JsonResponse(
            {"error": "unauthorized", "detail": "send the metrics token: Authorization: Bearer <token>"}, status=401
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return JsonResponse({"error": "forbidden", "detail": "not from an allowed network"}, status=403)


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """``GET /metrics``: Prometheus's text format, for an allowed scraper only."""
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)


def job_queues(request: HttpRequest) -> HttpResponse:
    """The admin's page: each kind of job's rows by state and its oldest due row (staff only)."""
    return render(
        request,
        "admin/job_queues.html",
        {**admin.site.each_context(request), "title": "Job queues", "censuses": job_censuses()},
    )
