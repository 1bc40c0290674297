"""Attachment bytes: stored once per instance, addressed by SHA-256.

Both the sender (an upload) and the recipient (a verified fetch) end up with a
:class:`~attachments.models.Blob` row. A row exists only once its bytes are in
storage and hashed, and the unique ``sha256`` keeps a second copy out even when
two uploads of the same file race.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files import File
from django.db import IntegrityError, transaction

from .models import Blob

CHUNK = 64 * 1024


class DigestMismatch(Exception):
    """Fetched bytes are not the ones the manifest announced; nothing was stored."""


def human_size(size: int) -> str:
    """``12 KB``, ``3.4 MB``: the size as the web pages show it."""
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            if unit == "bytes":
                return f"{int(value)} bytes" if value != 1 else "1 byte"
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


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


def _store(tmp: IO[bytes], sha256: str, size: int) -> Blob:
    """The one row for these bytes: the existing one, or a new one saved to storage."""
    existing = _find(sha256)
    if existing is not None:
        return existing
    blob = Blob(sha256=sha256, size=size)
    # FileField.save goes through STORAGES["default"] (filesystem or object storage) at blob_path.
    blob.file.save(sha256, File(tmp), save=False)
    try:
        with transaction.atomic():
            blob.save(force_insert=True)
    except IntegrityError:
        # The same bytes were stored concurrently: keep theirs, drop our copy
        # (unless storage gave both the same name, which is then theirs too).
        winner = Blob.objects.get(sha256=sha256)
        if blob.file.name != winner.file.name:
            blob.file.storage.delete(blob.file.name)
        return winner
    return blob


def store_upload(*, file: Any, max_bytes: int | None = None) -> Blob:
    """Store an uploaded file once, deduplicated by SHA-256, and return its Blob.

    ``file`` is a Django ``UploadedFile`` or any binary file object. It is
    streamed to a temporary file while hashed. More than ``max_bytes``
    (default ``PUSHMAIL_MAX_ATTACHMENT_BYTES``) raises ValidationError and
    stores nothing.
    """
    limit = settings.PUSHMAIL_MAX_ATTACHMENT_BYTES if max_bytes is None else max_bytes
    name = getattr(file, "name", None) or "The file"
    tmp, sha256, size = _spool(
        _chunks(file),
        limit=limit,
        too_large=f"{name} is larger than the {human_size(limit)} limit for one attachment.",
    )
    with tmp:
        return _store(tmp, sha256, size)


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


def check_quota(*, user: Any, extra_bytes: int) -> None:
    """Refuse (ValidationError) when ``extra_bytes`` more would put ``user`` over their quota."""
    from .selectors import usage_bytes

    quota = user.effective_quota_bytes
    used = usage_bytes(user)
    if used + extra_bytes > quota:
        raise ValidationError(
            f"Your mailbox is full: it uses {human_size(used)} of its {human_size(quota)} quota, "
            f"and this needs {human_size(extra_bytes)} more. Delete mail or attachments to make room.",
            code="quota",
        )
