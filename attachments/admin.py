"""Admin for attachment bytes: read-only, since a Blob's bytes are fixed by its digest."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from outbox.models import MessageAttachment

from .models import AttachmentFetch, Blob


class _ReadOnly:
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class AttachmentFetchInline(_ReadOnly, admin.TabularInline):
    model = AttachmentFetch
    extra = 0
    fields = readonly_fields = ["domain", "fetched_at", "bytes"]  # type: ignore[assignment]
    can_delete = False


class MessageAttachmentInline(_ReadOnly, admin.TabularInline):
    """On a sent message: its files, and which recipient domains fetched each (shown via the Blob)."""

    model = MessageAttachment
    extra = 0
    fields = readonly_fields = ["position", "name", "content_type", "size", "blob", "fetch_count"]  # type: ignore[assignment]
    can_delete = False
    show_change_link = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[MessageAttachment]:
        return super().get_queryset(request).select_related("blob").annotate(n_fetches=Count("fetches"))

    @admin.display(description="fetches")
    def fetch_count(self, obj: Any) -> int:
        return getattr(obj, "n_fetches", 0)


@admin.register(Blob)
class BlobAdmin(_ReadOnly, admin.ModelAdmin):
    """Stored files, one per SHA-256. Read-only; search by the full or partial hex digest."""

    list_display = ["sha256", "size", "created_at", "uses"]
    search_fields = ["sha256"]
    date_hierarchy = "created_at"
    fields = readonly_fields = ["sha256", "size", "file", "created_at", "last_stored_at"]  # type: ignore[assignment]

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
