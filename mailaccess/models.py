"""What mail access remembers between sessions: POP3's exact download sizes, and for IMAP each
mailbox's UIDVALIDITY and the UIDs it gave out.

RFC 3501 §2.3.1.1: within one UIDVALIDITY, a message keeps its UID for as long
as it stays in the mailbox, and a message that arrives (or is moved in) gets a
UID higher than any given before. An entry lives in one folder at a time, so a
UID belongs to a (mailbox, message) pair: a message moved from INBOX to
Archive loses its INBOX row and gets a new row in Archive with Archive's next
UID. The rows are made and dropped by mailaccess.imapstore.sync, which
compares a mailbox's rows with what the mailbox holds now (so moves made in
the webmail show too); nothing else writes them.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from mailbox.models import InboxEntry


class DownloadSize(models.Model):
    """The exact octets of an entry's download (CRLF line ends, before dot-stuffing), as last sent.

    POP3 ``LIST`` and ``STAT`` give it once a message has been downloaded, so their sizes are what
    ``RETR`` sends (RFC 1939); before the first download the size comes from the notification.
    """

    entry = models.OneToOneField(InboxEntry, on_delete=models.CASCADE, primary_key=True, related_name="+")
    size = models.PositiveIntegerField()
    updated_at = models.DateTimeField(auto_now=True)
    #: The download itself, when small, so the next one is read rather than rendered again
    #: (mailaccess.maildrop.prepare_downloads), and a digest of what it was rendered from: a download
    #: whose key no longer matches is rendered again.
    key = models.CharField(max_length=32, blank=True, default="")
    eml = models.BinaryField(null=True, blank=True)


class ImapFolder(models.Model):
    """One mailbox of one user as IMAP sees it: ``key`` is ``inbox``, ``archive``, ``spam``, ``trash``,
    ``sent``, ``drafts`` or ``label:<id>`` (a renamed label keeps its key, so its UIDs stay valid)."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=40)
    uid_validity = models.PositiveIntegerField()
    uid_next = models.PositiveIntegerField(default=1)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "key"], name="unique_imap_folder")]

    def __str__(self) -> str:
        return f"{self.key} of {self.owner_id}"


class ImapUid(models.Model):
    """The UID a message has in one mailbox: exactly one of ``entry``, ``sent`` and ``draft`` is set."""

    folder = models.ForeignKey(ImapFolder, on_delete=models.CASCADE, related_name="uids")
    uid = models.PositiveIntegerField()
    entry = models.ForeignKey("mailbox.InboxEntry", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    sent = models.ForeignKey("outbox.Message", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    draft = models.ForeignKey("outbox.Draft", null=True, blank=True, on_delete=models.CASCADE, related_name="+")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["folder", "uid"], name="unique_imap_uid"),
            models.UniqueConstraint(fields=["folder", "entry"], name="unique_imap_uid_entry"),
            models.UniqueConstraint(fields=["folder", "sent"], name="unique_imap_uid_sent"),
            models.UniqueConstraint(fields=["folder", "draft"], name="unique_imap_uid_draft"),
        ]

    def __str__(self) -> str:
        return f"UID {self.uid} in {self.folder_id}"


class ImapEnvelope(models.Model):
    """A received message's IMAP ENVELOPE as last given, so a listing of thousands reads it rather than
    rendering every header block again (mailaccess.imapstore.envelopes).

    ``key`` is a digest of what the envelope was rendered from (the entry's and its message's state,
    subject, sender, who may read it); a row whose key no longer matches is rendered again and replaced.
    """

    entry = models.OneToOneField(InboxEntry, on_delete=models.CASCADE, primary_key=True, related_name="+")
    key = models.CharField(max_length=32)
    envelope = models.BinaryField()
