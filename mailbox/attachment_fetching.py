"""Recipient side: the fetch job that brings a received message's attachment, like a body's.

One :class:`~mailbox.models.ReceivedAttachment` row per manifest position
is the job. A reader's download or preview asks mailbox.received_attachments,
which decides what the reader may see and then calls :func:`request_fetch`:
the row is created (or joined) and queued, and the reader is told to wait. A
worker runs :func:`fetch_attachment`: it claims the row, fetches the bytes from
the message's sender outside any transaction, verifies them against the
manifest and moves the row on (mailbox/states.py). Failures are retried
with backoff until the message expires; the sweep (:func:`requeue_due`)
re-queues rows that are due and takes back claims a killed worker left.

Whether a file with the same digest is stored here (for another message or
user) changes nothing: the fetch from this message's sender happens all the
same, and only its verified result is served for this message.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from attachments.filenames import blocked_extension, clean_filename
from attachments.models import Blob
from attachments.services import DigestMismatch, store_verified
from federation import client, discovery
from pushmail_site import logs
from pushmail_site.jobs import backoff, enqueue, lock, overdue_ids
from pushmail_site.states import transition

from .models import AttachmentFetchState as S
from .models import ReceivedAttachment
from .signals import attachment_settled
from .states import ATTACHMENT_FETCH, CLAIMABLE

log = logging.getLogger(__name__)


# --- A reader asks -----------------------------------------------------------------------------


def request_fetch(*, remote_id: int, position: int) -> ReceivedAttachment:
    """The message's fetch job for ``position``: the existing one, or a new one queued after commit."""
    job = ReceivedAttachment.objects.filter(remote_id=remote_id, position=position).first()
    if job is not None:
        return job
    try:
        with transaction.atomic():
            job = ReceivedAttachment.objects.create(
                remote_id=remote_id, position=position, next_attempt_at=timezone.now()
            )
    except IntegrityError:
        # Another reader of the same message asked at the same moment: join their fetch.
        return ReceivedAttachment.objects.get(remote_id=remote_id, position=position)
    _queue(job.pk)
    return job


def retry_now(*, job_id: int) -> ReceivedAttachment | None:
    """Skip the backoff of a fetch that is waiting for its next attempt (the reader's and the admin's action).

    Returns the row, moved to ``wanted`` and queued, or as it was when it is
    not waiting (on its way already, or done); None when it no longer exists.
    """
    with transaction.atomic():
        job = lock(ReceivedAttachment.objects, skip_locked=False).filter(pk=job_id).first()
        if job is None or job.state != S.UNAVAILABLE:
            return job
        return transition(
            job, ATTACHMENT_FETCH, S.WANTED, fields={"next_attempt_at": timezone.now()}, after_commit=_queuer(job.pk)
        )


@shared_task(name="mailbox.fetch_attachment")
def fetch_attachment_task(job_id: int) -> None:
    fetch_attachment(job_id)


def _queue(job_id: int, *, countdown: float | None = None) -> None:
    enqueue(fetch_attachment_task, job_id, countdown=countdown)


def _queuer(job_id: int, *, countdown: float | None = None) -> Any:
    return lambda: _queue(job_id, countdown=countdown)


# --- The job -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Wanted:
    """What a worker fetches: the manifest entry of the row's message, as notified."""

    name: str
    size: int
    digest: str


def _manifest_entry(job: ReceivedAttachment) -> _Wanted | None:
    manifest = job.remote.attachments or []
    if not 0 <= job.position < len(manifest) or not isinstance(manifest[job.position], dict):
        return None
    entry = manifest[job.position]
    return _Wanted(
        name=clean_filename(entry.get("name")), size=int(entry.get("size") or 0), digest=str(entry.get("digest") or "")
    )


def fetch_attachment(job_id: int) -> None:
    """Bring one attachment from its message's sender, verify it, and settle the row; a no-op unless due."""
    claimed = _claim(job_id)
    if claimed is None:
        return
    job, wanted = claimed
    with logs.about(message_id=job.remote.global_id, peer=job.remote.origin_domain):
        try:
            blob = _transfer(job, wanted)
        except client.Gone as gone:
            target = S.WITHDRAWN if gone.reason == "withdrawn" else S.EXPIRED
            _settle(job, target, last_error=f"410 {gone.reason}")
        except DigestMismatch as exc:
            log.warning("attachment %s of remote %s refused: %s", job.position, job.remote_id, exc)
            _settle(job, S.TAMPERED, last_error=str(exc)[:500])
        except (discovery.DiscoveryError, client.PeerError) as exc:
            _failed(job, str(exc), retry_after=exc.retry_after)
        else:
            _settle(job, S.FETCHED, blob=blob, fetched_at=timezone.now(), last_error="")


