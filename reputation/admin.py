from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.admin_scope import DomainScopedAdmin
from accounts.http import AuthedRequest
from accounts.models import User

from .models import ContentCheck, OriginPolicy, Read, SpamReport, SpamVerdict
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

    list_display = ["message", "reason", "reports", "readers", "hidden", "judged_at", "overturned_at"]
    list_filter = ["overturned_at"]
    search_fields = ["message__sender", "message__subject", "message__origin_domain"]
    list_select_related = ["message"]
    raw_id_fields = ["message", "overturned_by"]
    readonly_fields = [
        "message",
        "reports",
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


@admin.register(ContentCheck)
class ContentCheckAdmin(DomainScopedAdmin):
    """What the content filter (rspamd) said about each fetched message, and what this instance did with it.

    Checks show rspamd's score, action and the rules that matched; a decision names the verdict it led
    to (overturned, like any verdict, under "Spam verdicts"). Lessons are the reports rspamd learned from.
    A domain admin sees the rows for mail to their domain.
    """

    list_display = ["message", "kind", "state", "score", "required_score", "action", "top_symbols", "decision"]
    list_filter = ["kind", "state", "action", ("decision", admin.EmptyFieldListFilter)]
    search_fields = ["message__sender", "message__subject", "message__origin_domain", "decision"]
    list_select_related = ["message"]
    date_hierarchy = "created_at"
    readonly_fields = [
        "message",
        "kind",
        "state",
        "score",
        "required_score",
        "action",
        "symbols",
        "decision",
        "attempts",
        "next_attempt_at",
        "last_error",
        "created_at",
        "done_at",
    ]

    def scope(self, request: AuthedRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(message__local_domain=request.user.domain.name)

    @admin.display(description="Rules that matched")
    def top_symbols(self, obj: ContentCheck) -> str:
        """The rules that weighed most, strongest first."""
        weighed = sorted((obj.symbols or {}).items(), key=lambda item: -abs(float(item[1] or 0)))
        return ", ".join(f"{name} {float(score):+g}" for name, score in weighed[:5] if score)
