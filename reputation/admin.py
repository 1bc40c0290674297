from django.contrib import admin

from .models import OriginPolicy, Read


@admin.register(OriginPolicy)
class OriginPolicyAdmin(admin.ModelAdmin):
    list_display = ["domain", "blocked", "rate_per_minute", "updated_at"]
    list_filter = ["blocked"]
    search_fields = ["domain"]


@admin.register(Read)
class ReadAdmin(admin.ModelAdmin):
    list_display = ["message", "reader", "read_at"]
