from django.contrib import admin

from .models import OriginPolicy, Read
from .services import forget_policy


@admin.register(OriginPolicy)
class OriginPolicyAdmin(admin.ModelAdmin):
    list_display = ["domain", "blocked", "rate_per_minute", "updated_at"]
    list_filter = ["blocked"]
    search_fields = ["domain"]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        # Other web processes see the change within seconds; this one at once.
        forget_policy(obj.domain)


@admin.register(Read)
class ReadAdmin(admin.ModelAdmin):
    list_display = ["message", "reader", "read_at"]
