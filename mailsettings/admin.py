"""The job rows of mail settings, read-only: what was replied and forwarded, and why not."""

from django.contrib import admin
from django.http import HttpRequest

from .models import Forward, VacationReply


class _JobAdmin(admin.ModelAdmin):
    list_display = ("__str__", "state", "created_at", "attempts", "last_error")
    list_filter = ("state",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(VacationReply)
class VacationReplyAdmin(_JobAdmin):
    search_fields = ("correspondent",)


@admin.register(Forward)
class ForwardAdmin(_JobAdmin):
    search_fields = ("to",)
