"""Sender side: each message stored once, one Delivery per recipient domain."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import NamedTuple

from django.conf import settings
from django.db import models
from django.utils import timezone


class SenderFolder(models.TextChoices):
    SENT = "sent", "Sent"
    TRASH = "trash", "Trash"


class Message(models.Model):
    """A sent message. ``id`` is its global id on the wire."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    sender = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sent_messages")
    sender_address = models.CharField(max_length=320)
    sender_name = models.CharField(
        max_length=100,
        blank=True,
        help_text="The sender's display name when sent, as the body and notification carry it.",
    )
    subject = models.CharField(max_length=998, blank=True)
    text = models.TextField(blank=True)
    html = models.TextField(null=True, blank=True)
    to = models.JSONField(default=list)
    cc = models.JSONField(default=list)
    bcc = models.JSONField(default=list)
    message_id = models.CharField(max_length=400, unique=True)
    in_reply_to = models.CharField(max_length=400, blank=True)
    references = models.JSONField(default=list)
    date = models.DateTimeField()
    size = models.PositiveIntegerField()
    digest = models.CharField(max_length=80)
    expires_at = models.DateTimeField()
    withdrawn_at = models.DateTimeField(null=True, blank=True)
    # Only the federation endpoint stops serving the body then; the sender's copy stays.
    fetched_by_all_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When every recipient domain allowed to fetch the body had fetched it.",
    )
    # The sender's own copy: Sent, or Trash (emptied after 30 days), starred or not.
    sender_folder = models.CharField(max_length=5, choices=SenderFolder.choices, default=SenderFolder.SENT)
    sender_starred = models.BooleanField(default=False)
    sender_trashed_at = models.DateTimeField(null=True, blank=True)
    thread_key = models.CharField(max_length=400, blank=True)
    auto_submitted = models.CharField(
        max_length=20,
        blank=True,
        help_text="RFC 3834: 'auto-replied' for a vacation reply, 'auto-forwarded' for a filter's forward.",
    )
    list_address = models.CharField(
        max_length=320,
        blank=True,
        help_text="An issue of this list: its notifications name the list, not recipients (docs/protocol.md §13).",
    )
    encrypted = models.BooleanField(
        default=False,
        help_text="Encrypted in the sender's browser (docs/protocol.md §4.6): the text is an armored OpenPGP "
        "message, the subject a placeholder, every attachment ciphertext. The server never had the plaintext.",
    )

    class Meta:
        ordering = ["-date"]
        indexes = [
            models.Index(fields=["sender", "sender_folder", "-date"], name="message_sent_page"),
            models.Index(fields=["sender", "thread_key"], name="message_thread"),
            models.Index(fields=["expires_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.subject!r} from {self.sender_address}"

    @property
    def is_hidden_from_sender(self) -> bool:
        """Deleted for good by its sender, the row kept only for its recipients."""
        return self.sender_folder == SenderFolder.TRASH and self.sender_trashed_at is None

    def offer_end(self, *, now: datetime | None = None, attachments: bool = False) -> OfferEnd | None:
        """Why, and since when, recipient domains can no longer fetch the body; None while they can.

        This is about the federation endpoints only: the sender keeps the body
        and its attachments for as long as the message is in their mailbox.
        With ``attachments``, for the attachment endpoint: files stay offered
        after every domain fetched the body, since readers open them later.
        """
        now = now or timezone.now()
        if self.withdrawn_at:
            return OfferEnd(GoneReason.WITHDRAWN, self.withdrawn_at)
        if not attachments and self.fetched_by_all_at and self.fetched_by_all_at < self.expires_at:
            return OfferEnd(GoneReason.FETCHED, self.fetched_by_all_at)
        if self.expires_at <= now:
            return OfferEnd(GoneReason.EXPIRED, self.expires_at)
        return None


class GoneReason(models.TextChoices):
    """The ``reason`` of a 410 from the body and attachment endpoints (docs/protocol.md §5.5)."""

    WITHDRAWN = "withdrawn", "withdrawn by the sender"
    EXPIRED = "expired", "retention ended"
    FETCHED = "fetched", "every recipient domain has fetched it"


class OfferEnd(NamedTuple):
    """The end of the federation offer of a body: why, and since when."""

    reason: GoneReason
    at: datetime

    @property
    def api_reason(self) -> str:
        """The user API's word for it: never "expired", since the sender's copy is still there."""
        return {
            GoneReason.WITHDRAWN: "withdrawn",
            GoneReason.EXPIRED: "retention_ended",
            GoneReason.FETCHED: "fetched_by_all",
        }[self.reason]


class RecipientKind(models.TextChoices):
    TO = "to"
    CC = "cc"
    BCC = "bcc"


class RecipientStatus(models.TextChoices):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class Recipient(models.Model):
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="recipients")
    address = models.CharField(max_length=320)
    domain = models.CharField(max_length=253)
    kind = models.CharField(max_length=3, choices=RecipientKind.choices)
    status = models.CharField(max_length=8, choices=RecipientStatus.choices, default=RecipientStatus.PENDING)
    reason = models.CharField(max_length=300, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["message", "address"], name="unique_recipient_per_message")]
        indexes = [models.Index(fields=["address"])]

    def __str__(self) -> str:
        return f"{self.address} ({self.status})"


class DeliveryState(models.TextChoices):
    PENDING = "pending"
    NOTIFIED = "notified"
    RETRYING = "retrying"
    FAILED = "failed"


class Transport(models.TextChoices):
    FEDERATION = "federation", "Pushmail"
    SMTP = "smtp", "SMTP"


class Delivery(models.Model):
    """The notification of one message to one recipient domain (its states: outbox/states.py).

    A domain without a Pushmail instance gets the message itself by SMTP instead
    (``transport``), on the same row, states and retry policy.
    """

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="deliveries")
    domain = models.CharField(max_length=253)
    local = models.BooleanField(default=False, help_text="Recipient domain hosted here: no federation round trip.")
    transport = models.CharField(
        max_length=10,
        choices=Transport.choices,
        default=Transport.FEDERATION,
        help_text="smtp: the domain has no Pushmail instance; the message went to its mail server.",
    )
    smtp_reply = models.CharField(
        max_length=500, blank=True, help_text="The receiving mail server's answer to the message (SMTP only)."
    )
    state = models.CharField(max_length=8, choices=DeliveryState.choices, default=DeliveryState.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    notified_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    delivered = models.PositiveIntegerField(
        null=True, blank=True, help_text="A list's issue: how many subscribers the domain said it reached."
    )

    class Meta:
        verbose_name_plural = "deliveries"
        constraints = [models.UniqueConstraint(fields=["message", "domain"], name="unique_delivery_per_domain")]
        indexes = [models.Index(fields=["state", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.message_id} → {self.domain} ({self.state})"


class WithdrawalState(models.TextChoices):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class Withdrawal(models.Model):
    """The withdrawal of one message from one recipient domain (its states: outbox/states.py).

    Made when the sender withdraws the message, for every domain that may have
    been told about it; a domain never notified gets none.
    """

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="withdrawals")
    domain = models.CharField(max_length=253)
    state = models.CharField(max_length=8, choices=WithdrawalState.choices, default=WithdrawalState.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    acknowledged_at = models.DateTimeField(
        null=True, blank=True, help_text="When the domain acknowledged the withdrawal."
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["message", "domain"], name="unique_withdrawal_per_domain")]
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="withdrawal_due")]

    def __str__(self) -> str:
        return f"withdrawal of {self.message_id} from {self.domain} ({self.state})"


