from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest

from accounts.admin_scope import DomainScopedAdmin, DomainScopedInline
from accounts.http import AuthedRequest
from accounts.models import User

from .models import Campaign, CampaignMessage, OriginPolicy, Read, SpamReport, SpamVerdict
from .services import forget_policy, overturn_verdict


@admin.register(OriginPolicy)
class OriginPolicyAdmin(admin.ModelAdmin):
    """Peers: block a sending domain, or cap how many notifications it may send per minute."""

    list_display = ["domain", "blocked", "rate_per_minute", "note", "updated_at"]
    list_editable = ["blocked", "rate_per_minute"]
    list_filter = ["blocked"]
    search_fields = ["domain", "note"]

    def save_model(self, request: HttpRequest, obj: OriginPolicy, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        # Other web processes see the change within seconds; this one at once.
        forget_policy(obj.domain)

    def delete_model(self, request: HttpRequest, obj: OriginPolicy) -> None:
        super().delete_model(request, obj)
        forget_policy(obj.domain)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[OriginPolicy]) -> None:
        domains = list(queryset.values_list("domain", flat=True))
        super().delete_queryset(request, queryset)
        for domain in domains:
            forget_policy(domain)


@admin.register(Read)
class ReadAdmin(admin.ModelAdmin):
    list_display = ["message", "reader", "read_at"]
    search_fields = ["reader__email", "message__subject", "message__sender"]
    date_hierarchy = "read_at"
    list_select_related = ["message", "reader"]
    raw_id_fields = ["message", "reader"]


@admin.register(SpamVerdict)
class SpamVerdictAdmin(DomainScopedAdmin):
    """Messages this instance judged spam from its users' reports; overturning one puts the hidden copies back.

    A domain admin sees the verdicts on mail to their domain and may overturn them.
    """

    list_display = [
        "message",
        "campaign",
        "reason",
        "reports",
        "weight",
        "readers",
        "hidden",
        "judged_at",
        "overturned_at",
    ]
    list_filter = ["overturned_at"]
    search_fields = ["message__sender", "message__subject", "message__origin_domain"]
    list_select_related = ["message", "campaign"]
    raw_id_fields = ["message", "overturned_by"]
    readonly_fields = [
        "message",
        "campaign",
        "reports",
        "weight",
        "readers",
        "reason",
        "hidden",
        "judged_at",
        "overturned_at",
        "overturned_by",
    ]
    actions = ["overturn"]

    def scope(self, request: AuthedRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(message__local_domain=request.user.domain.name)

    @admin.action(description="Overturn: not spam, put every hidden copy back")
    def overturn(self, request: HttpRequest, queryset: QuerySet[SpamVerdict]) -> None:
        user = request.user if isinstance(request.user, User) else None
        restored = sum(overturn_verdict(verdict_id=pk, by=user) for pk in queryset.values_list("pk", flat=True))
        self.message_user(request, f"Overturned; {restored} hidden copies are back where they were.")


@admin.register(SpamReport)
class SpamReportAdmin(admin.ModelAdmin):
    list_display = ["message", "reporter", "spam", "reported_at"]
    list_filter = ["spam"]
    list_select_related = ["message", "reporter"]
    raw_id_fields = ["message", "reporter"]


class CampaignMessageInline(DomainScopedInline):
    model = CampaignMessage
    fields = ("message", "sender", "subject", "received_at", "spam_verdict", "fingerprint")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[CampaignMessage]:
        return super().get_queryset(request).select_related("message")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="sender")
    def sender(self, obj: CampaignMessage) -> str:
        return obj.message.sender

    @admin.display(description="subject")
    def subject(self, obj: CampaignMessage) -> str:
        return obj.message.subject

    @admin.display(description="received")
    def received_at(self, obj: CampaignMessage) -> Any:
        return obj.message.received_at

    @admin.display(description="judged spam")
    def spam_verdict(self, obj: CampaignMessage) -> str:
        return obj.message.spam_verdict


@admin.register(Campaign)
class CampaignAdmin(DomainScopedAdmin):
    """Runs of alike messages (reputation.campaigns): their messages, reports and state; overturn a verdict.

    A domain admin sees the campaigns of mail to their domain. Overturning puts every copy the
    campaign's verdict hid back where it was, and its new messages go to the Inbox again.
    """

    list_display = [
        "__str__",
        "origin_domain",
        "sender",
        "messages",
        "spam_reports",
        "not_spam",
        "state",
        "first_seen_at",
    ]
    list_filter = ["verdict__overturned_at"]
    search_fields = ["origin_domain", "sender", "subject_key", "members__message__sender"]
    readonly_fields = [
        "origin_domain",
        "sender",
        "subject_key",
        "subject_shape",
        "size_bucket",
        "local_domain",
        "first_seen_at",
        "state",
    ]
    inlines = [CampaignMessageInline]
    actions = ["overturn"]

    def scope(self, request: AuthedRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(local_domain=request.user.domain.name)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Campaign]:
        reports = "members__message__spam_reports"
        return (
            super()
            .get_queryset(request)
            .select_related("verdict")
            .annotate(
                message_count=Count("members", distinct=True),
                spam_count=Count(f"{reports}__reporter", filter=Q(**{f"{reports}__spam": True}), distinct=True),
                not_spam_count=Count(f"{reports}__reporter", filter=Q(**{f"{reports}__spam": False}), distinct=True),
            )
        )

    @admin.display(description="messages", ordering="message_count")
    def messages(self, obj: Any) -> int:
        return int(obj.message_count)

    @admin.display(description="spam reports", ordering="spam_count")
    def spam_reports(self, obj: Any) -> int:
        return int(obj.spam_count)

    @admin.display(description="not spam", ordering="not_spam_count")
    def not_spam(self, obj: Any) -> int:
        return int(obj.not_spam_count)

    @admin.display(description="state")
    def state(self, obj: Campaign) -> str:
        verdict = getattr(obj, "verdict", None)
        if verdict is None:
            return "open"
        if verdict.overturned_at is not None:
            return f"overturned ({verdict.reason})"
        return f"judged spam: {verdict.reason}; {verdict.hidden} copies hidden"

    @admin.action(description="Overturn: not spam, put every hidden copy of its messages back")
    def overturn(self, request: HttpRequest, queryset: QuerySet[Campaign]) -> None:
        user = request.user if isinstance(request.user, User) else None
        verdicts = SpamVerdict.objects.filter(campaign__in=queryset.values("pk"), overturned_at__isnull=True)
        restored = sum(overturn_verdict(verdict_id=pk, by=user) for pk in verdicts.values_list("pk", flat=True))
        self.message_user(request, f"Overturned; {restored} hidden copies are back where they were.")
