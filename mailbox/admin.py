from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.admin_scope import DomainScopedAdmin, ProtocolRecordAdmin
from accounts.http import AuthedRequest

from .attachment_fetching import retry_now as retry_attachment_fetch_now
from .models import AllowedSender, AttachmentFetchState, InboxEntry, Label, ReceivedAttachment, RemoteMessage
from .services import request_fetch


@admin.action(description="Fetch now", permissions=["act"])
def fetch_now(modeladmin: RemoteMessageAdmin, request: HttpRequest, queryset: QuerySet[RemoteMessage]) -> None:
    for remote_id in queryset.values_list("pk", flat=True):
        request_fetch(remote_id=remote_id, now=True)
    messages.success(request, "Fetch queued.")


@admin.register(RemoteMessage)
class RemoteMessageAdmin(ProtocolRecordAdmin):
    """Messages notified to this instance: one row per message, whatever the number of local readers."""

    def scope(self, request: AuthedRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(entries__owner__domain=request.user.domain_id).distinct()

    list_display = [
        "subject",
        "sender",
        "origin_domain",
        "local_domain",
        "size",
        "state",
        "attempts",
        "received_at",
        "next_attempt_at",
        "fetched_at",
    ]
    list_filter = ["state", "origin_domain", "local_domain"]
    search_fields = ["subject", "sender", "=global_id", "=message_id", "origin_domain"]
    date_hierarchy = "received_at"
    exclude = ["content"]  # body bytes: read them in the owner's webmail, not here
    readonly_fields = [
        "state",  # moved only along mailbox.states.FETCH, by the fetch and the actions
        "origin_domain",
        "global_id",
        "message_id",
        "sender",
        "subject",
        "date",
        "size",
        "digest",
        "in_reply_to",
        "references",
        "attachments",
        "expires_at",
        "local_domain",
        "received_at",
        "fetched_at",
        "last_attempt_at",
        "withdrawn_at",
    ]
    actions = [fetch_now]


@admin.register(InboxEntry)
class InboxEntryAdmin(ProtocolRecordAdmin):
    domain_lookup = "owner__domain"
    list_display = ["subject", "owner", "sender", "state", "folder", "read", "starred", "size", "received_at"]
    list_filter = ["state", "folder", "read", "starred", "has_attachments", "owner__domain"]
    search_fields = ["subject", "sender", "owner__email", "thread_key"]
    date_hierarchy = "received_at"
    list_select_related = ["owner"]
    raw_id_fields = ["owner", "remote", "local"]
    exclude = ["search_document"]  # holds the body text once fetched
    readonly_fields = ["state"]  # follows its message (mailbox.states), never set by hand
    filter_horizontal = ["labels"]


@admin.register(Label)
class LabelAdmin(DomainScopedAdmin):
    domain_lookup = "owner__domain"
    list_display = ["name", "owner"]
    search_fields = ["name", "owner__email"]
    list_select_related = ["owner"]
    raw_id_fields = ["owner"]


@admin.register(AllowedSender)
class AllowedSenderAdmin(DomainScopedAdmin):
    domain_lookup = "owner__domain"
    list_display = ["address", "owner", "created_at"]
    search_fields = ["address", "owner__email"]
    list_select_related = ["owner"]
    raw_id_fields = ["owner"]


@admin.action(description="Retry now", permissions=["act"])
def retry_fetch_now(modeladmin: Any, request: HttpRequest, queryset: QuerySet[ReceivedAttachment]) -> None:
    """Fetches waiting for their next attempt are tried at once; the others are left as they are."""
    waiting = queryset.filter(state=AttachmentFetchState.UNAVAILABLE).values_list("pk", flat=True)
    moved = [job for job in (retry_attachment_fetch_now(job_id=pk) for pk in waiting) if job is not None]
    retried = sum(job.state == AttachmentFetchState.WANTED for job in moved)
    messages.success(request, f"{retried} fetch{'es' if retried != 1 else ''} queued now.")


@admin.register(ReceivedAttachment)
class ReceivedAttachmentAdmin(ProtocolRecordAdmin):
    """Files of received messages: each one's fetch from its sender (recipient side), and its verified bytes."""

    def scope(self, request: AuthedRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(remote__entries__owner__domain=request.user.domain_id).distinct()

    list_display = ["__str__", "remote", "state", "attempts", "requested_at", "next_attempt_at", "fetched_at"]
    list_filter = ["state"]
    search_fields = ["=remote__global_id", "remote__origin_domain", "remote__subject"]
    list_select_related = ["remote"]
    date_hierarchy = "requested_at"
    actions = [retry_fetch_now]
    readonly_fields = [
        "remote",
        "position",
        "state",
        "blob",
        "requested_at",
        "attempts",
        "next_attempt_at",
        "last_attempt_at",
        "last_error",
        "fetched_at",
    ]
