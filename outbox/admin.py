from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.http import HttpRequest
from django.utils import timezone

from accounts.admin_scope import DomainScopedAdmin, DomainScopedInline, ProtocolRecordAdmin, is_domain_admin
from pushmail_site.states import transition_rows

from . import complaints
from .delivery import queue_deliveries, reopen_smtp_recipients
from .models import (
    AttachmentFetch,
    BodyFetch,
    Complaint,
    Delivery,
    DeliveryState,
    Draft,
    Message,
    MessageAttachment,
    Recipient,
    SendingPause,
    Withdrawal,
)
from .states import DELIVERY


class RecipientInline(DomainScopedInline):
    model = Recipient
    extra = 0
    readonly_fields = ["address", "domain", "kind", "status", "reason"]
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class DeliveryInline(DomainScopedInline):
    model = Delivery
    extra = 0
    fields = readonly_fields = ("domain", "local", "state", "attempts", "notified_at", "failed_at", "last_error")
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class WithdrawalInline(DomainScopedInline):
    model = Withdrawal
    extra = 0
    fields = readonly_fields = ("domain", "state", "attempts", "next_attempt_at", "acknowledged_at", "last_error")
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class BodyFetchInline(DomainScopedInline):
    model = BodyFetch
    extra = 0
    readonly_fields = ["domain", "fetched_at", "bytes"]
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class MessageAttachmentInline(admin.TabularInline):
    """On a sent message: its files, and how many times recipient domains fetched each. Read-only."""

    model = MessageAttachment
    extra = 0
    fields = readonly_fields = ["position", "name", "content_type", "size", "blob", "fetch_count"]  # type: ignore[assignment]
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[MessageAttachment]:
        return super().get_queryset(request).select_related("blob").annotate(n_fetches=Count("fetches"))

    @admin.display(description="fetches")
    def fetch_count(self, obj: Any) -> int:
        return getattr(obj, "n_fetches", 0)


@admin.register(AttachmentFetch)
class AttachmentFetchAdmin(ProtocolRecordAdmin):
    """Attachments served to recipient domains (sender side). Read-only: a log."""

    domain_lookup = "attachment__message__sender__domain"

    list_display = ["attachment", "domain", "fetched_at", "bytes"]
    list_filter = ["domain"]
    search_fields = ["domain", "attachment__name", "=attachment__message__id"]
    date_hierarchy = "fetched_at"
    list_select_related = ["attachment"]


