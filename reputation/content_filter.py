"""The content filter: each fetched body checked by rspamd, whose answer counts towards the verdict.

When ``RSPAMD_URL`` is set, every body fetched here is rendered as the RFC 5322
message a mail program would download (mailbox.eml) and posted to rspamd's
``/checkv2``; the answer (score, required score, action, symbols) is kept on a
:class:`~reputation.models.ContentCheck` row. What it decides:

- ``reject`` (or a score at or over ``RSPAMD_SPAM_SCORE``): the message is judged
  spam here, like a verdict of its readers: a :class:`SpamVerdict` names the score,
  every unopened copy is hidden, and a domain admin's overturn puts them back;
- ``add header`` / ``rewrite subject``: suspect, worth ``RSPAMD_SUSPECT_WEIGHT``
  reports (half a report by default) towards the readers' verdict;
- anything else: nothing.

Readers teach it: "Report spam" learns the body as spam, "Not spam" as ham
(``/learnspam``, ``/learnham`` on the controller), and a verdict adds the body to
rspamd's fuzzy storage (``/fuzzyadd``) so near-copies of a spam run score at once;
a domain admin's overturn takes it out again (``/fuzzydel``) and learns it as ham.

Every call is a durable job row (reputation.states): a worker killed
mid-call or an rspamd that is down loses nothing; the row is retried with backoff
and the sweep re-queues what the broker lost. Without ``RSPAMD_URL`` no row is
ever made, and reports and verdicts work as they do without it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from federation import payloads
from mailbox.eml import EmlAttachment, EmlSource, build_eml
from mailbox.models import InboxEntry, RemoteMessage
from pushmail_site.jobs import backoff, claim_until, enqueue, lock, overdue_ids
from pushmail_site.states import transition

from . import campaigns, trust, verdicts
from .models import ContentCheck, ContentJobKind, ContentJobState, Read, SpamReport, SpamVerdict
from .states import CONTENT_DUE, CONTENT_JOB, CONTENT_RETRY

log = logging.getLogger(__name__)

Kind = ContentJobKind
SPAM_ACTIONS = frozenset({"reject"})
SUSPECT_ACTIONS = frozenset({"add header", "rewrite subject"})
_LESSON_PATHS = {
    Kind.LEARN_SPAM: "/learnspam",
    Kind.LEARN_HAM: "/learnham",
    Kind.FUZZY_ADD: "/fuzzyadd",
    Kind.FUZZY_DEL: "/fuzzydel",
}


# --- Configuration -----------------------------------------------------------------------------


def enabled() -> bool:
    """The content filter is on: ``RSPAMD_URL`` is set."""
    return bool(settings.RSPAMD_URL)


def controller_url() -> str:
    """``RSPAMD_CONTROLLER_URL``, or rspamd's default controller port (11334) on the checks' host."""
    if settings.RSPAMD_CONTROLLER_URL:
        return str(settings.RSPAMD_CONTROLLER_URL)
    parts = urlsplit(settings.RSPAMD_URL)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit((parts.scheme or "http", f"{host}:11334", "", "", ""))


# --- The HTTP client ---------------------------------------------------------------------------


class RspamdUnavailable(Exception):
    """rspamd did not answer usefully this time (down, timeout, 5xx, wrong password): try again later."""


class RspamdRefused(Exception):
    """rspamd refused this message for good (a 4xx other than authentication): do not ask again."""


@dataclass(frozen=True)
class CheckResult:
    score: float
    required_score: float
    action: str
    symbols: dict[str, float] = field(default_factory=dict)

    @property
    def spam(self) -> bool:
        limit = settings.RSPAMD_SPAM_SCORE
        return self.action in SPAM_ACTIONS or (limit is not None and self.score >= limit)

    @property
    def suspect(self) -> bool:
        return not self.spam and self.action in SUSPECT_ACTIONS


def _post(url: str, message: bytes, headers: dict[str, str]) -> requests.Response:
    try:
        response = requests.post(url, data=message, headers=headers, timeout=settings.RSPAMD_TIMEOUT)
    except requests.RequestException as exc:
        raise RspamdUnavailable(f"rspamd at {url} did not answer: {exc}") from exc
    if response.status_code in (401, 403):
        raise RspamdUnavailable(
            f"rspamd at {url} refused the password (HTTP {response.status_code}): check RSPAMD_PASSWORD"
        )
    if response.status_code == 429 or response.status_code >= 500:
        raise RspamdUnavailable(f"rspamd at {url} answered HTTP {response.status_code}: {_error(response)}")
    return response


def _error(response: requests.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:200]
    return str(data.get("error") or data)[:200] if isinstance(data, dict) else str(data)[:200]


def check(message: bytes, *, envelope: dict[str, str]) -> CheckResult:
    """Ask rspamd about one message (``/checkv2``); ``envelope`` carries From, Rcpt, Helo, Queue-Id."""
    response = _post(f"{settings.RSPAMD_URL}/checkv2", message, envelope)
    if response.status_code != 200:
        raise RspamdRefused(f"rspamd refused the check (HTTP {response.status_code}): {_error(response)}")
    try:
        data = response.json()
        symbols = {
            str(name): round(float(symbol.get("score", 0.0)), 3) for name, symbol in (data.get("symbols") or {}).items()
        }
        return CheckResult(
            score=round(float(data["score"]), 3),
            required_score=round(float(data["required_score"]), 3),
            action=str(data["action"]),
            symbols=symbols,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RspamdUnavailable(f"rspamd's answer was not a check result: {exc}") from exc


def teach(kind: str, message: bytes) -> str:
    """Learn spam or ham, or add to the fuzzy storage, on the controller; returns rspamd's remark, if any.

    A message rspamd already learned the same way, or one it cannot learn (too few words), is done:
    asking again would not change the answer.
    """
    headers = {"Password": settings.RSPAMD_PASSWORD} if settings.RSPAMD_PASSWORD else {}
    if kind == Kind.FUZZY_ADD:
        headers |= {"Flag": str(settings.RSPAMD_FUZZY_FLAG), "Weight": "1"}
    elif kind == Kind.FUZZY_DEL:
        headers |= {"Flag": str(settings.RSPAMD_FUZZY_FLAG)}
    response = _post(f"{controller_url()}{_LESSON_PATHS[Kind(kind)]}", message, headers)
    if response.status_code == 200:
        return ""
    remark = _error(response)
    if response.status_code == 208 or "already learned" in remark:
        return f"already learned: {remark}"
    raise RspamdRefused(f"rspamd did not take the lesson (HTTP {response.status_code}): {remark}")


# --- The message rspamd sees --------------------------------------------------------------------


def render(remote: RemoteMessage) -> bytes:
    """The fetched canonical body as the RFC 5322 message a reader would download (mailbox.eml)."""
    assert remote.content is not None
    body = payloads.parse_body(bytes(remote.content))
    try:
        date = payloads.parse_time(body.get("date"), "date")
    except payloads.PayloadError:
        date = remote.date
    attachments = [
        EmlAttachment(str(a.get("name", "")), str(a.get("type", "")), int(a.get("size") or 0))
        for a in remote.attachments or []
        if isinstance(a, dict)
    ]
    return build_eml(
        EmlSource(
            sender=str(body.get("from") or remote.sender),
            to=[str(a) for a in body.get("to") or []],
            cc=[str(a) for a in body.get("cc") or []],
            subject=str(body.get("subject") or ""),
            date=date,
            message_id=str(body.get("message_id") or remote.message_id),
            in_reply_to=str(body.get("in_reply_to") or ""),
            references=[str(r) for r in body.get("references") or []],
            text=str(body.get("text") or ""),
            html=body.get("html") if isinstance(body.get("html"), str) else None,
            attachments=attachments,
        )
    )


def envelope(remote: RemoteMessage) -> dict[str, str]:
    """What an MTA would tell rspamd besides the message. The sending IP is unknown (pull, not push)."""
    headers = {"From": remote.sender, "Helo": remote.origin_domain, "Queue-Id": str(remote.global_id)}
    # One local recipient is enough for the rules that look at it; the list is in To/Cc anyway.
    owner = InboxEntry.objects.filter(remote=remote).values_list("owner__email", flat=True).order_by("pk").first()
    if owner:
        headers["Rcpt"] = owner
    return headers


# --- Queueing ----------------------------------------------------------------------------------


def queue_check(*, remote_id: int) -> None:
    """A body was fetched here: check it once (nothing when the content filter is off)."""
    _queue(remote_id, Kind.CHECK)


def queue_lesson(*, remote_id: int, spam: bool) -> None:
    """A reader's report: teach rspamd the body as spam or ham, once per message and way."""
    _queue(remote_id, Kind.LEARN_SPAM if spam else Kind.LEARN_HAM)


