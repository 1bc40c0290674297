"""Attachment bytes: stored once per instance, addressed by SHA-256.

Both the sender (an upload) and the recipient (a verified fetch) end up with a
:class:`~attachments.models.Blob` row. A row exists only once its bytes are in
storage and hashed, and the unique ``sha256`` keeps a second copy out even when
two uploads of the same file race.

Storage is shared, access is not: a Blob is served for a received message only
through that message's own :class:`~mailbox.models.ReceivedAttachment`
(set when its sender's bytes were fetched and verified, see
``mailbox.attachment_fetching``),
never because the same digest is stored here for someone else.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import IO, TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files import File
from django.db import IntegrityError, transaction
from django.utils import timezone

from federation.payloads import MAX_ATTACHMENTS
from pushmail_site.hooks import Hook
from pushmail_site.sizes import human_size

from .filenames import blocked_extension, blocked_reason, clean_filename
from .models import Blob
from .selectors import usage_bytes

if TYPE_CHECKING:
    from accounts.models import User

CHUNK = 64 * 1024
MAX_FILES = MAX_ATTACHMENTS  # per message: the protocol's manifest limit


@dataclass(frozen=True)
class AttachmentInput:
    """A stored blob to attach to a message, under a name and a type."""

    blob: Blob
    name: str
    content_type: str


def check_new_files(
    *, user: User, files: Sequence[tuple[str, int]], attached: Sequence[int] = (), quota_extra: int | None = None
) -> None:
    """Every attachment limit, checked before any byte of ``files`` is stored (ValidationError listing each problem).

    ``files`` are (name as received, size) pairs joining a message or draft that
    already carries files of the ``attached`` sizes. The limits: blocked file
    types, ``PUSHMAIL_MAX_ATTACHMENT_BYTES`` per file,
    ``PUSHMAIL_MAX_MESSAGE_ATTACHMENTS_BYTES`` and 100 files per message, and the
    mailbox quota, which ``quota_extra`` bytes more (default: the new files)
    must not exceed.
    """
    problems = []
    count = len(attached) + len(files)
    if count > MAX_FILES:
        problems.append(too_many_files(count))
    for name, size in files:
        extension = blocked_extension(name)
        if extension:
            problems.append(blocked_reason(clean_filename(name), extension))
        elif size > settings.PUSHMAIL_MAX_ATTACHMENT_BYTES:
            problems.append(file_too_large(clean_filename(name), size))
    total = sum(attached) + sum(size for _name, size in files)
    if not problems and total > settings.PUSHMAIL_MAX_MESSAGE_ATTACHMENTS_BYTES:
        problems.append(message_too_large(total))
    if not problems:
        adding = sum(size for _name, size in files) if quota_extra is None else quota_extra
        try:
            check_quota(user=user, extra_bytes=adding)
        except ValidationError as exc:
            problems.extend(exc.messages)
    if problems:
        raise ValidationError({"attachments": problems})


def check_attachments(*, user: User, attachments: Sequence[AttachmentInput], body_bytes: int = 0) -> None:
    """The limits of :func:`check_new_files` for a message about to be sent, its files already stored."""
    files = [(item.name, item.blob.size) for item in attachments]
    check_new_files(user=user, files=files, quota_extra=sum(size for _name, size in files) + body_bytes)


def too_many_files(count: int) -> str:
    return f"{count} attachments: at most {MAX_FILES} attachments per message."


def file_too_large(name: str, size: int | None = None) -> str:
    limit = settings.PUSHMAIL_MAX_ATTACHMENT_BYTES
    found = f" ({human_size(size)})" if size is not None else ""
    return f"{name} is larger than the {human_size(limit)} limit for one attachment{found}."


def message_too_large(total: int | None = None) -> str:
    limit = settings.PUSHMAIL_MAX_MESSAGE_ATTACHMENTS_BYTES
    if total is None:
        return f"The attachments add up to more than the {human_size(limit)} limit for one message."
    return f"The attachments add up to {human_size(total)}, over the {human_size(limit)} limit for one message."


# --- Storing a request's files with the message, or not at all ----------------------------------

# Files written to storage by _store inside storing_atomically(), so a failure can remove them.
_new_files: ContextVar[list[str] | None] = ContextVar("pushmail_new_blob_files", default=None)


@contextmanager
def storing_atomically() -> Iterator[None]:
    """Blobs stored inside the block are kept only if the whole block succeeds.

    The block runs in a transaction: if it raises (a limit, a refused
    recipient, any error), the Blob rows it created roll back and the files it
    wrote are deleted from storage, so a rejected request leaves nothing behind.
    Use it around storing a request's files and saving what attaches them.
    """
    outer = _new_files.get()
    created: list[str] = []
    token = _new_files.set(created)
    try:
        with transaction.atomic():
            yield
    except BaseException:
        for name in created:
            _delete_file(name)
        raise
    finally:
        _new_files.reset(token)
    if outer is not None:  # nested: the enclosing block may still fail and must remove these too
        outer.extend(created)


class DigestMismatch(Exception):
    """Fetched bytes are not the ones the manifest announced; nothing was stored."""


def _chunks(file: Any) -> Iterator[bytes]:
    if hasattr(file, "chunks"):  # Django UploadedFile / File
        if hasattr(file, "seek"):
            try:
                file.seek(0)
            except (OSError, ValueError):
                pass
        yield from file.chunks(CHUNK)
        return
    while True:
        chunk = file.read(CHUNK)
        if not chunk:
            return
        yield chunk


def _spool(chunks: Iterable[bytes], *, limit: int, too_large: str) -> tuple[IO[bytes], str, int]:
    """Copy chunks to a temp file while hashing; never hold the whole file in memory."""
    hasher = hashlib.sha256()
    size = 0
    tmp = tempfile.TemporaryFile()  # noqa: SIM115 - handed to the caller, closed there
    try:
        for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise ValidationError(too_large, code="too_large")
            hasher.update(chunk)
            tmp.write(chunk)
        tmp.seek(0)
    except BaseException:
        tmp.close()
        raise
    return tmp, hasher.hexdigest(), size


def _find(sha256: str) -> Blob | None:
    return Blob.objects.filter(sha256=sha256).first()


def _store(tmp: IO[bytes], sha256: str, size: int, *, likely_new: bool = False) -> Blob:
    """The one row for these bytes: the existing one, or a new one saved to storage.

    Looked up first, so that known bytes are not written again; ``likely_new`` skips the
    lookup for bytes that are new nearly every time (a received message with its trace header).
    """
    existing = None if likely_new else _find(sha256)
    if existing is not None:
        # Stored again just now: the unused-file sweep must not take it before it is attached.
        Blob.objects.filter(pk=existing.pk).update(last_stored_at=timezone.now())
        return existing
    blob = Blob(sha256=sha256, size=size)
    # FileField.save goes through STORAGES["default"] (filesystem or object storage) at blob_path.
    blob.file.save(sha256, File(tmp), save=False)
    try:
        with transaction.atomic():
            blob.save(force_insert=True)
        created = _new_files.get()
        if created is not None and blob.file.name:  # always named once saved
            created.append(blob.file.name)
    except IntegrityError:
        # The same bytes were stored concurrently (or, with likely_new, before): keep theirs, drop
        # our copy (unless storage gave both the same name, which is then theirs too).
        winner = Blob.objects.get(sha256=sha256)
        if blob.file.name and blob.file.name != winner.file.name:
            blob.file.storage.delete(blob.file.name)
        Blob.objects.filter(pk=winner.pk).update(last_stored_at=timezone.now())
        return winner
    return blob


def store_upload(*, file: Any, max_bytes: int | None = None, likely_new: bool = False) -> Blob:
    """Store an uploaded file once, deduplicated by SHA-256, and return its Blob.

    ``file`` is a Django ``UploadedFile`` or any binary file object. It is
    streamed to a temporary file while hashed. More than ``max_bytes``
    (default ``PUSHMAIL_MAX_ATTACHMENT_BYTES``) raises ValidationError and
    stores nothing. ``likely_new``: bytes that are new nearly every time, stored
    without looking for them first.
    """
    limit = settings.PUSHMAIL_MAX_ATTACHMENT_BYTES if max_bytes is None else max_bytes
    name = getattr(file, "name", None) or "The file"
    tmp, sha256, size = _spool(
        _chunks(file),
        limit=limit,
        too_large=f"{name} is larger than the {human_size(limit)} limit for one attachment.",
    )
    with tmp:
        return _store(tmp, sha256, size, likely_new=likely_new)


def written_upload(*, file: Any, max_bytes: int) -> Blob:
    """A file's bytes written to storage under a new Blob row, not yet saved (:func:`save_written`).

    For bytes that are new nearly every time (a received message with its trace
    header), stored many at once: their rows are inserted in one statement. Call
    inside ``storing_atomically()``: should the block fail, the file is removed.
    More than ``max_bytes`` raises ValidationError and writes nothing.
    """
    name = getattr(file, "name", None) or "The file"
    tmp, sha256, size = _spool(
        _chunks(file),
        limit=max_bytes,
        too_large=f"{name} is larger than the {human_size(max_bytes)} limit for one attachment.",
    )
    blob = Blob(sha256=sha256, size=size)
    with tmp:
        blob.file.save(sha256, File(tmp), save=False)
    created = _new_files.get()
    if created is not None and blob.file.name:
        created.append(blob.file.name)
    return blob


def save_written(blobs: list[Blob]) -> None:
    """Insert the rows of :func:`written_upload` blobs: two statements, however many.

    Bytes already stored (rare, for bytes new nearly every time), or twice
    among ``blobs``, keep the one row and file they have: the copy just
    written is removed and the blob made that row, as :func:`store_upload` does.
    """
    firsts: dict[str, Blob] = {}
    for blob in blobs:
        firsts.setdefault(blob.sha256, blob)
    now = timezone.now()
    for blob in firsts.values():
        blob.last_stored_at = now
    Blob.objects.bulk_create(
        list(firsts.values()), update_conflicts=True, unique_fields=["sha256"], update_fields=["last_stored_at"]
    )
    stored = dict(Blob.objects.filter(pk__in=[blob.pk for blob in firsts.values()]).values_list("pk", "file"))
    for blob in blobs:
        kept = firsts[blob.sha256]
        name = stored[kept.pk]
        if blob.file.name != name:  # stored before: theirs is the one
            discard_written(blob)
            blob.pk, blob.file.name = kept.pk, name


def discard_written(blob: Blob) -> None:
    """A :func:`written_upload` blob that will not be saved after all: its file goes."""
    if blob.file.name:
        _delete_file(blob.file.name)
        created = _new_files.get()
        if created is not None and blob.file.name in created:
            created.remove(blob.file.name)


def store_verified(*, stream: Any, expected_digest: str, expected_size: int) -> Blob:
    """Store fetched bytes only if they are exactly the announced ones.

    ``stream`` is a binary file object or an iterable of chunks. Reading stops
    one byte past ``expected_size``. A size or digest other than announced
    raises DigestMismatch and stores nothing (no row, no file).
    """
    chunks = stream if not hasattr(stream, "read") and not hasattr(stream, "chunks") else _chunks(stream)
    try:
        tmp, sha256, size = _spool(chunks, limit=expected_size, too_large="larger than announced")
    except ValidationError as exc:
        raise DigestMismatch(f"more than the announced {expected_size} bytes") from exc
    with tmp:
        if size != expected_size:
            raise DigestMismatch(f"{size} bytes, not the announced {expected_size}")
        if "sha-256:" + sha256 != expected_digest:
            raise DigestMismatch(f"digest sha-256:{sha256} is not the announced {expected_digest}")
        return _store(tmp, sha256, size)


def check_quota(*, user: User, extra_bytes: int) -> None:
    """Refuse (ValidationError) when ``extra_bytes`` more would put ``user`` over their quota."""
    quota = user.effective_quota_bytes
    used = usage_bytes(user)
    if used + extra_bytes > quota:
        raise ValidationError(quota_exceeded(used=used, quota=quota, extra=extra_bytes), code="quota")


def quota_exceeded(*, used: int, quota: int, extra: int | None) -> str:
    """Why ``extra`` more bytes (None: an upload cut off once over) do not fit in a mailbox."""
    if extra == 0:
        return (
            f"Your mailbox is over its quota: it uses {human_size(used)} of its {human_size(quota)}. "
            "Delete mail or attachments to make room."
        )
    if extra is None:
        needs = f"these files need more than the {human_size(max(0, quota - used))} left"
    else:
        needs = f"this needs {human_size(extra)} more"
    return (
        f"Your mailbox is full: it uses {human_size(used)} of its {human_size(quota)} quota, "
        f"and {needs}. Delete mail or attachments to make room."
    )


# --- Housekeeping ------------------------------------------------------------------------------

#: ``named_by_received_manifest(sha256)``: whether a received message's manifest names these bytes, so a
#: reader may still fetch them (the mailbox app answers). Such a file is kept.
named_by_received_manifest: Hook[[str], bool] = Hook("attachments.services.named_by_received_manifest")


def _delete_file(name: str) -> None:
    Blob._meta.get_field("file").storage.delete(name)


def purge_unused_blobs(*, grace: timedelta = timedelta(days=1), limit: int = 500) -> int:
    """Delete stored files nothing uses any more; return how many.

    Unused means: no sent message and no draft attaches it, no received message's
    fetch stored it or its manifest names it, no message received by SMTP is it, and it was
    not uploaded or fetched again for ``grace``
    (an upload is stored before its draft row exists). The row goes first, the
    file after commit, so a file is never missing under a row.
    """
    cutoff = timezone.now() - grace
    unused = {
        "message_uses__isnull": True,
        "draft_uses__isnull": True,
        "received_uses__isnull": True,
        "smtp_raw_uses__isnull": True,  # a message received by SMTP, kept whole for its .eml
    }
    candidates = Blob.objects.filter(last_stored_at__lt=cutoff, **unused).values_list("pk", "sha256", "file")[:limit]
    purged = 0
    for pk, sha256, name in candidates:
        if named_by_received_manifest(sha256):
            continue
        with transaction.atomic():
            deleted, _ = Blob.objects.filter(pk=pk, last_stored_at__lt=cutoff, **unused).delete()
            if deleted:
                transaction.on_commit(partial(_delete_file, name))
                purged += 1
    return purged