class BodyFetch(models.Model):
    """One body served to one recipient domain."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="fetches")
    domain = models.CharField(max_length=253)
    fetched_at = models.DateTimeField(auto_now_add=True)
    bytes = models.PositiveIntegerField()

    class Meta:
        verbose_name_plural = "body fetches"
        indexes = [models.Index(fields=["message", "domain"])]

    def __str__(self) -> str:
        return f"{self.message_id} fetched by {self.domain}"


class MessageAttachment(models.Model):
    """A file attached to a sent message; its bytes are a shared Blob."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="attachments")
    blob = models.ForeignKey("attachments.Blob", on_delete=models.PROTECT, related_name="message_uses")
    position = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=255)
    content_type = models.CharField(max_length=127)
    size = models.BigIntegerField()

    class Meta:
        ordering = ["position"]
        constraints = [models.UniqueConstraint(fields=["message", "position"], name="unique_attachment_position")]

    def __str__(self) -> str:
        return f"{self.name} ({self.size} bytes)"


class AttachmentFetch(models.Model):
    """One attachment served to one recipient domain (sender side), like BodyFetch."""

    attachment = models.ForeignKey(MessageAttachment, on_delete=models.CASCADE, related_name="fetches")
    domain = models.CharField(max_length=253)
    fetched_at = models.DateTimeField(auto_now_add=True)
    bytes = models.BigIntegerField()

    class Meta:
        verbose_name_plural = "attachment fetches"
        indexes = [models.Index(fields=["attachment", "domain"])]

    def __str__(self) -> str:
        return f"{self.attachment_id} fetched by {self.domain}"


