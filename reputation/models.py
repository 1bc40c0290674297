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
    weight = models.FloatField(
        default=1.0, help_text="What it counts for the sender's and origin's scores: its reporter's trust then."
    )
    reported_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["message", "reporter"], name="one_spam_report_per_reader")]

    def __str__(self) -> str:
        return f"{'spam' if self.spam else 'not spam'} by {self.reporter_id} on {self.message_id}"


class SpamVerdict(models.Model):
    """This instance judged a campaign spam for every local recipient; a domain admin can overturn it.

    ``message`` is the message whose report reached the verdict; ``campaign`` holds every message the
    verdict covers (empty only on verdicts from before campaigns, which covered ``message`` alone).
    """

    message = models.OneToOneField("mailbox.RemoteMessage", on_delete=models.CASCADE, related_name="spam_verdict_row")
    campaign = models.OneToOneField("Campaign", null=True, blank=True, on_delete=models.CASCADE, related_name="verdict")
    reports = models.PositiveIntegerField(help_text="Spam reports when the verdict was reached.")
    weight = models.FloatField(
        default=0, help_text="The reports' weighted sum, after 'not spam' and answering readers (reputation.trust)."
    )
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


class FeedbackVerdict(models.TextChoices):
    SPAM = "spam"
    OVERTURNED = "overturned"


class FeedbackState(models.TextChoices):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class FeedbackReport(models.Model):
    """A signed report to a message's origin that it was judged spam here, or that the verdict was
    overturned (docs/protocol.md §5.8): one per (message, verdict); the moves of its state are in reputation.states."""

    message = models.ForeignKey("mailbox.RemoteMessage", on_delete=models.CASCADE, related_name="feedback_reports")
    verdict = models.CharField(max_length=10, choices=FeedbackVerdict.choices)
    reports = models.PositiveIntegerField(help_text="Local spam reports on the message when the verdict was reached.")
    reported_at = models.DateTimeField()
    state = models.CharField(max_length=7, choices=FeedbackState.choices, default=FeedbackState.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    answer = models.CharField(max_length=40, blank=True, help_text="The origin's status: recorded, duplicate, …")
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["message", "verdict"], name="one_feedback_per_verdict")]
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="feedback_due")]

    def __str__(self) -> str:
        return f"{self.verdict} on {self.message_id} ({self.state})"


class ContentJobKind(models.TextChoices):
    CHECK = "check", "Check"
    LEARN_SPAM = "learn_spam", "Learn spam"
    LEARN_HAM = "learn_ham", "Learn ham"
    FUZZY_ADD = "fuzzy_add", "Add to fuzzy storage"
    FUZZY_DEL = "fuzzy_del", "Remove from fuzzy storage"


class ContentJobState(models.TextChoices):
    PENDING = "pending"
    RETRYING = "retrying"
    DONE = "done"
    FAILED = "failed"


class ContentCheck(models.Model):
    """A job for the content filter (rspamd) on one remote message: a check, or a lesson from a report.

    A check keeps rspamd's answer (score, required score, action, symbols) and what this instance
    decided from it; the moves of ``state`` are declared in reputation.states.
    """

    message = models.ForeignKey("mailbox.RemoteMessage", on_delete=models.CASCADE, related_name="content_checks")
    kind = models.CharField(max_length=10, choices=ContentJobKind.choices, default=ContentJobKind.CHECK)
    state = models.CharField(max_length=8, choices=ContentJobState.choices, default=ContentJobState.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    done_at = models.DateTimeField(null=True, blank=True)
    score = models.FloatField(null=True, blank=True)
    required_score = models.FloatField(null=True, blank=True, help_text="rspamd's score for the reject action.")
    action = models.CharField(max_length=20, blank=True, help_text="rspamd's action: no action, add header, reject…")
    symbols = models.JSONField(default=dict, blank=True, help_text="Rules that matched, with their scores.")
    decision = models.CharField(
        max_length=300,
        blank=True,
        help_text="What this instance did with the answer (a verdict's reason), if anything.",
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["message", "kind"], name="one_content_job_per_kind")]
        indexes = [models.Index(fields=["state", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} of {self.message_id} ({self.state})"


class Campaign(models.Model):
    """Notifications grouped as one run, from what is known before any fetch (see reputation.campaigns).

    Reports on any of its messages count for all of them, and a verdict covers them all.
    """

    origin_domain = models.CharField(max_length=253)
    sender = models.CharField(max_length=320, help_text="The first message's sender.")
    subject_key = models.CharField(max_length=200, help_text="The normalized subject: case, digits, spaces folded.")
    subject_shape = models.CharField(
        max_length=200, blank=True, help_text="The subject with its personal words folded; empty when too generic."
    )
    size_bucket = models.PositiveSmallIntegerField()
    local_domain = models.CharField(max_length=253, help_text="The hosted domain of its first message.")
    first_seen_at = models.DateTimeField(db_index=True)

    class Meta:
        indexes = [
            models.Index(fields=["origin_domain", "sender", "subject_key", "first_seen_at"], name="campaign_by_sender"),
            models.Index(fields=["origin_domain", "subject_shape", "first_seen_at"], name="campaign_by_shape"),
        ]

    def __str__(self) -> str:
        return f"{self.subject_key or '(no subject)'} from {self.origin_domain}"


class CampaignMessage(models.Model):
    """A remote message's place in a campaign; once its body is fetched, its text's fingerprint."""

    message = models.OneToOneField(
        "mailbox.RemoteMessage", primary_key=True, on_delete=models.CASCADE, related_name="campaign_link"
    )
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="members")
    joined_at = models.DateTimeField(auto_now_add=True)
    fingerprint = models.CharField(
        max_length=80, blank=True, help_text="TLSH of the text, or 'sha:' and a digest for texts too short for it."
    )
    fingerprinted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["campaign"], condition=~models.Q(fingerprint=""), name="campaign_fingerprints"),
        ]

    def __str__(self) -> str:
        return f"{self.message_id} in campaign {self.campaign_id}"


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
    spam_weight = models.FloatField(
        default=0, db_default=0.0, help_text="The spam reports weighted by their reporters' trust (reputation.trust)."
    )
    not_spam_weight = models.FloatField(default=0, db_default=0.0, help_text="The 'not spam' weighted the same way.")
    unsubscribes = models.PositiveIntegerField(
        default=0, db_default=0, help_text="Readers here who left one of its lists (newsletters)."
    )
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
    weight_at_lift = models.FloatField(
        default=0, db_default=0.0, help_text="Weighted spam reports when an admin last lifted its decisions."
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
    spam_weight = models.FloatField(
        default=0, db_default=0.0, help_text="The spam reports weighted by their reporters' trust (reputation.trust)."
    )
    not_spam_weight = models.FloatField(default=0, db_default=0.0, help_text="The 'not spam' weighted the same way.")
    unsubscribes = models.PositiveIntegerField(
        default=0, db_default=0, help_text="Readers here who left this list (when it is one)."
    )
    score = models.FloatField(default=0.5, db_default=0.5)
    pinned_score = models.FloatField(null=True, blank=True)
    allowed = models.BooleanField(
        default=False, db_default=False, help_text="An admin allowed this sender: never filed to Spam automatically."
    )
    spam_filed = models.BooleanField(default=False, db_default=False)
    reports_at_lift = models.PositiveIntegerField(default=0, db_default=0)
    weight_at_lift = models.FloatField(
        default=0, db_default=0.0, help_text="Weighted spam reports when an admin last lifted its decisions."
    )
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
