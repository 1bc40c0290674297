from django.contrib import admin
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.admin import DomainAdmin as AccountsDomainAdmin
from accounts.admin_scope import DomainScopedAdmin, DomainScopedInline
from accounts.models import Domain

from .keys import rotate_key
from .models import LearnedDomain, SigningKey


@admin.register(SigningKey)
class SigningKeyAdmin(DomainScopedAdmin):
    """Ed25519 keys the domains sign with. Rotate from a domain's list action or with `manage.py rotatekey`;
    private keys never show here."""

    list_display = ["key_id", "domain", "created_at", "retired_at", "expires_at"]
    list_filter = ["domain"]
    search_fields = ["key_id", "domain__name", "public_key"]
    date_hierarchy = "created_at"
    list_select_related = ["domain"]
    exclude = ["private_key"]
    readonly_fields = ["domain", "key_id", "public_key", "created_at", "retired_at", "expires_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(LearnedDomain)
class LearnedDomainAdmin(admin.ModelAdmin):  # type: ignore[type-arg]  # not subscriptable at run time
    """Domains an authenticated SMTP message said run Pushmail, and whether discovery confirmed it.

    A confirmed domain gets replies over the federation API; one discovery did not
    confirm is reached by SMTP as before (docs/gateway.md, "Senders that run Pushmail").
    """

    list_display = ["domain", "state", "heard_from", "authenticated_by", "last_heard_at", "times_heard", "checked_at"]
    list_filter = ["state"]
    search_fields = ["domain", "heard_from"]
    date_hierarchy = "last_heard_at"
    readonly_fields = [field.name for field in LearnedDomain._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # rows come from received mail

    def has_change_permission(self, request: HttpRequest, obj: LearnedDomain | None = None) -> bool:
        return False


_KEY_FIELDS = ("key_id", "public_key", "created_at", "retired_at", "expires_at")


class SigningKeyInline(DomainScopedInline):
    model = SigningKey
    extra = 0
    fields = _KEY_FIELDS
    readonly_fields = _KEY_FIELDS
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Domain | None = None) -> bool:
        return False  # new keys come from rotation, which keeps the old one valid for a grace period


# A domain's page lists its signing keys: accounts (below this app) registers the page, this app adds them.
admin.site.unregister(Domain)


@admin.register(Domain)
class DomainAdmin(AccountsDomainAdmin):
    inlines = [*AccountsDomainAdmin.inlines, SigningKeyInline]
    actions = ["rotate_signing_key"]

    @admin.action(
        description="Rotate the signing keys (the old ones stay published for the grace period)",
        permissions=["change"],
    )
    def rotate_signing_key(self, request: HttpRequest, queryset: QuerySet[Domain]) -> None:
        made = []
        for domain in queryset.order_by("name"):
            with transaction.atomic():  # as `manage.py rotatekey`: retire and replace together
                made.append(rotate_key(domain=domain).key_id)
        self.message_user(request, f"New signing keys: {', '.join(made)}.")
