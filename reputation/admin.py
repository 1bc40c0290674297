from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from .models import OriginPolicy, Read
from .services import forget_policy


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
