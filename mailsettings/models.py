"""A user's own mail settings: filters, the vacation reply, contacts, and the jobs they start."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class FilterFolder(models.TextChoices):
    """Where a filter may move new mail (the Inbox is where it is already)."""

    ARCHIVE = "archive", "Archive"
    SPAM = "spam", "Spam"
    TRASH = "trash", "Trash"


class Filter(models.Model):
    """A rule for new mail: every condition given must match (words found, case ignored), then every action runs.

    Applied in ``position`` order as mail arrives; a later filter sees what an earlier one did
    (labels add up; the last folder wins).
    """

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="mail_filters")
    position = models.PositiveIntegerField(default=0)
    name = models.CharField(max_length=100, blank=True)
    # Conditions: empty means "any".
    from_contains = models.CharField(max_length=320, blank=True)
    to_contains = models.CharField(max_length=320, blank=True)
    subject_contains = models.CharField(max_length=200, blank=True)
    list_id_contains = models.CharField(max_length=250, blank=True)
    # Actions.
    label = models.ForeignKey("mailbox.Label", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    mark_read = models.BooleanField(default=False)
    star = models.BooleanField(default=False)
    move_to = models.CharField(max_length=7, choices=FilterFolder.choices, blank=True)
    forward_to = models.CharField(max_length=320, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["position", "pk"]
        indexes = [models.Index(fields=["owner", "position"], name="filter_owner_order")]

    def __str__(self) -> str:
        return self.name or f"filter {self.pk}"


class Vacation(models.Model):
    """A user's vacation reply: while on, the first message from each correspondent in the period is answered."""

    owner = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="vacation")
    enabled = models.BooleanField(default=False)
    subject = models.CharField(max_length=200, blank=True)
    text = models.TextField(max_length=5000, blank=True)
    starts_on = models.DateField(null=True, blank=True, help_text="Empty: from now.")
    ends_on = models.DateField(null=True, blank=True, help_text="Empty: until turned off.")
    #: Changes when the reply is turned on again: everyone gets one reply per period.
    period_started_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"vacation reply of {self.owner_id} ({'on' if self.enabled else 'off'})"


class AutoSendState(models.TextChoices):
    """The states of a vacation reply or a filter's forward; the moves are declared in mailsettings.states."""

    WAITING = "waiting"
    SENT = "sent"
    SKIPPED = "skipped"
    FAILED = "failed"


class VacationReply(models.Model):
    """One vacation reply owed or sent: at most one per correspondent per vacation period (the unique constraint)."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    correspondent = models.CharField(max_length=320)
    period_started_at = models.DateTimeField()
    in_reply_to = models.CharField(max_length=400, blank=True)
    subject = models.CharField(max_length=998, blank=True)
    state = models.CharField(max_length=7, choices=AutoSendState.choices, default=AutoSendState.WAITING)
    created_at = models.DateTimeField(auto_now_add=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    sent_message_id = models.UUIDField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "vacation replies"
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "correspondent", "period_started_at"], name="one_vacation_reply_per_period"
            )
        ]
        indexes = [
            models.Index(fields=["next_attempt_at"], condition=Q(state="waiting"), name="vacation_reply_due"),
        ]

    def __str__(self) -> str:
        return f"vacation reply to {self.correspondent} ({self.state})"


class Forward(models.Model):
    """A filter's forward of one received message to another address: sent once its body is here.

    A message from another instance is pulled on read: its body is at the sender's until
    fetched. The forward asks for the fetch (the sender sees a fetch, as for "fetch as soon as
    notified") and waits for the body; it fails if the body never comes (withdrawn, expired).
    """

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    entry = models.ForeignKey("mailbox.InboxEntry", on_delete=models.CASCADE, related_name="+")
    to = models.CharField(max_length=320)
    state = models.CharField(max_length=7, choices=AutoSendState.choices, default=AutoSendState.WAITING)
    created_at = models.DateTimeField(auto_now_add=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    sent_message_id = models.UUIDField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["entry", "to"], name="one_forward_per_entry_and_address")]
        indexes = [models.Index(fields=["next_attempt_at"], condition=Q(state="waiting"), name="forward_due")]

    def __str__(self) -> str:
        return f"forward of entry {self.entry_id} to {self.to} ({self.state})"


class Contact(models.Model):
    """An address-book row: one the user added or edited, or a correspondent they hid (``hidden``).

    Correspondents (people the user wrote to or replied to) are in the address book
    without a row; a row names them, or hides them.
    """

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="contacts")
    address = models.CharField(max_length=320)
    name = models.CharField(max_length=100, blank=True)
    hidden = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "address"]
        constraints = [models.UniqueConstraint(fields=["owner", "address"], name="unique_contact_per_owner")]

    def __str__(self) -> str:
        return f"{self.name} <{self.address}>" if self.name else self.address
