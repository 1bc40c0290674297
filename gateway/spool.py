"""The spooled message's bytes: written at the end of DATA, read back to file it.

A message up to 256 KiB is one row (one INSERT, committed at once); a larger
one is its first 256 KiB in the row and the rest in SpooledChunk rows, all in
one transaction, written and read a chunk at a time (the database driver holds a
few copies of each chunk on the way: chunks larger than this would show in the
gateway's memory).
"""

from __future__ import annotations

import tempfile
from typing import IO, Any

from django.db import transaction

from .models import SpooledChunk, SpooledMessage

# The bytes of a message in its row; each further chunk is as large.
CHUNK = 256 * 1024


def spool(*, file: IO[bytes], fields: dict[str, Any]) -> int:
    """Commit the message read from ``file`` (to its end) with ``fields``; its row's id, once committed."""
    head = file.read(CHUNK)
    following = file.read(CHUNK)
    if not following:
        return SpooledMessage.objects.create(head=head, size=len(head), **fields).pk
    with transaction.atomic():
        row = SpooledMessage.objects.create(head=head, **fields)
        size, position = len(head), 0
        while following:
            SpooledChunk.objects.create(message=row, position=position, data=following)
            size, position = size + len(following), position + 1
            following = file.read(CHUNK)
        SpooledMessage.objects.filter(pk=row.pk).update(size=size, chunks=position)
    return row.pk


def open_spooled(row: SpooledMessage) -> IO[bytes]:
    """The message of ``row`` in a temporary file (in memory up to a megabyte), at its start."""
    file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=1024 * 1024)  # noqa: SIM115 - the caller closes it
    file.write(bytes(row.head))
    if row.chunks:
        chunks = SpooledChunk.objects.filter(message=row).order_by("position").values_list("data", flat=True)
        for data in chunks.iterator(chunk_size=1):
            file.write(bytes(data))
    file.seek(0)
    return file


def drop_bytes(ids: list[int]) -> None:
    """The bytes of these rows are no longer needed (their messages are filed)."""
    SpooledChunk.objects.filter(message_id__in=ids).delete()
