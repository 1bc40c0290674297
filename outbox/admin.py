from django.contrib import admin, messages
from django.utils import timezone

from .models import BodyFetch, Delivery, DeliveryState, Message, Recipient


class RecipientInline(admin.TabularInline):
    model = Recipient
    extra = 0
    readonly_fields = ["address", "domain", "kind", "status", "reason"]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["subject", "sender_address", "date", "size", "withdrawn_at", "body_purged_at"]
    search_fields = ["subject", "sender_address", "message_id"]
    list_filter = ["date"]
    inlines = [RecipientInline]
    readonly_fields = ["id", "digest", "size", "message_id"]


@admin.action(description="Retry notification now")
def retry_now(modeladmin, request, queryset):
    from .services import _queue_deliveries

    ids = list(
        queryset.filter(
            local=False, state__in=[DeliveryState.RETRYING, DeliveryState.PENDING, DeliveryState.FAILED]
        ).values_list("pk", flat=True)
    )
    queryset.filter(pk__in=ids).update(state=DeliveryState.RETRYING, next_attempt_at=timezone.now(), failed_at=None)
    _queue_deliveries(ids)
    messages.success(request, f"{len(ids)} deliveries queued.")


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ["message", "domain", "state", "attempts", "next_attempt_at", "last_error", "withdrawal"]
    list_filter = ["state", "withdrawal", "local"]
    search_fields = ["domain", "message__subject"]
    actions = [retry_now]


@admin.register(BodyFetch)
class BodyFetchAdmin(admin.ModelAdmin):
    list_display = ["message", "domain", "fetched_at", "bytes"]
    list_filter = ["domain"]