def queue_fuzzy(*, remote_id: int) -> None:
    """The message was judged spam here: add its body's hashes to the fuzzy storage, once."""
    _queue(remote_id, Kind.FUZZY_ADD)


def unlearn_overturned(*, remote_id: int) -> None:
    """A domain admin overturned the verdict: take the body out of the fuzzy storage, and learn it as ham."""
    if ContentCheck.objects.filter(message_id=remote_id, kind=Kind.FUZZY_ADD).exists():
        _queue(remote_id, Kind.FUZZY_DEL)
    _queue(remote_id, Kind.LEARN_HAM)


def _queue(remote_id: int, kind: str) -> None:
    if not enabled():
        return
    with transaction.atomic():
        has_body = RemoteMessage.objects.filter(pk=remote_id, content__isnull=False).exists()
        if not has_body:
            return  # nothing to show rspamd: a report on a message nobody here has fetched
        if kind == Kind.FUZZY_ADD and _rejected_by_pattern(remote_id):
            return
        job, created = ContentCheck.objects.get_or_create(
            message_id=remote_id, kind=kind, defaults={"next_attempt_at": timezone.now()}
        )
        if created:
            enqueue(run_content_job_task, job.pk)


def _rejected_by_pattern(remote_id: int) -> bool:
    """rspamd rejected the message on a fixed pattern (GTUBE) before any rule ran.

    Every copy carries the pattern, so a fuzzy hash adds nothing; and rspamd 3.4's controller
    crashes on ``/fuzzyadd`` of such a message.
    """
    return ContentCheck.objects.filter(
        message_id=remote_id, kind=Kind.CHECK, action__in=SPAM_ACTIONS, symbols__has_key="GTUBE"
    ).exists()


