from __future__ import annotations

from typing import TYPE_CHECKING, Any

from allauth.account.models import EmailAddress
from allauth.usersessions.admin import UserSessionAdmin
from allauth.usersessions.models import UserSession
from django import forms
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.forms import AdminUserCreationForm
from django.core.exceptions import ValidationError
from django.db.models import Count, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest

from pushmail_site.sizes import human_size

from .admin_scope import DomainScopedAdmin, is_domain_admin
from .models import ApiToken, Domain, User
from .signals import domain_created
from .validators import normalize_address

if TYPE_CHECKING:

    class CountedDomain(Domain):
        mailbox_total: int  # annotated by DomainAdmin.get_queryset


_SIGNING_KEY_FIELDS = ("key_id", "public_key", "created_at", "retired_at", "expires_at")


@admin.register(Domain)
class DomainAdmin(DomainScopedAdmin):
    """Hosted domains; federation's admin adds each domain's signing keys to this page."""

    domain_lookup = "pk"
    domain_admin_can_change = True  # its defaults; adding and deleting domains is for superusers
    list_display = ["name", "default_fetch_policy", "default_quota", "mailbox_count", "created_at"]
    list_filter = ["default_fetch_policy"]
    search_fields = ["name"]
    fields = ["name", "default_fetch_policy", "default_quota_bytes", "created_at"]
    readonly_fields = ["created_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: Domain | None = None) -> list[str]:
        # The name is in every address and signing key id: it is fixed once created.
        return [*self.readonly_fields, "name"] if obj else self.readonly_fields

    @admin.display(description="Default quota", ordering="default_quota_bytes")
    def default_quota(self, obj: Domain) -> str:
        return human_size(obj.default_quota_bytes)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).annotate(mailbox_total=Count("mailboxes"))

    @admin.display(description="Mailboxes", ordering="mailbox_total")
    def mailbox_count(self, obj: CountedDomain) -> int:
        return obj.mailbox_total

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        super().save_model(request, obj, form, change)
        if not change:
            domain_created.send(sender=Domain, domain=obj)


class MailboxCreationForm(AdminUserCreationForm):
    """Create a mailbox from its address; its domain must be hosted here."""

    allowed_domain_id: int | None = None  # set for a domain admin: mailboxes of that domain only

    class Meta:
        model = User
        fields = ("email",)

    def clean_email(self) -> str:
        try:
            address = normalize_address(self.cleaned_data["email"])
        except ValidationError as exc:
            raise forms.ValidationError(exc.messages) from exc
        local_part, _, domain_name = address.rpartition("@")
        domain = Domain.objects.filter(name=domain_name).first()
        if domain is None:
            raise forms.ValidationError(f"{domain_name} is not a domain of this instance; add the domain first.")
        if self.allowed_domain_id is not None and domain.pk != self.allowed_domain_id:
            raise forms.ValidationError(f"You administer another domain than {domain_name}.")
        if User.objects.filter(email=address).exists():
            raise forms.ValidationError(f"The mailbox {address} already exists.")
        self.instance.local_part = local_part
        self.instance.domain = domain
        return address


@admin.register(User)
class MailboxAdmin(DomainScopedAdmin, UserAdmin):
    """Mailboxes. "Reset password" is Django's password form, linked from the change page."""

    domain_admin_can_add = True
    domain_admin_can_change = True
    shown_secret_fields = ("password",)  # Django's masked summary of the hash, and its "Reset password" link

    add_form = MailboxCreationForm
    ordering = ["email"]
    list_display = ["email", "display_name", "domain", "quota", "fetch_policy", "is_active", "is_staff", "last_login"]
    list_filter = ["domain", "is_active", "is_staff", "is_superuser", "fetch_policy"]
    search_fields = ["email", "display_name", "recovery_address"]
    list_select_related = ["domain"]
    readonly_fields = ["email", "local_part", "domain", "last_login", "date_joined"]
    fieldsets = (
        (None, {"fields": ("email", "local_part", "domain", "password")}),
        ("Profile", {"fields": ("display_name", "signature", "recovery_address")}),
        ("Mail", {"fields": ("quota_bytes", "fetch_policy", "remote_content")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "usable_password", "password1", "password2")}),)

    def get_readonly_fields(self, request: HttpRequest, obj: User | None = None) -> list[str]:
        return list(self.readonly_fields) if obj else []

    def get_fieldsets(self, request: HttpRequest, obj: User | None = None) -> list[Any]:
        fieldsets = super().get_fieldsets(request, obj)
        if obj is not None and is_domain_admin(request):
            # A domain admin makes domain admins (staff), never superusers, and grants no permissions.
            fieldsets = [
                (name, {**opts, "fields": [f for f in opts["fields"] if f not in _SUPERUSER_ONLY]})
                for name, opts in fieldsets
            ]
        return fieldsets

    def get_form(  # type: ignore[override]  # as Django's UserAdmin.get_form: change comes in kwargs
        self, request: HttpRequest, obj: User | None = None, **kwargs: Any
    ) -> type[ModelForm[User]]:
        form = super().get_form(request, obj, **kwargs)
        if obj is None and is_domain_admin(request):
            form = type(form.__name__, (form,), {"allowed_domain_id": request.user.domain_id})
        return form

    @admin.display(description="Quota", ordering="quota_bytes")
    def quota(self, obj: User) -> str:
        text = human_size(obj.effective_quota_bytes)
        return text if obj.quota_bytes is not None else f"{text} (domain default)"

    def save_model(self, request: HttpRequest, obj: User, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if not change:
            # The address is the login; allauth counts it as verified, as create_mailbox does.
            EmailAddress.objects.get_or_create(user=obj, email=obj.email, defaults={"verified": True, "primary": True})


_SUPERUSER_ONLY = {"is_superuser", "groups", "user_permissions"}


@admin.register(ApiToken)
class ApiTokenAdmin(DomainScopedAdmin):
    domain_lookup = "user__domain"
    domain_admin_can_delete = True  # revoke
    list_display = ["prefix", "user", "name", "created_at", "last_used_at"]
    list_filter = ["user__domain"]
    search_fields = ["user__email", "name", "prefix"]
    date_hierarchy = "created_at"
    list_select_related = ["user"]
    readonly_fields = ["user", "prefix", "created_at", "last_used_at"]
    fields = ["user", "name", "prefix", "created_at", "last_used_at"]  # never the token's hash

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a token is shown once to its owner: created in Settings or with `manage.py apitoken`


# allauth's session admin searches user__username, which this User has not: searching would fail.
admin.site.unregister(UserSession)


@admin.register(UserSession)
class MailboxSessionAdmin(DomainScopedAdmin, UserSessionAdmin):
    domain_lookup = "user__domain"
    search_fields = ["user__email", "ip", "user_agent"]
    list_filter = ["user__domain"]
    list_select_related = ["user"]
