"""Domain admins in the Django admin.

A superuser manages the whole instance. A staff mailbox that is not a superuser is the admin of its
own domain: it sees that domain's rows only, and changes what a domain admin may change (the domain's
defaults, its mailboxes, their tokens); the rest it may only view. Instance-wide settings (peers)
stay with superusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeGuard

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from .admin_secrets import SecretFieldsGuard

if TYPE_CHECKING:
    from .http import AuthedRequest


def is_domain_admin(request: HttpRequest) -> TypeGuard[AuthedRequest]:
    user = request.user
    return bool(user.is_active and user.is_staff and not user.is_superuser)


class DomainScopedAdmin(SecretFieldsGuard):
    #: Lookup from the model to its accounts.Domain primary key ("pk" for Domain itself).
    domain_lookup = "domain"
    #: What a domain admin may do besides viewing.
    domain_admin_can_add = False
    domain_admin_can_change = False
    domain_admin_can_delete = False

    def scope(self, request: AuthedRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(**{self.domain_lookup: request.user.domain_id})

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset = super().get_queryset(request)
        return self.scope(request, queryset) if is_domain_admin(request) else queryset

    def has_module_permission(self, request: HttpRequest) -> bool:
        return is_domain_admin(request) or super().has_module_permission(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return is_domain_admin(request) or super().has_view_permission(request, obj)

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        if is_domain_admin(request):
            return self.domain_admin_can_add
        return super().has_add_permission(request, *args)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if is_domain_admin(request):
            return self.domain_admin_can_change
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if is_domain_admin(request):
            return self.domain_admin_can_delete
        return super().has_delete_permission(request, obj)


class DomainScopedInline(admin.TabularInline):
    """Inlines follow their parent's scope; a domain admin may view them."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return is_domain_admin(request) or super().has_view_permission(request, obj)


class ProtocolRecordAdmin(DomainScopedAdmin):
    """Rows that record protocol state (notifications, deliveries, fetches, inbox entries): they move
    only along their state graph, by the protocol and by the admin's actions, never by a typed-in edit.

    The change page shows them read-only and nothing is added or deleted by hand. Actions declared
    with ``permissions=["act"]`` (retry now, fetch now) stay with superusers and anyone granted the
    model's change permission; a domain admin only views.
    """

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_act_permission(self, request: HttpRequest) -> bool:
        if is_domain_admin(request):
            return False
        return super().has_change_permission(request)