class DraftState(models.TextChoices):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    SENT = "sent"


class Draft(models.Model):
    """A message being written (its states: outbox/states.py).

    Send schedules it for ``send_at``, after the undo delay; Undo takes it back;
    the send task turns it into a Message.
    """

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="drafts")
    to = models.TextField(blank=True)
    cc = models.TextField(blank=True)
    bcc = models.TextField(blank=True)
    subject = models.CharField(max_length=998, blank=True)
    text = models.TextField(blank=True)
    markdown = models.BooleanField(default=False, help_text="Render the text as Markdown to sanitized HTML.")
    in_reply_to = models.CharField(max_length=400, blank=True)
    references = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    state = models.CharField(max_length=9, choices=DraftState.choices, default=DraftState.DRAFT)
    send_at = models.DateTimeField(null=True, blank=True, help_text="Queued to send at this time; undo clears it.")
    sent_message = models.OneToOneField(
        Message, null=True, blank=True, on_delete=models.SET_NULL, related_name="from_draft"
    )
    # Chosen by the page that makes the draft (compose, reply, forward): its first save, repeated or
    # concurrent, finds this draft instead of making another.
    client_key = models.UUIDField(null=True, blank=True, editable=False)

    class Meta:
        indexes = [
            models.Index(fields=["owner", "-updated_at"], name="draft_page"),
            models.Index(fields=["state", "send_at"], name="draft_due"),
        ]
        constraints = [models.UniqueConstraint(fields=["owner", "client_key"], name="unique_draft_client_key")]

    def __str__(self) -> str:
        return f"draft {self.subject!r} by {self.owner_id}"


class DraftAttachment(models.Model):
    draft = models.ForeignKey(Draft, on_delete=models.CASCADE, related_name="attachments")
    blob = models.ForeignKey("attachments.Blob", on_delete=models.PROTECT, related_name="draft_uses")
    name = models.CharField(max_length=255)
    content_type = models.CharField(max_length=127)
    size = models.BigIntegerField()
    added_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["added_at", "pk"]

    def __str__(self) -> str:
        return f"{self.name} ({self.size} bytes)"


class Complaint(models.Model):
    """A recipient domain judged one of our messages spam (docs/protocol.md §5.8): one per (message, domain).

    ``weight`` is what counts against the sender: the reports told, at least one
    (a verdict is a complaint) and at most the domain's accepted recipients of the
    message (a domain cannot complain for more readers than it had). An
    ``overturned`` report retracts it. Who reported is never known here.
    """

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="complaints")
    sender = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="complaints")
    domain = models.CharField(max_length=253, help_text="The recipient domain that reported.")
    reports = models.PositiveIntegerField(help_text="Spam reports at that domain, as it told us.")
    weight = models.PositiveIntegerField(help_text="What counts against the sender.")
    reported_at = models.DateTimeField(help_text="When the domain reached its latest verdict applied here.")
    received_at = models.DateTimeField(default=timezone.now)
    retracted_at = models.DateTimeField(null=True, blank=True, help_text="When the domain overturned its verdict.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["message", "domain"], name="one_complaint_per_domain")]
        indexes = [models.Index(fields=["sender", "received_at"], name="complaint_by_sender")]

    def __str__(self) -> str:
        state = "retracted" if self.retracted_at else f"{self.weight} complaint(s)"
        return f"{self.domain} on {self.message_id}: {state}"


class SendingPause(models.Model):
    """A local sender's sending is paused by their complaints until a domain admin lifts it."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sending_pauses")
    reason = models.CharField(max_length=300)
    paused_at = models.DateTimeField(default=timezone.now)
    lifted_at = models.DateTimeField(null=True, blank=True)
    lifted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user"], condition=models.Q(lifted_at__isnull=True), name="one_active_pause_per_sender"
            )
        ]

    def __str__(self) -> str:
        return f"{self.user} paused: {self.reason}" + (" (lifted)" if self.lifted_at else "")
