"""Admin for attachment bytes (read-only, since a Blob's bytes are fixed by its digest)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from .models import Blob


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
