"""Recipient side: notifications received, bodies pulled on read, inbox entries, received files' fetches."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from django.db import models
from django.db.models import F, Func, Value
from django.utils import timezone

from .indexes import PostgresGinIndex

if TYPE_CHECKING:
    from accounts.models import User


class FetchState(models.TextChoices):
    """Where a notified message's body is; the moves are declared in mailbox.states."""

    NOTIFIED = "notified"
    FETCHING = "fetching"
    FETCHED = "fetched"
    UNAVAILABLE = "unavailable"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"
    TAMPERED = "tampered"
    MALFORMED = "malformed"


class AttachmentFetchState(models.TextChoices):
    """Where a received file's fetch is; the moves are declared in mailbox.states."""

    WANTED = "wanted"
    FETCHING = "fetching"
    FETCHED = "fetched"
    UNAVAILABLE = "unavailable"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"
    TAMPERED = "tampered"
    TOO_LARGE = "too_large"
    BLOCKED = "blocked"


class EntryState(models.TextChoices):
    """An entry's state: its message's FetchState (the same values), or ``notice``."""

    NOTIFIED = "notified"
    FETCHING = "fetching"
    FETCHED = "fetched"
    UNAVAILABLE = "unavailable"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"
    TAMPERED = "tampered"
    MALFORMED = "malformed"
    NOTICE = "notice"


class Folder(models.TextChoices):
    INBOX = "inbox", "Inbox"
    ARCHIVE = "archive", "Archive"
    SPAM = "spam", "Spam"
    TRASH = "trash", "Trash"
    NEWS = "news", "Newsletters"  # issues of the lists the owner subscribed to (newsletters app)


class Transport(models.TextChoices):
    """How a received message came: notified by a Pushmail instance, or pushed whole by SMTP."""

    PUSHMAIL = "pushmail", "Pushmail"
    SMTP = "smtp", "SMTP"


class RemoteMessage(models.Model):
    """A message held at another instance, known here from its notification, or one received by SMTP.

    One row per (origin domain, global id) for the whole instance: the body is
    fetched and stored once, whichever local reader opens it first. A message
    received by SMTP (``transport`` "smtp") arrives whole: it is stored
    ``fetched`` with its body, attachments and raw bytes at once, under a
    global id of this instance's making, and no instance can withdraw it.
    """

    origin_domain = models.CharField(max_length=253)
    global_id = models.UUIDField()
    message_id = models.CharField(max_length=400)
    sender = models.CharField(max_length=320)
    sender_name = models.CharField(
        max_length=100,
        blank=True,
        help_text="The display name the sender gave: shown beside the address, never trusted.",
    )
    subject = models.CharField(max_length=998, blank=True)
    date = models.DateTimeField()
    size = models.PositiveIntegerField()
    digest = models.CharField(max_length=80)
    in_reply_to = models.CharField(max_length=400, blank=True)
    references = models.JSONField(default=list)
    attachments = models.JSONField(
        default=list, blank=True, help_text="The manifest from the notification: name, type, size, digest."
    )
    expires_at = models.DateTimeField()
    local_domain = models.CharField(max_length=253, help_text="The hosted domain this instance fetches as.")
    received_at = models.DateTimeField(auto_now_add=True)
    state = models.CharField(max_length=11, choices=FetchState.choices, default=FetchState.NOTIFIED)
    content = models.BinaryField(null=True, blank=True, help_text="The canonical body bytes, once fetched.")
    fetched_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    withdrawn_at = models.DateTimeField(null=True, blank=True)
    spam_verdict = models.CharField(
        max_length=300,
        blank=True,
        help_text="Why this instance judged the message spam (the reputation app decides); empty while it has not.",
    )
    transport = models.CharField(max_length=8, choices=Transport.choices, default=Transport.PUSHMAIL)
    encrypted = models.BooleanField(
        default=False,
        help_text="The body is OpenPGP ciphertext (docs/protocol.md §4.6): only readers' browsers open it.",
    )
    raw = models.ForeignKey(
        "attachments.Blob",
        on_delete=models.PROTECT,
        related_name="smtp_raw_uses",
        null=True,
        blank=True,
        help_text="SMTP only: the message as received, with this instance's trace headers (the .eml download).",
    )
    authentication_results = models.TextField(
        blank=True, help_text="SMTP only: the SPF, DKIM and DMARC results (RFC 8601) recorded on arrival."
    )
    list_id = models.CharField(
        max_length=250, blank=True, help_text="SMTP only: the mailing list's identity from its List-Id header."
    )
    automated = models.CharField(
        max_length=100,
        blank=True,
        help_text="Why this is automated mail that vacation replies never answer (Auto-Submitted, Precedence).",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["origin_domain", "global_id"], name="unique_remote_message"),
        ]
        indexes = [
            models.Index(fields=["state", "next_attempt_at"]),
            models.Index(fields=["expires_at"]),
            # A reply that names only its parent finds the parent's conversation (mailbox.threads).
            models.Index(fields=["message_id"], name="remote_message_id"),
        ]

    def __str__(self) -> str:
        return f"{self.global_id} from {self.sender} ({self.state})"