def _claim(job_id: int) -> tuple[ReceivedAttachment, _Wanted] | None:
    """Take a due row for this worker until the transfer's deadline has passed (plus a margin)."""
    now = timezone.now()
    with transaction.atomic():
        job = (
            lock(ReceivedAttachment.objects)
            .select_related("remote")
            .filter(pk=job_id, state__in=CLAIMABLE, next_attempt_at__lte=now)
            .first()
        )
        if job is None:
            return None  # done already, not due, or another worker holds it
        wanted = _manifest_entry(job)
        refusal = _refusal(job, wanted, now)
        if refusal is not None:
            transition(job, ATTACHMENT_FETCH, refusal, fields={"next_attempt_at": None})
            _announce_settled(job)
            return None
        assert wanted is not None
        # Held until the transfer's own deadline has passed, with a margin to store the bytes.
        held = timedelta(seconds=client.attachment_timeout(wanted.size) + settings.PUSHMAIL_CLAIM_SECONDS)
        fields = {"attempts": job.attempts + 1, "last_attempt_at": now, "next_attempt_at": now + held}
        transition(job, ATTACHMENT_FETCH, S.FETCHING, fields=fields)
    return job, wanted


def _refusal(job: ReceivedAttachment, wanted: _Wanted | None, now: datetime) -> str | None:
    """A state the row ends in without asking the sender, or None to fetch."""
    if wanted is None or now >= job.remote.expires_at:
        return S.EXPIRED
    if blocked_extension(wanted.name):
        return S.BLOCKED  # the blocked types may have changed since a reader asked
    if wanted.size > settings.PUSHMAIL_MAX_ATTACHMENT_BYTES:
        return S.TOO_LARGE
    return None


def _transfer(job: ReceivedAttachment, wanted: _Wanted) -> Blob:
    remote = job.remote
    instance = discovery.discover(remote.origin_domain)
    if instance is None:
        raise client.PeerError(f"{remote.origin_domain} no longer runs Pushmail", retryable=True)
    with tempfile.TemporaryFile() as tmp:
        client.fetch_attachment(
            instance=instance,
            as_domain=remote.local_domain,
            global_id=remote.global_id,
            digest=wanted.digest,
            size=wanted.size,
            sink=tmp,
        )
        tmp.seek(0)
        return store_verified(stream=tmp, expected_digest=wanted.digest, expected_size=wanted.size)


def _settle(
    job: ReceivedAttachment, target: str, *, after_commit: Any = None, **fields: Any
) -> ReceivedAttachment | None:
    """Record this worker's outcome, unless its claim lapsed and the row moved on meanwhile."""
    with transaction.atomic():
        current = lock(ReceivedAttachment.objects, skip_locked=False).filter(pk=job.pk).first()
        if current is None or current.state != S.FETCHING or current.attempts != job.attempts:
            return None
        settled = transition(current, ATTACHMENT_FETCH, target, fields=fields, after_commit=after_commit)
        if ATTACHMENT_FETCH.by_value[target].terminal:
            _announce_settled(current)
        return settled


def _announce_settled(job: ReceivedAttachment) -> None:
    """Tell the apps above (a forward waiting for this file) once the row's end has committed."""
    remote_id, position = job.remote_id, job.position
    transaction.on_commit(
        lambda: attachment_settled.send(sender=ReceivedAttachment, remote_id=remote_id, position=position)
    )


def _failed(job: ReceivedAttachment, error: str, *, retry_after: float | None) -> None:
    now = timezone.now()
    if now >= job.remote.expires_at:
        _settle(job, S.EXPIRED, next_attempt_at=None, last_error=error[:500])
        return
    delay = timedelta(seconds=retry_after) if retry_after else backoff(job.attempts)
    _settle(
        job,
        S.UNAVAILABLE,
        next_attempt_at=now + delay,
        last_error=error[:500],
        after_commit=_queuer(job.pk, countdown=delay.total_seconds()),
    )


# --- The sweep ---------------------------------------------------------------------------------


def requeue_due(*, limit: int = 1000) -> int:
    """Queue every fetch that is due, taking back claims whose worker is gone; returns how many."""
    now = timezone.now()
    lapsed = ReceivedAttachment.objects.filter(state=S.FETCHING, next_attempt_at__lte=now)
    for job_id in list(lapsed.values_list("pk", flat=True)[:limit]):
        _take_back(job_id, now)
    due = overdue_ids(ReceivedAttachment.objects.filter(state__in=CLAIMABLE), task=fetch_attachment_task, limit=limit)
    for job_id in due:
        _queue(job_id)
    return len(due)


def _take_back(job_id: int, now: datetime) -> None:
    with transaction.atomic():
        job = lock(ReceivedAttachment.objects).filter(pk=job_id, state=S.FETCHING, next_attempt_at__lte=now).first()
        if job is not None:
            log.info("attachment fetch %s: its worker's claim lapsed; queued again", job_id)
            transition(job, ATTACHMENT_FETCH, S.WANTED, fields={"next_attempt_at": now}, after_commit=_queuer(job_id))
