"""The gateway's spool, read-only: what is waiting to be filed, and what could not be, and why."""

from django.contrib import admin
from django.http import HttpRequest

from .models import SpooledMessage


@admin.register(SpooledMessage)
class SpooledMessageAdmin(admin.ModelAdmin):
    list_display = ("__str__", "state", "received_at", "mail_from", "client_ip", "size", "attempts", "last_error")
    list_filter = ("state",)
    search_fields = ("mail_from", "client_ip")
    exclude = ("head",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
