"""Read counts per message and policy per origin domain."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Read(models.Model):
    """A local reader opened a remote message. Counting rows gives readers per message."""

    message = models.ForeignKey("mailbox.RemoteMessage", on_delete=models.CASCADE, related_name="reads")
    reader = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    read_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["message", "reader"], name="one_read_per_reader")]


class OriginPolicy(models.Model):
    """What a domain admin decided about a peer domain."""

    domain = models.CharField(max_length=253, unique=True)
    blocked = models.BooleanField(default=False, help_text="Refuse every notification from this domain.")
    rate_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Notifications accepted per minute; empty uses the instance default."
    )
    note = models.CharField(max_length=300, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "origin policies"

    def __str__(self) -> str:
        return self.domain + (" (blocked)" if self.blocked else "")


class SpamReport(models.Model):
    """A local reader's "Report spam" (``spam``) or "Not spam" on a remote message: one per reader."""

    message = models.ForeignKey("mailbox.RemoteMessage", on_delete=models.CASCADE, related_name="spam_reports")
    reporter = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    spam = models.BooleanField(default=True)
    reported_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["message", "reporter"], name="one_spam_report_per_reader")]

    def __str__(self) -> str:
        return f"{'spam' if self.spam else 'not spam'} by {self.reporter_id} on {self.message_id}"


class SpamVerdict(models.Model):
    """This instance judged a remote message spam for every local recipient; a domain admin can overturn it."""

    message = models.OneToOneField("mailbox.RemoteMessage", on_delete=models.CASCADE, related_name="spam_verdict_row")
    reports = models.PositiveIntegerField(help_text="Spam reports when the verdict was reached.")
    readers = models.PositiveIntegerField(help_text="Local users who had opened or reported it then.")
    reason = models.CharField(max_length=300)
    judged_at = models.DateTimeField(auto_now_add=True)
    hidden = models.PositiveIntegerField(default=0, help_text="Unopened copies the verdict moved to Spam.")
    overturned_at = models.DateTimeField(null=True, blank=True)
    overturned_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    def __str__(self) -> str:
        return f"{self.message_id}: {self.reason}" + (" (overturned)" if self.overturned_at else "")


# --- Reputation of senders and origins (reputation/scores.py keeps these up to date) ----------


class OriginReputation(models.Model):
    """What this instance's users have made of one origin domain's mail, and what that decided.

    The counters are kept up to date as things happen (reputation/scores.py); the score and the
    decisions are recomputed from them, never from the history.
    """

    domain = models.CharField(max_length=253, unique=True)
    reads = models.PositiveIntegerField(default=0, db_default=0, help_text="Local readers who opened its mail.")
    replies = models.PositiveIntegerField(default=0, db_default=0, help_text="Local users who wrote to it.")
    spam_reports = models.PositiveIntegerField(default=0, db_default=0)
    not_spam = models.PositiveIntegerField(default=0, db_default=0)
    outages = models.PositiveIntegerField(
        default=0, db_default=0, help_text="Times it stopped answering while holding unopened mail for users here."
    )
    downtime_seconds = models.PositiveBigIntegerField(
        default=0, db_default=0, help_text="Unreachable time of its past outages (the current one aside)."
    )
    last_reached_at = models.DateTimeField(null=True, blank=True)
    unreachable_since = models.DateTimeField(null=True, blank=True)
    gone = models.BooleanField(
        default=False, db_default=False, help_text="Unreachable for PUSHMAIL_ORIGIN_GONE_AFTER_HOURS with mail unread."
    )
    users_notified = models.PositiveIntegerField(
        default=0, db_default=0, help_text="Local users holding unopened mail from it, when last checked."
    )
    score = models.FloatField(default=0.5, db_default=0.5)
    pinned_score = models.FloatField(
        null=True, blank=True, help_text="An admin's score for this origin, used instead of the computed one."
    )
    spam_filed = models.BooleanField(default=False, db_default=False, help_text="Its new mail goes to Spam.")
    refused = models.BooleanField(default=False, db_default=False, help_text="Its notifications are refused.")
    reports_at_lift = models.PositiveIntegerField(
        default=0, db_default=0, help_text="Spam reports when an admin last lifted its decisions."
    )
    dirty = models.BooleanField(default=False, db_default=False, help_text="Counters changed since the last score.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["dirty"], condition=models.Q(dirty=True), name="origin_rep_dirty")]

    def __str__(self) -> str:
        return self.domain


class SenderReputation(models.Model):
    """The same for one sender address (no reachability: that belongs to its origin)."""

    address = models.CharField(max_length=320, unique=True)
    domain = models.CharField(max_length=253, db_index=True)
    reads = models.PositiveIntegerField(default=0, db_default=0)
    replies = models.PositiveIntegerField(default=0, db_default=0)
    spam_reports = models.PositiveIntegerField(default=0, db_default=0)
    not_spam = models.PositiveIntegerField(default=0, db_default=0)
    score = models.FloatField(default=0.5, db_default=0.5)
    pinned_score = models.FloatField(null=True, blank=True)
    allowed = models.BooleanField(
        default=False, db_default=False, help_text="An admin allowed this sender: never filed to Spam automatically."
    )
    spam_filed = models.BooleanField(default=False, db_default=False)
    reports_at_lift = models.PositiveIntegerField(default=0, db_default=0)
    dirty = models.BooleanField(default=False, db_default=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["dirty"], condition=models.Q(dirty=True), name="sender_rep_dirty")]

    def __str__(self) -> str:
        return self.address


class DecisionKind(models.TextChoices):
    SPAM = "spam", "New mail to Spam"
    RATE = "rate", "Rate lowered"
    REFUSED = "refused", "Notifications refused"
    GONE = "gone", "Origin gone"


class ReputationDecision(models.Model):
    """A decision the scores made on their own, with its reason; it ends when the score recovers,
    or when an admin reverses it."""

    origin = models.ForeignKey(OriginReputation, on_delete=models.CASCADE, related_name="decisions")
    sender = models.ForeignKey(
        SenderReputation, null=True, blank=True, on_delete=models.CASCADE, related_name="decisions"
    )
    kind = models.CharField(max_length=7, choices=DecisionKind.choices)
    reason = models.CharField(max_length=400)
    score = models.FloatField()
    made_at = models.DateTimeField(auto_now_add=True)
    ended_at = models.DateTimeField(null=True, blank=True, help_text="The score recovered, or an admin reversed it.")
    reversed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-made_at", "-id"]
        constraints = [
            # At most one standing decision of a kind per origin (sender = NULL) or per sender.
            models.UniqueConstraint(
                fields=["origin", "kind"],
                condition=models.Q(ended_at__isnull=True, sender__isnull=True),
                name="one_standing_origin_decision",
            ),
            models.UniqueConstraint(
                fields=["sender", "kind"],
                condition=models.Q(ended_at__isnull=True, sender__isnull=False),
                name="one_standing_sender_decision",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.sender or self.origin}"
