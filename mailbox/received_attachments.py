"""A received message's attachment for its reader: its bytes, its fetch on the way, or why not.

A reader's download or preview asks :func:`attachment_for_entry`. What the
reader may see is decided by ``mailbox.content``. When this message's own
fetch has already brought and verified the bytes, they are served. Otherwise
the message's fetch job (attachment_fetching, one row per manifest position)
is created or joined, and the call returns at once with its state; the page
and the API say "fetching" and ask again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings

from attachments.filenames import blocked_extension, blocked_reason
from attachments.models import Blob
from pushmail_site.sizes import human_size

from . import attachment_fetching as fetching
from . import spam
from .content import ReadableAttachment, readable_content_for
from .models import AttachmentFetchState as S
from .models import ReceivedAttachment
from .states import IN_FLIGHT


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


# --- The reader asks ----------------------------------------------------------------------------


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
    if spam.is_hidden(entry):
        raise LookupError(index)  # judged spam before this reader saw it: nothing is fetched for them
    job = fetching.request_fetch(remote_id=entry.remote_id, position=index)
    return _status(item, job)


def retry_attachment_now(*, entry: Any, index: int) -> AttachmentStatus:
    """ "Retry now": a fetch waiting for its next attempt is tried at once (else as :func:`attachment_for_entry`)."""
    status = attachment_for_entry(entry=entry, index=index)
    if status.job is not None and status.retrying:
        job = fetching.retry_now(job_id=status.job.pk)
        if job is not None:
            return _status(status.item, job)
    return status


def _status(item: ReadableAttachment, job: ReceivedAttachment) -> AttachmentStatus:
    # A fetched row whose bytes content.py did not accept is no proof for this manifest.
    state = S.TAMPERED if job.state == S.FETCHED else job.state
    return AttachmentStatus(item=item, state=state, job=job)
