"""Filing spooled messages into the recipients' mailboxes, in batches: the filing loop.

The gateway answers ``250`` once a message is committed to the spool
(gateway.spool); this files what the spool holds. Each batch (up to
``PUSHMAIL_SMTP_FILING_BATCH`` messages) is one transaction: the spool rows
locked (other processes skip them), each message parsed and its parts stored,
then every message inserted in one statement, every entry in one, the rows
marked filed. A process killed mid-batch rolls the whole batch back, its rows
still ``queued`` and due, filed by the next batch of any gateway process.

A message that cannot be read as mail is given up (``failed``) and its
recipients get a notice; the rest of its batch is filed. A batch that fails
as a whole (a database error) is filed again message by message, so that one
bad message cannot hold up the others; the one that fails is retried with
backoff for ``PUSHMAIL_SMTP_FILING_WINDOW``, then given up.

Each ``manage.py smtpd`` process runs a :class:`FilingLoop`: woken at once
when a message is spooled, and every ``PUSHMAIL_SWEEP_SECONDS`` anyway for
rows that are due again (a retry, a batch a killed process left).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import close_old_connections, connections, transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import User
from attachments import services as attachment_services
from federation import payloads
from mailbox import services as mailbox_services
from pushmail_site.jobs import lock
from pushmail_site.states import retry_delay, retry_window, transition, transition_rows

from . import services, spool
from .models import SpooledMessage, SpoolState
from .states import SPOOLED_MESSAGE

__all__ = ["FilingLoop", "file_due"]

log = logging.getLogger(__name__)


class _Unfileable(Exception):
    """This message cannot be filed, now or later."""


def _due() -> QuerySet[SpooledMessage]:
    return lock(SpooledMessage.objects.filter(state=SpoolState.QUEUED, next_attempt_at__lte=timezone.now()))


def file_due(*, limit: int | None = None) -> int:
    """File up to ``limit`` due spooled messages, oldest first, in one transaction; how many were taken.

    Should the batch fail as a whole, its messages are filed one by one.
    """
    limit = limit or settings.PUSHMAIL_SMTP_FILING_BATCH
    ids: list[int] = []
    try:
        with attachment_services.storing_atomically():
            rows = list(_due().order_by("next_attempt_at", "pk")[:limit])
            ids = [row.pk for row in rows]
            if rows:
                _file(rows)
        return len(ids)
    except Exception:
        if not ids:
            raise  # not even taken: the database, most likely; the next sweep tries again
        if len(ids) == 1:
            log.exception("filing spooled message %s failed", ids[0])
            _retry_later(ids[0])
            return 1
        log.warning("filing a batch of %d spooled messages failed; filing them one by one", len(ids), exc_info=True)
    for pk in ids:
        try:
            with attachment_services.storing_atomically():
                row = lock(SpooledMessage.objects.filter(pk=pk, state=SpoolState.QUEUED)).first()
                if row is not None:
                    _file([row])
        except Exception:
            log.exception("filing spooled message %s failed", pk)
            _retry_later(pk)
    return len(ids)


def _file(rows: list[SpooledMessage]) -> None:
    """File these locked rows' messages together (inside the caller's transaction)."""
    wanted = {pk for row in rows for pk in row.recipient_ids}
    users = {user.pk: user for user in User.objects.filter(pk__in=wanted, is_active=True).select_related("domain")}
    filings: list[mailbox_services.SmtpFiling] = []
    filed: list[SpooledMessage] = []
    for row in rows:
        try:
            filings.append(_filing_of(row, users))
            filed.append(row)
        except _Unfileable as exc:
            _give_up(row, str(exc), users=[users[pk] for pk in row.recipient_ids if pk in users])
    if filings:
        attachment_services.save_written([filing.delivery.raw for filing in filings])
        mailbox_services.file_smtp_messages(filings=filings)
        transition_rows(
            SpooledMessage.objects.filter(pk__in=[row.pk for row in filed]),
            SPOOLED_MESSAGE,
            SpoolState.FILED,
            fields={"filed_at": timezone.now(), "head": b"", "last_error": ""},
        )
        with_chunks = [row.pk for row in filed if row.chunks]
        if with_chunks:
            spool.drop_bytes(with_chunks)


def _filing_of(row: SpooledMessage, users: dict[int, User]) -> mailbox_services.SmtpFiling:
    recipients = [users[pk] for pk in row.recipient_ids if pk in users]
    if not recipients:
        raise _Unfileable("none of its recipients' mailboxes is active any more")
    file = spool.open_spooled(row)
    try:
        return services.file_spooled(row=row, file=file, users=recipients)
    except (payloads.PayloadError, ValidationError) as exc:
        raise _Unfileable(f"it cannot be read as mail ({exc})") from exc
    finally:
        file.close()


def _give_up(row: SpooledMessage, reason: str, *, users: list[User]) -> None:
    """``failed``, and a notice to each recipient: the sender was told it was delivered."""
    log.error("spooled message %s from %s <%s> cannot be filed: %s", row.pk, row.client_ip, row.mail_from, reason)
    transition(row, SPOOLED_MESSAGE, SpoolState.FAILED, fields={"last_error": reason[:500]})
    when = timezone.localtime(row.received_at).strftime("%Y-%m-%d %H:%M %Z")
    sender = row.mail_from or "the null sender (a bounce or other notice)"
    for user in users:
        mailbox_services.post_notice(
            owner=user,
            subject="A message to you could not be filed",
            text=(
                f"A message from {sender} received by SMTP on {when} was taken for your mailbox "
                f"but could not be filed: {reason}. Ask the sender to send it again."
            ),
        )


def _retry_later(pk: int) -> None:
    """A passing failure: due again after a backoff, or given up once the window has passed."""
    try:
        with transaction.atomic():
            row = lock(SpooledMessage.objects.filter(pk=pk, state=SpoolState.QUEUED), skip_locked=False).first()
            if row is None:
                return
            attempts = row.attempts + 1
            if timezone.now() - row.received_at > retry_window(SPOOLED_MESSAGE, SpoolState.QUEUED):
                users = list(User.objects.filter(pk__in=row.recipient_ids, is_active=True).select_related("domain"))
                _give_up(row, f"filing it kept failing for {attempts} attempts", users=users)
                return
            due: datetime = timezone.now() + retry_delay(SPOOLED_MESSAGE, SpoolState.QUEUED, attempts=attempts)
            transition(row, SPOOLED_MESSAGE, SpoolState.QUEUED, fields={"attempts": attempts, "next_attempt_at": due})
    except Exception:
        log.exception("could not put spooled message %s back for later", pk)


class FilingLoop:
    """A thread that files the spool: woken by :meth:`wake`, and every ``sweep_seconds`` for what is due."""

    def __init__(self, *, sweep_seconds: float | None = None) -> None:
        self.sweep_seconds = settings.PUSHMAIL_SWEEP_SECONDS if sweep_seconds is None else sweep_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="smtpd-filing", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """A message was spooled: file it (with whatever else comes meanwhile)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop after the batch under way (a batch cut short would be filed again anyway)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def _run(self) -> None:
        batch = settings.PUSHMAIL_SMTP_FILING_BATCH
        try:
            while not self._stop.is_set():
                self._wake.wait(timeout=self.sweep_seconds)
                self._wake.clear()
                close_old_connections()
                try:
                    # A full batch means more may be waiting: on until the spool is drained.
                    while file_due(limit=batch) >= batch and not self._stop.is_set():
                        pass
                except Exception:
                    log.exception("filing the spool failed; trying again at the next sweep")
        finally:
            connections.close_all()