class Label(models.Model):
    """A user's own label; an entry can carry several."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="labels")
    name = models.CharField(max_length=60)
    # Not a column: the unread count that selectors.labels_with_unread sets for the sidebar.
    unread: int

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="unique_label_per_owner")]

    def __str__(self) -> str:
        return self.name


class AllowedSender(models.Model):
    """A sender whose remote content (images) this user always loads, through the proxy."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="allowed_senders")
    address = models.CharField(max_length=320)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "address"], name="unique_allowed_sender")]

    def __str__(self) -> str:
        return self.address


class EntryQuerySet(models.QuerySet["InboxEntry"]):
    def owned_by(self, user: User) -> EntryQuerySet:
        return self.filter(owner=user)


class InboxEntry(models.Model):
    """One message in one user's inbox: remote, local, or a system notice."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="inbox_entries")
    remote = models.ForeignKey(RemoteMessage, null=True, blank=True, on_delete=models.CASCADE, related_name="entries")
    local = models.ForeignKey(
        "outbox.Message", null=True, blank=True, on_delete=models.CASCADE, related_name="local_entries"
    )
    sender = models.CharField(max_length=320)
    sender_name = models.CharField(max_length=100, blank=True, help_text="The sender's display name, if it gave one.")
    subject = models.CharField(max_length=998, blank=True)
    size = models.PositiveIntegerField(default=0)
    received_at = models.DateTimeField(auto_now_add=True)
    state = models.CharField(max_length=11, choices=EntryState.choices)
    read = models.BooleanField(default=False)
    opened_at = models.DateTimeField(null=True, blank=True, help_text="When the owner first saw the body.")
    notice_text = models.TextField(blank=True)
    folder = models.CharField(max_length=7, choices=Folder.choices, default=Folder.INBOX)
    hidden_from = models.CharField(
        max_length=7,
        choices=Folder.choices,
        blank=True,
        help_text="The folder this unopened copy was in before a spam verdict hid it; empty when not hidden.",
    )
    starred = models.BooleanField(default=False)
    trashed_at = models.DateTimeField(null=True, blank=True, help_text="Emptied from Trash 30 days after this.")
    labels = models.ManyToManyField(Label, blank=True, related_name="entries")
    thread_key = models.CharField(
        max_length=400, blank=True, help_text="The Message-ID that starts the conversation (see mailbox.threads)."
    )
    has_attachments = models.BooleanField(default=False)
    attachments_size = models.BigIntegerField(default=0, help_text="Bytes of the attachments, fetched or not.")
    remote_content_allowed = models.BooleanField(default=False)
    search_document = models.TextField(blank=True, help_text="Subject, sender and, once fetched, the body text.")

    objects = EntryQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "inbox entries"
        constraints = [
            models.UniqueConstraint(fields=["owner", "remote"], name="unique_entry_per_remote_message"),
            models.UniqueConstraint(fields=["owner", "local"], name="unique_entry_per_local_message"),
        ]
        indexes = [
            models.Index(fields=["owner", "folder", "-received_at", "-id"], name="entry_folder_page"),
            models.Index(fields=["owner", "-received_at", "-id"], name="entry_all_page"),
            models.Index(fields=["owner", "thread_key"], name="entry_thread"),
            models.Index(fields=["owner", "folder"], condition=models.Q(read=False), name="entry_unread_by_folder"),
            models.Index(fields=["folder", "trashed_at"], name="entry_trash_age"),
            # What mailbox.search matches with on PostgreSQL: to_tsvector('simple', search_document).
            PostgresGinIndex(
                Func(Value("simple"), F("search_document"), function="to_tsvector"),
                name="mailbox_entry_search_fts",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.subject!r} for {self.owner_id} ({self.state})"


class ReceivedAttachmentQuerySet(models.QuerySet["ReceivedAttachment"]):
    def verified(self) -> ReceivedAttachmentQuerySet:
        """Rows whose fetch from the message's own sender brought and verified the bytes."""
        return self.filter(state=AttachmentFetchState.FETCHED, blob__isnull=False)


class ReceivedAttachment(models.Model):
    """Attachment ``position`` of a received message: the job that fetches it, and then the proof.

    Blobs are shared by the whole instance and found by digest, so holding a
    Blob says nothing about who may read it: a manifest can name any digest.
    This row, once ``fetched``, is the proof that these bytes came from this
    message's sender (checked against its manifest's size and digest); only
    then are they served for the message. ``blob`` is set by that fetch alone,
    in the same move to ``fetched``. Before, the row is the fetch job
    (mailbox/states.py): a reader's download creates it, a worker claims it,
    and failures are retried with backoff until the message expires.
    """

    remote = models.ForeignKey(RemoteMessage, on_delete=models.CASCADE, related_name="received_attachments")
    position = models.PositiveSmallIntegerField()
    state = models.CharField(max_length=11, choices=AttachmentFetchState.choices, default=AttachmentFetchState.WANTED)
    blob = models.ForeignKey(
        "attachments.Blob", on_delete=models.PROTECT, related_name="received_uses", null=True, blank=True
    )
    requested_at = models.DateTimeField(default=timezone.now)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    fetched_at = models.DateTimeField(null=True, blank=True)

    objects = ReceivedAttachmentQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["remote", "position"], name="unique_received_attachment_position")
        ]
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="received_attachment_due")]

    def __str__(self) -> str:
        return f"attachment {self.position} of {self.remote_id} ({self.state})"