def requeue_due(limit: int = 500) -> int:
    """Queue the due jobs the broker lost or a killed worker left (the periodic sweep)."""
    if not enabled():
        return 0
    ids = overdue_ids(ContentCheck.objects.filter(state__in=CONTENT_DUE), task=run_content_job_task, limit=limit)
    for job_id in ids:
        enqueue(run_content_job_task, job_id)
    return len(ids)


@shared_task(name="reputation.run_content_job")
def run_content_job_task(job_id: int) -> None:
    run_content_job(job_id)


@shared_task(name="reputation.requeue_due_content_checks")
def requeue_due_task() -> int:
    return requeue_due()


# --- The job -----------------------------------------------------------------------------------


def run_content_job(job_id: int) -> None:
    """Claim a due job, ask rspamd, and settle the row: done, retrying, or failed."""
    if not enabled():
        return  # switched off since it was queued: the row waits for it to come back
    job = _claim(job_id)
    if job is None:
        return  # done already, not due yet, or another worker holds it
    remote = RemoteMessage.objects.filter(pk=job.message_id, content__isnull=False).first()
    if remote is None:
        _settle(job_id, ContentJobState.FAILED, {"last_error": "The body is no longer here."})
        return
    try:
        message = render(remote)
    except (payloads.PayloadError, ValueError, TypeError) as exc:  # never expected: stored bodies passed the schema
        _settle(job_id, ContentJobState.FAILED, {"last_error": f"The body could not be rendered: {exc}"[:500]})
        return
    try:
        if job.kind == Kind.CHECK:
            result = check(message, envelope=envelope(remote))
        else:
            remark = teach(job.kind, message)
    except RspamdUnavailable as exc:
        _retry(job_id, str(exc))
    except RspamdRefused as exc:
        _settle(job_id, ContentJobState.FAILED, {"last_error": str(exc)[:500]})
    else:
        if job.kind == Kind.CHECK:
            _checked(job_id, remote, result)
        else:
            _settle(job_id, ContentJobState.DONE, {"last_error": remark[:500]})


def _claim(job_id: int) -> ContentCheck | None:
    now = timezone.now()
    with transaction.atomic():
        job = (
            lock(ContentCheck.objects.all()).filter(pk=job_id, state__in=CONTENT_DUE, next_attempt_at__lte=now).first()
        )
        if job is None:
            return None
        job.attempts += 1
        job.next_attempt_at = claim_until()
        job.save(update_fields=["attempts", "next_attempt_at"])
    return job


def _locked_due(job_id: int) -> ContentCheck | None:
    return lock(ContentCheck.objects.all(), skip_locked=False).filter(pk=job_id, state__in=CONTENT_DUE).first()


def _settle(job_id: int, state: str, fields: dict[str, Any]) -> ContentCheck | None:
    with transaction.atomic():
        job = _locked_due(job_id)
        if job is not None:
            transition(job, CONTENT_JOB, state, fields={"next_attempt_at": None, "done_at": timezone.now(), **fields})
        return job


