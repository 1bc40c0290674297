"""Mail taken by the SMTP gateway and not yet filed: the spool.

At the end of DATA the message, checked, is written here whole (with the trace
headers this gateway adds) and committed before the client hears ``250``: an
accepted message is never lost, whatever happens to the process after. Filing
it into the recipients' mailboxes (parsing, storing, classifying) is done in
batches by the filing loop (gateway.filing); the row's state graph is in
gateway.states.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class SpoolState(models.TextChoices):
    """The states of a spooled message; the moves are declared in gateway.states."""

    QUEUED = "queued"
    FILED = "filed"
    FAILED = "failed"


class SpooledMessage(models.Model):
    """One message answered ``250`` by the gateway, and what filing it needs.

    The raw message is in ``head`` (its first 256 KiB) and, beyond, in
    :class:`SpooledChunk` rows: a large message is never held whole in memory.
    Once filed the bytes are dropped (the mailbox keeps its own copy).
    """

    state = models.CharField(max_length=6, choices=SpoolState.choices, default=SpoolState.QUEUED)
    received_at = models.DateTimeField(default=timezone.now)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    attempts = models.PositiveIntegerField(default=0)
    client_ip = models.CharField(max_length=45)
    helo = models.CharField(max_length=255, blank=True)
    mail_from = models.CharField(max_length=320, blank=True)  # "" for the null sender <>
    #: The recipients' mailboxes, as found at RCPT TO (user ids).
    recipient_ids = models.JSONField(default=list)
    #: The Authentication-Results this gateway wrote (unfolded), for the spam checks to read.
    authentication_results = models.TextField(blank=True)
    #: Why every copy goes to Spam (a DMARC quarantine policy), or "".
    spam_reason = models.CharField(max_length=300, blank=True)
    size = models.PositiveBigIntegerField(default=0)
    head = models.BinaryField(default=b"")
    #: How many SpooledChunk rows follow ``head``.
    chunks = models.PositiveIntegerField(default=0)
    filed_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["next_attempt_at"], name="spool_due", condition=models.Q(state=SpoolState.QUEUED))
        ]

    def __str__(self) -> str:
        return f"spooled message {self.pk} ({self.state})"


class SpooledChunk(models.Model):
    """A further 256 KiB of a large spooled message."""

    message = models.ForeignKey(SpooledMessage, on_delete=models.CASCADE, related_name="+")
    position = models.PositiveIntegerField()
    data = models.BinaryField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["message", "position"], name="spool_chunk_once")]
