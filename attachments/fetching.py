"""Recipient side: a received message's attachment, fetched in the background like a body.

A reader's download or preview asks :func:`attachment_for_entry`. When this
message's own fetch has already brought and verified the bytes, they are
served. Otherwise the call creates (or joins) the message's fetch job, one
:class:`~attachments.models.ReceivedAttachment` row per manifest position, and
returns at once with its state; the page and the API say "fetching" and ask
again. A worker runs :func:`fetch_attachment`: it claims the row, fetches the
bytes from the message's sender outside any transaction, verifies them against
the manifest and moves the row on (attachments/states.py). Failures are retried
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

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from federation import client, discovery
from mailbox.content import ReadableAttachment, readable_content_for
from pushmail_site.jobs import backoff, enqueue, lock, overdue_before
from pushmail_site.sizes import human_size
from pushmail_site.states import transition

# tasks wraps this module; its names are only used at call time, so the mutual import is safe.
from . import tasks
from .filenames import blocked_extension, blocked_reason, clean_filename
from .models import Blob, ReceivedAttachment
from .services import DigestMismatch, store_verified
from .states import ATTACHMENT_FETCH, CLAIMABLE, IN_FLIGHT
from .states import AttachmentFetchState as S

log = logging.getLogger(__name__)


class AttachmentUnavailable(Exception):
    """The attachment cannot be served; ``message`` says why in words for the reader, ``code`` for the API."""

    def __init__(self, message: str, *, status: int = 502, code: str = "attachment_unavailable") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


@dataclass(frozen=True)
class AttachmentStatus:
    """Where one attachment of an entry is for its reader: here, on its way, or not to be had."""

    item: ReadableAttachment
    state: str
    blob: Blob | None = None
    job: ReceivedAttachment | None = None

    @property
    def ready(self) -> bool:
        return self.blob is not None

    @property
    def in_flight(self) -> bool:
        """Queued or running: the reader is told to wait, and asks again."""
        return self.state in IN_FLIGHT

    @property
    def retrying(self) -> bool:
        return self.state == S.UNAVAILABLE

    @property
    def last_try(self) -> datetime | None:
        return self.job.last_attempt_at if self.job is not None else None

    @property
    def next_try(self) -> datetime | None:
        return self.job.next_attempt_at if self.job is not None and self.retrying else None

    @property
    def problem(self) -> AttachmentUnavailable | None:
        """Why the bytes cannot be served now (None when here or on their way)."""
        if self.ready or self.in_flight:
            return None
        return _problem(self.item, self.state, self.job.last_error if self.job is not None else "")


def _problem(item: ReadableAttachment, state: str, error: str) -> AttachmentUnavailable:
    name = item.name
    if state == S.BLOCKED:
        reason = blocked_reason(name, item.blocked or blocked_extension(name) or "", received=True)
        return AttachmentUnavailable(reason, status=403, code="attachment_blocked")
    if state == S.TOO_LARGE:
        limit = settings.PUSHMAIL_MAX_ATTACHMENT_BYTES
        return AttachmentUnavailable(
            f"{name} is {human_size(item.size)}, larger than the {human_size(limit)} this server accepts "
            "for one attachment, so it was not fetched.",
            status=413,
        )
    if state == S.WITHDRAWN:
        return AttachmentUnavailable(f"{name} was withdrawn by the sender.", status=410)
    if state == S.EXPIRED:
        return AttachmentUnavailable(f"{name} was no longer kept by the sender's server.", status=410)
    if state == S.TAMPERED:
        return AttachmentUnavailable(
            f"{name} was refused: the sender's server sent other bytes than announced ({error})."
        )
    return AttachmentUnavailable(
        f"{name} is still at the sender's: their server did not answer ({error}). It is tried again automatically."
    )


# --- The reader's side -----------------------------------------------------------------------


def attachment_for_entry(*, entry: Any, index: int) -> AttachmentStatus:
    """Attachment ``index`` of ``entry`` (owned by the caller): its bytes, or its fetch started or joined.

    The rules of ``mailbox.content`` decide what the reader may see. A local
    message's attachment is the sender's own upload. A remote one is served
    only once this message's own fetch from its sender has brought and
    verified it; until then its fetch job is created (once per message and
    file, whoever asks) and the call returns at once. A blocked type, or a file
    over this instance's limit, is refused without a job. Raises LookupError
    for an index the reader has no attachment at.
    """
    item = readable_content_for(entry=entry).attachment(index)
    if item.blocked:
        # Refused before any byte is fetched or served, like an upload of the same name.
        return AttachmentStatus(item=item, state=S.BLOCKED)
    if item.blob is not None:
        return AttachmentStatus(item=item, state=S.FETCHED, blob=item.blob)
    if entry.remote_id is None:
        raise LookupError(index)
    if item.size > settings.PUSHMAIL_MAX_ATTACHMENT_BYTES:
        return AttachmentStatus(item=item, state=S.TOO_LARGE)
    job = _request_fetch(remote_id=entry.remote_id, position=index)
    return _status(item, job)


def retry_attachment_now(*, entry: Any, index: int) -> AttachmentStatus:
    """ "Retry now": a fetch waiting for its next attempt is tried at once (else as :func:`attachment_for_entry`)."""
    status = attachment_for_entry(entry=entry, index=index)
    if status.job is not None and status.retrying:
        job = retry_now(job_id=status.job.pk)
        if job is not None:
            return _status(status.item, job)
    return status


def _status(item: ReadableAttachment, job: ReceivedAttachment) -> AttachmentStatus:
    # A fetched row whose bytes content.py did not accept is no proof for this manifest.
    state = S.TAMPERED if job.state == S.FETCHED else job.state
    return AttachmentStatus(item=item, state=state, job=job)


def _request_fetch(*, remote_id: int, position: int) -> ReceivedAttachment:
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


def _queue(job_id: int, *, countdown: float | None = None) -> None:
    enqueue(tasks.fetch_attachment, job_id, countdown=countdown)


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
        return transition(current, ATTACHMENT_FETCH, target, fields=fields, after_commit=after_commit)


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
    due = list(
        ReceivedAttachment.objects.filter(state__in=CLAIMABLE, next_attempt_at__lte=overdue_before())
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
    for job_id in due:
        _queue(job_id)
    return len(due)


def _take_back(job_id: int, now: datetime) -> None:
    with transaction.atomic():
        job = lock(ReceivedAttachment.objects).filter(pk=job_id, state=S.FETCHING, next_attempt_at__lte=now).first()
        if job is not None:
            log.info("attachment fetch %s: its worker's claim lapsed; queued again", job_id)
            transition(job, ATTACHMENT_FETCH, S.WANTED, fields={"next_attempt_at": now}, after_commit=_queuer(job_id))
