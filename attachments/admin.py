"""Admin for attachment bytes (read-only, since a Blob's bytes are fixed by its digest) and received files' fetches."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from accounts.admin_scope import DomainScopedAdmin
from accounts.http import AuthedRequest

from .fetching import retry_now
from .models import AttachmentFetch, Blob, ReceivedAttachment
from .states import AttachmentFetchState


class _ReadOnly:
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Blob)
class BlobAdmin(_ReadOnly, admin.ModelAdmin):
    """Stored files, one per SHA-256. Read-only; search by the full or partial hex digest."""

    list_display = ["sha256", "size", "created_at", "uses"]
    search_fields = ["sha256"]
    date_hierarchy = "created_at"
    fields = readonly_fields = ("sha256", "size", "file", "created_at", "last_stored_at")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Blob]:
        return (
            super()
            .get_queryset(request)
            .annotate(n_messages=Count("message_uses", distinct=True), n_drafts=Count("draft_uses", distinct=True))
        )

    @admin.display(description="messages / drafts")
    def uses(self, obj: Any) -> str:
        return f"{getattr(obj, 'n_messages', 0)} / {getattr(obj, 'n_drafts', 0)}"

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Blob], search_term: str) -> Any:
        # Accept the wire form too: "sha-256:<hex>".
        return super().get_search_results(request, queryset, search_term.strip().removeprefix("sha-256:").lower())


@admin.register(AttachmentFetch)
class AttachmentFetchAdmin(_ReadOnly, admin.ModelAdmin):
    """Attachments served to recipient domains (sender side)."""

    list_display = ["attachment", "domain", "fetched_at", "bytes"]
    list_filter = ["domain"]
    search_fields = ["domain", "attachment__name", "=attachment__message__id"]
    date_hierarchy = "fetched_at"
    list_select_related = ["attachment"]


@admin.action(description="Retry now", permissions=["change"])
def retry_fetch_now(modeladmin: Any, request: HttpRequest, queryset: QuerySet[ReceivedAttachment]) -> None:
    """Fetches waiting for their next attempt are tried at once; the others are left as they are."""
    waiting = queryset.filter(state=AttachmentFetchState.UNAVAILABLE).values_list("pk", flat=True)
    moved = [job for job in (retry_now(job_id=pk) for pk in waiting) if job is not None]
    retried = sum(job.state == AttachmentFetchState.WANTED for job in moved)
    messages.success(request, f"{retried} fetch{'es' if retried != 1 else ''} queued now.")


@admin.register(ReceivedAttachment)
class ReceivedAttachmentAdmin(DomainScopedAdmin):
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

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False
