"""Lists in the admin: each list with its subscribers per domain and its issues, subscribers to remove,
and readers' subscriptions (job rows) read-only. A domain admin sees their domain's rows."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html_join

from accounts.admin_scope import DomainScopedAdmin, DomainScopedInline

from . import selectors, services
from .models import Issue, Newsletter, Subscriber, SubscriberState, Subscription


class NewsletterForm(forms.ModelForm):
    class Meta:
        model = Newsletter
        fields = ["owner", "address", "name", "description", "slug"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.instance.pk is None and not self.errors:
            try:
                # The same checks as a user's: an address on a hosted domain, not a mailbox, a free slug.
                services.check_new_newsletter(address=data["address"], name=data["name"], slug=data["slug"])
            except ValidationError as exc:
                raise ValidationError(exc.messages) from exc
        return data


class IssueInline(DomainScopedInline):
    model = Issue
    fields = ["published_at", "message"]
    readonly_fields = ["published_at", "message"]
    extra = 0
    can_delete = False
    show_change_link = False


@admin.register(Newsletter)
class NewsletterAdmin(DomainScopedAdmin):
    form = NewsletterForm
    domain_lookup = "owner__domain"
    list_display = ["name", "address", "owner", "slug", "active_subscribers"]
    search_fields = ["name", "address", "owner__email"]
    raw_id_fields = ["owner"]
    readonly_fields = ["subscribers_per_domain"]
    inlines = [IssueInline]

    @admin.display(description="active subscribers")
    def active_subscribers(self, obj: Newsletter) -> int:
        return obj.subscribers.filter(state=SubscriberState.ACTIVE).count()

    @admin.display(description="active subscribers per domain")
    def subscribers_per_domain(self, obj: Newsletter) -> str:
        rows = selectors.subscriber_counts(newsletter=obj) if obj.pk else []
        return format_html_join(", ", "{}: {}", rows) or "none"


@admin.action(description="Remove from the list (no more issues go to them)", permissions=["change"])
def remove_subscribers(modeladmin: SubscriberAdmin, request: HttpRequest, queryset: QuerySet[Subscriber]) -> None:
    for subscriber_id in queryset.values_list("pk", flat=True):
        services.remove_subscriber(subscriber_id=subscriber_id)
    messages.success(request, f"{queryset.count()} subscriber(s) removed.")


@admin.register(Subscriber)
class SubscriberAdmin(DomainScopedAdmin):
    domain_lookup = "newsletter__owner__domain"
    domain_admin_can_change = True
    list_display = ["address", "newsletter", "domain", "state", "legacy", "subscribed_at", "changed_at"]
    list_filter = ["state", "legacy", "newsletter"]
    search_fields = ["address", "domain"]
    readonly_fields = [
        "newsletter",
        "address",
        "domain",
        "state",
        "legacy",
        "requested_at",
        "subscribed_at",
        "changed_at",
        "confirmation_sent_at",
    ]
    exclude = ["token"]  # the secret of the subscriber's unsubscribe link: not shown, not edited
    actions = [remove_subscribers]

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False  # only a subscriber's own instance, or their confirmation by mail, subscribes them


@admin.register(Subscription)
class SubscriptionAdmin(DomainScopedAdmin):
    """A reader's side of a subscription: a job row, moved only by its state graph."""

    domain_lookup = "owner__domain"
    list_display = ["list_address", "owner", "state", "attempts", "next_attempt_at", "last_error"]
    list_filter = ["state"]
    search_fields = ["list_address", "owner__email"]
    list_select_related = ["owner"]

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