def _retry(job_id: int, error: str) -> None:
    """rspamd is down or busy: try again with backoff, until RSPAMD_RETRY_WINDOW_SECONDS have passed."""
    now = timezone.now()
    window = timedelta(seconds=float(getattr(settings, CONTENT_RETRY.window or "")))
    with transaction.atomic():
        job = _locked_due(job_id)
        if job is None:
            return
        if now - job.created_at >= window:
            fields = {"next_attempt_at": None, "done_at": now, "last_error": f"Gave up: {error}"[:500]}
            transition(job, CONTENT_JOB, ContentJobState.FAILED, fields=fields)
            return
        delay = backoff(
            job.attempts, base=getattr(settings, CONTENT_RETRY.base), cap=getattr(settings, CONTENT_RETRY.cap)
        )
        fields = {"next_attempt_at": now + delay, "last_error": error[:500]}
        transition(job, CONTENT_JOB, ContentJobState.RETRYING, fields=fields)
        enqueue(run_content_job_task, job_id, countdown=delay.total_seconds())
    log.info("content job %s: %s; next attempt in %.0fs", job_id, error, delay.total_seconds())


# --- The decision ------------------------------------------------------------------------------


def _checked(job_id: int, remote: RemoteMessage, result: CheckResult) -> None:
    """Keep rspamd's answer, and act on it in the same transaction."""
    with transaction.atomic():
        fields = {
            "score": result.score,
            "required_score": result.required_score,
            "action": result.action,
            "symbols": result.symbols,
            "last_error": "",
        }
        job = _settle(job_id, ContentJobState.DONE, fields)
        if job is None:
            return
        decision = ""
        if result.spam:
            decision = _judge_by_content(remote.pk, f"the content filter scored this {result.score:g} (spam)")
        elif result.suspect:
            decision = reconsider(remote_id=remote.pk)
        if decision:
            job.decision = decision[:300]
            job.save(update_fields=["decision"])


def _judge_by_content(remote_id: int, reason: str) -> str:
    """Judge the message spam on rspamd's word alone; returns the reason, or "" if it stood judged already."""
    remote = lock(RemoteMessage.objects.all(), skip_locked=False).filter(pk=remote_id).first()
    if remote is None or SpamVerdict.objects.filter(message_id=remote_id).exists():
        return ""  # one verdict per message: the readers' (or an overturned one) stands
    verdicts.reach_verdict(
        message_id=remote_id,
        remote_ids=[remote_id],
        reason=reason,
        reports=SpamReport.objects.filter(message_id=remote_id, spam=True).count(),
        readers=Read.objects.filter(message_id=remote_id).count(),
        judge="content",
    )
    queue_fuzzy(remote_id=remote_id)
    return reason


def reconsider(*, remote_id: int) -> str:
    """A suspect score counts as ``RSPAMD_SUSPECT_WEIGHT`` reports: judge the message if that reaches a threshold.

    Called when rspamd finds a message suspect, and after each spam report on one it found suspect
    (the two can come in either order). Returns the verdict's reason, or "".
    """
    suspect = ContentCheck.objects.filter(
        message_id=remote_id, kind=Kind.CHECK, state=ContentJobState.DONE, action__in=SUSPECT_ACTIONS
    ).first()
    if suspect is None or SpamVerdict.objects.filter(message_id=remote_id).exists():
        return ""
    remote = lock(RemoteMessage.objects.all(), skip_locked=False).filter(pk=remote_id).first()
    if remote is None:
        return ""
    # The readers' reports on its campaign, weighed by trust as reputation.spam weighs them.
    tally = trust.tally(campaign_id=campaigns.campaign_id_of(remote), origin=remote.origin_domain)
    reports, readers = tally.spam_reporters, tally.readers
    if not reports or not trust.reaches(tally.weight + settings.RSPAMD_SUSPECT_WEIGHT, readers):
        return ""
    people = "1 person" if reports == 1 else f"{reports} people"
    reason = (
        f"{people} at {remote.local_domain} reported this, "
        f"and the content filter scored it {suspect.score:g} ({suspect.action})"
    )
    verdicts.reach_verdict(
        message_id=remote_id,
        remote_ids=[remote_id],
        reason=reason,
        reports=reports,
        readers=readers,
        weight=tally.weight + settings.RSPAMD_SUSPECT_WEIGHT,
        judge="reports_and_content",
    )
    suspect.decision = reason[:300]
    suspect.save(update_fields=["decision"])
    queue_fuzzy(remote_id=remote_id)
    return reason
