from django.contrib import admin

from .models import OriginPolicy, Read
from .services import forget_policy


@admin.register(OriginPolicy)
class OriginPolicyAdmin(admin.ModelAdmin):
    """Peers: block a sending domain, or cap how many notifications it may send per minute."""

    list_display = ["domain", "blocked", "rate_per_minute", "note", "updated_at"]
    list_editable = ["blocked", "rate_per_minute"]
    list_filter = ["blocked"]
    search_fields = ["domain", "note"]

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        super().save_model(request, obj, form, change)
        # Other web processes see the change within seconds; this one at once.
        forget_policy(obj.domain)

    def delete_model(self, request, obj):  # type: ignore[no-untyped-def]
        super().delete_model(request, obj)
        forget_policy(obj.domain)

    def delete_queryset(self, request, queryset):  # type: ignore[no-untyped-def]
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
