"""Lists on both sides: a list and its subscribers at the list's instance, a reader's subscription at theirs.

The list's instance records a subscriber only from a signed request of the subscriber's own
domain (docs/protocol.md §13.2); the reader's instance keeps its side of every subscription
(``Subscription``, a job row: its states are in newsletters/states.py) and delivers an issue
only to its subscribers of record, whatever the list claims.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Newsletter(models.Model):
    """A list: an address on a hosted domain, owned by a mailbox, with a public page at /n/<slug>/."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="newsletters")
    address = models.EmailField(unique=True, help_text="The list's address, e.g. news@alpha.example.")
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True, max_length=2000)
    slug = models.SlugField(max_length=60, unique=True, help_text="The public page: /n/<slug>/.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} <{self.address}>"


class SubscriberState(models.TextChoices):
    CONFIRMING = "confirming"  # an ordinary address: the confirmation mail is out, not confirmed yet
    ACTIVE = "active"
    PAUSED = "paused"
    UNSUBSCRIBED = "unsubscribed"


class Subscriber(models.Model):
    """A subscriber of record at the list's instance, as its own instance last set it (signed).

    A subscriber at an ordinary mail domain (``legacy``: no Pushmail instance of its own) is recorded
    from the public page in state ``confirming`` and counts only once they followed the link of the
    confirmation mail; each issue reaches them by SMTP, with a one-click unsubscribe link naming
    ``token`` (RFC 8058).
    """

    newsletter = models.ForeignKey(Newsletter, on_delete=models.CASCADE, related_name="subscribers")
    address = models.CharField(max_length=320)
    domain = models.CharField(max_length=253)
    state = models.CharField(max_length=12, choices=SubscriberState.choices)
    requested_at = models.DateTimeField(help_text="The subscriber's instance's time of the request in force.")
    subscribed_at = models.DateTimeField(auto_now_add=True)
    changed_at = models.DateTimeField(auto_now=True)
    legacy = models.BooleanField(
        "by mail", default=False, db_default=False, help_text="At an ordinary mail domain: issues go to it by SMTP."
    )
    token = models.CharField(
        max_length=64,
        null=True,
        blank=True,
        unique=True,
        help_text="The secret of its one-click unsubscribe link (an ordinary address only).",
    )
    confirmation_sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["newsletter", "address"], name="unique_subscriber_per_list")]
        indexes = [models.Index(fields=["newsletter", "state", "domain"], name="subscriber_domains")]

    def __str__(self) -> str:
        return f"{self.address} ({self.state})"


class Issue(models.Model):
    """One issue of a list: the sent message (outbox), kept for the archive and the feed."""

    newsletter = models.ForeignKey(Newsletter, on_delete=models.CASCADE, related_name="issues")
    message = models.OneToOneField("outbox.Message", on_delete=models.CASCADE, related_name="issue")
    published_at = models.DateTimeField()

    class Meta:
        ordering = ["-published_at"]

    def __str__(self) -> str:
        return f"{self.newsletter.name}: {self.message.subject}"


class SubscriptionState(models.TextChoices):
    PENDING = "pending"  # subscribe asked, not acknowledged yet
    ACTIVE = "active"
    PAUSING = "pausing"
    PAUSED = "paused"
    RESUMING = "resuming"
    UNSUBSCRIBING = "unsubscribing"
    UNSUBSCRIBED = "unsubscribed"
    REFUSED = "refused"  # the list's instance refused it for good (no such list)


class Subscription(models.Model):
    """A reader's side of a subscription (a job row: newsletters/states.py). The request is retried until
    the list's instance acknowledges it; only then is the new state shown as done."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="subscriptions")
    list_address = models.CharField(max_length=320)
    list_name = models.CharField(max_length=100, blank=True)
    state = models.CharField(max_length=13, choices=SubscriptionState.choices, default=SubscriptionState.PENDING)
    requested_at = models.DateTimeField(help_text="When the reader asked for the state being sent.")
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    last_issue_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "list_address"], name="unique_subscription_per_list")]
        indexes = [models.Index(fields=["list_address", "state"], name="subscription_list_state")]

    def __str__(self) -> str:
        return f"{self.owner_id} → {self.list_address} ({self.state})"
