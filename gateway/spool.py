"""The spooled message's bytes: written at the end of DATA, read back to file it.

A message up to 256 KiB is one row (one INSERT, committed at once); a larger
one is its first 256 KiB in the row and the rest in SpooledChunk rows, all in
one transaction, written and read a chunk at a time (the database driver holds a
few copies of each chunk on the way: chunks larger than this would show in the
gateway's memory).

Group commit: with a :class:`GroupCommit` running, the rows of messages that
several sessions finish at once are inserted in one statement and committed in
one transaction; each session learns its row's id (and answers ``250``) only
once that transaction has committed, and if it fails every session in it is
told so (and answers ``451``): none of its rows is stored.
"""

from __future__ import annotations

import logging
import queue
import tempfile
import threading
from concurrent.futures import Future
from typing import IO, Any

from django.db import close_old_connections, connections, transaction

from .models import SpooledChunk, SpooledMessage

# The bytes of a message in its row; each further chunk is as large.
CHUNK = 256 * 1024


log = logging.getLogger(__name__)


def spool(*, file: IO[bytes], fields: dict[str, Any], group: GroupCommit | None = None) -> int:
    """Commit the message read from ``file`` (to its end) with ``fields``; its row's id, once committed.

    A message of one row goes through ``group`` when given: committed with the others that
    sessions finished meanwhile (raises what that commit raised).
    """
    head = file.read(CHUNK)
    following = file.read(CHUNK)
    if not following:
        row = SpooledMessage(head=head, size=len(head), **fields)
        if group is not None:
            return group.commit(row)
        row.save(force_insert=True)
        return row.pk
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


class GroupCommit:
    """A thread that commits the spool rows sessions hand it, all those waiting in one transaction.

    :meth:`commit` blocks its caller (a worker thread of one session) until the transaction holding
    its row has committed, and returns the row's id, or raises the error that rolled it back. No
    waiting to gather more: while one transaction commits, the rows that come meanwhile queue up
    for the next, so the groups grow with the load and a lone message waits for no one.
    """

    def __init__(self, *, most: int = 100) -> None:
        self.most = most
        self._queue: queue.SimpleQueue[tuple[SpooledMessage, Future[int]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="smtpd-spool", daemon=True)
        self._lock = threading.Lock()
        self._stopped = False

    def start(self) -> None:
        self._thread.start()

    def commit(self, row: SpooledMessage) -> int:
        """Insert ``row`` with whatever else is waiting; its id, once committed."""
        done: Future[int] = Future()
        with self._lock:
            if self._stopped:
                raise RuntimeError("the spool's group commit has stopped")
            self._queue.put((row, done))
        return done.result()

    def waiting(self) -> int:
        """How many rows are handed over and not yet taken into a transaction."""
        return self._queue.qsize()

    def stop(self) -> None:
        """Commit what was handed over already, then end the thread."""
        with self._lock:
            self._stopped = True
            self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def _run(self) -> None:
        try:
            while True:
                first = self._queue.get()
                group = [] if first is None else [first]
                ending = first is None
                while len(group) < self.most:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        ending = True
                    else:
                        group.append(more)
                if group:
                    self._commit(group)
                if ending:
                    return
        finally:
            connections.close_all()

    @staticmethod
    def _commit(group: list[tuple[SpooledMessage, Future[int]]]) -> None:
        try:
            close_old_connections()  # as for each command: a broken or old connection is replaced
            with transaction.atomic():
                rows = SpooledMessage.objects.bulk_create([row for row, _ in group])
        except BaseException as exc:  # noqa: BLE001 - every session of the group is told, whatever it was
            log.warning("committing %d spooled messages failed: %s", len(group), exc)
            for _, done in group:
                done.set_exception(exc)
            close_old_connections()
            if not isinstance(exc, Exception):
                raise
            return
        for row, (_, done) in zip(rows, group, strict=True):
            done.set_result(row.pk)
