from django.contrib import admin, messages

from .models import InboxEntry, RemoteMessage


@admin.action(description="Fetch now")
def fetch_now(modeladmin, request, queryset):
    from .services import request_fetch

    for remote_id in queryset.values_list("pk", flat=True):
        request_fetch(remote_id=remote_id, now=True)
    messages.success(request, "Fetch queued.")


@admin.register(RemoteMessage)
class RemoteMessageAdmin(admin.ModelAdmin):
    list_display = ["subject", "sender", "origin_domain", "state", "attempts", "next_attempt_at", "fetched_at"]
    list_filter = ["state", "origin_domain"]
    search_fields = ["subject", "sender", "global_id"]
    exclude = ["content"]
    actions = [fetch_now]


@admin.register(InboxEntry)
class InboxEntryAdmin(admin.ModelAdmin):
    list_display = ["subject", "owner", "sender", "state", "read", "received_at"]
    list_filter = ["state", "read"]
    search_fields = ["subject", "sender", "owner__email"]
    raw_id_fields = ["owner", "remote", "local"]