@admin.register(Message)
class MessageAdmin(DomainScopedAdmin):
    """Sent messages: who, when, where they went and who fetched them. Bodies stay out of the admin."""

    domain_lookup = "sender__domain"

    list_display = ["subject", "sender_address", "date", "size", "withdrawn_at", "fetched_by_all_at"]
    search_fields = ["subject", "sender_address", "=message_id", "=id"]
    list_filter = ["sender__domain", "sender_folder"]
    date_hierarchy = "date"
    inlines = [RecipientInline, DeliveryInline, WithdrawalInline, BodyFetchInline, MessageAttachmentInline]
    exclude = ["text", "html"]
    readonly_fields = [
        "id",
        "sender",
        "sender_address",
        "subject",
        "to",
        "cc",
        "bcc",
        "message_id",
        "in_reply_to",
        "references",
        "thread_key",
        "date",
        "size",
        "digest",
        "expires_at",
        "withdrawn_at",
        "fetched_by_all_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # messages are sent by their senders (webmail or API), never typed in here


@admin.action(description="Retry notification now", permissions=["act"])
def retry_now(modeladmin: DeliveryAdmin, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
    ids = transition_rows(
        queryset.filter(local=False),
        DELIVERY,
        DeliveryState.RETRYING,
        fields={"next_attempt_at": timezone.now(), "failed_at": None},
    )
    reopen_smtp_recipients(ids)
    queue_deliveries(ids)
    messages.success(request, f"{len(ids)} deliveries queued.")


@admin.register(Delivery)
class DeliveryAdmin(ProtocolRecordAdmin):
    """One notification per message and recipient domain."""

    domain_lookup = "message__sender__domain"

    list_display = [
        "message",
        "domain",
        "local",
        "transport",
        "state",
        "attempts",
        "notified_at",
        "next_attempt_at",
        "failed_at",
        "last_error",
        "smtp_reply",
        "withdrawal",
    ]
    list_filter = ["state", "transport", "local", "domain"]
    search_fields = ["domain", "message__subject", "message__sender_address", "=message__id", "last_error"]
    date_hierarchy = "notified_at"
    list_select_related = ["message"]
    raw_id_fields = ["message"]
    actions = [retry_now]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        withdrawal = Withdrawal.objects.filter(message=OuterRef("message"), domain=OuterRef("domain"))
        return super().get_queryset(request).annotate(withdrawal_state=Subquery(withdrawal.values("state")[:1]))

    @admin.display(description="withdrawal", ordering="withdrawal_state")
    def withdrawal(self, delivery: Any) -> str:
        return delivery.withdrawal_state or "none"


@admin.register(Withdrawal)
class WithdrawalAdmin(ProtocolRecordAdmin):
    """One withdrawal per withdrawn message and recipient domain that may have been told about it."""

    domain_lookup = "message__sender__domain"

    list_display = ["message", "domain", "state", "attempts", "next_attempt_at", "acknowledged_at", "last_error"]
    list_filter = ["state", "domain"]
    search_fields = ["domain", "message__subject", "message__sender_address", "=message__id", "last_error"]
    list_select_related = ["message"]
    raw_id_fields = ["message"]


@admin.register(BodyFetch)
class BodyFetchAdmin(ProtocolRecordAdmin):
    """Each time a recipient domain pulled a body: the sender side's view of reads (per domain, never per user)."""

    domain_lookup = "message__sender__domain"

    list_display = ["message", "domain", "fetched_at", "bytes"]
    list_filter = ["domain"]
    search_fields = ["domain", "message__subject", "message__sender_address", "=message__id"]
    date_hierarchy = "fetched_at"
    list_select_related = ["message"]
    raw_id_fields = ["message"]


@admin.register(Draft)
class DraftAdmin(DomainScopedAdmin):
    domain_lookup = "owner__domain"
    list_display = ["subject", "owner", "state", "updated_at", "send_at"]
    search_fields = ["subject", "owner__email"]
    list_select_related = ["owner"]
    date_hierarchy = "updated_at"
    exclude = ["text"]
    raw_id_fields = ["owner", "sent_message"]


@admin.action(description="Lift the pause: let them send again", permissions=["lift"])
def lift_pauses(modeladmin: SendingPauseAdmin, request: HttpRequest, queryset: QuerySet[SendingPause]) -> None:
    lifted = sum(
        complaints.lift_pause(user=pause.user, by=request.user)  # type: ignore[arg-type]
        for pause in queryset.filter(lifted_at__isnull=True).select_related("user")
    )
    messages.success(request, f"{lifted} sender(s) may send again.")


class PausedFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("paused", "Paused"), ("lifted", "Lifted")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "paused":
            return queryset.filter(lifted_at__isnull=True)
        if self.value() == "lifted":
            return queryset.filter(lifted_at__isnull=False)
        return queryset


@admin.register(SendingPause)
class SendingPauseAdmin(DomainScopedAdmin):
    """Senders of this domain whose sending is paused by spam complaints; a domain admin lifts a pause."""

    domain_lookup = "user__domain"

    list_display = ["user", "reason", "paused_at", "lifted_at", "lifted_by"]
    list_filter = [PausedFilter]
    search_fields = ["user__email", "reason"]
    list_select_related = ["user", "lifted_by"]
    fields = readonly_fields = ("user", "reason", "paused_at", "lifted_at", "lifted_by")
    actions = [lift_pauses]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # made by complaints, never typed in here

    def has_lift_permission(self, request: HttpRequest) -> bool:
        return is_domain_admin(request) or request.user.has_perm("outbox.change_sendingpause")


@admin.register(Complaint)
class ComplaintAdmin(DomainScopedAdmin):
    """Spam complaints from recipient domains about mail sent from here. Read-only: who reported is never known."""

    domain_lookup = "sender__domain"

    list_display = ["message", "sender", "domain", "reports", "weight", "reported_at", "received_at", "retracted_at"]
    list_filter = ["domain"]
    search_fields = ["domain", "sender__email", "=message__id"]
    date_hierarchy = "received_at"
    list_select_related = ["message", "sender"]
    raw_id_fields = ["message", "sender"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
