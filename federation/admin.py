from django.contrib import admin
from django.http import HttpRequest

from accounts.admin_scope import DomainScopedAdmin

from .models import SigningKey


@admin.register(SigningKey)
class SigningKeyAdmin(DomainScopedAdmin):
    """Ed25519 keys the domains sign with. Rotate with `manage.py rotatekey`; private keys never show here."""

    list_display = ["key_id", "domain", "created_at", "retired_at", "expires_at"]
    list_filter = ["domain"]
    search_fields = ["key_id", "domain__name", "public_key"]
    date_hierarchy = "created_at"
    list_select_related = ["domain"]
    exclude = ["private_key"]
    readonly_fields = ["domain", "key_id", "public_key", "created_at", "retired_at", "expires_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
