from allauth.account.models import EmailAddress
from allauth.usersessions.admin import UserSessionAdmin
from allauth.usersessions.models import UserSession
from django import forms
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.forms import AdminUserCreationForm
from django.core.exceptions import ValidationError
from django.db.models import Count
from django.template.defaultfilters import filesizeformat

from federation.models import SigningKey

from .models import ApiToken, Domain, User
from .validators import normalize_address


class SigningKeyInline(admin.TabularInline):
    model = SigningKey
    extra = 0
    fields = ["key_id", "public_key", "created_at", "retired_at", "expires_at"]
    readonly_fields = fields
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False  # new keys come from `manage.py rotatekey`, which keeps the old one valid for a grace period


@admin.register(Domain)
class DomainAdmin(admin.ModelAdmin):
    list_display = ["name", "default_fetch_policy", "default_quota", "mailbox_count", "created_at"]
    list_filter = ["default_fetch_policy"]
    search_fields = ["name"]
    fields = ["name", "default_fetch_policy", "default_quota_bytes", "created_at"]
    readonly_fields = ["created_at"]
    inlines = [SigningKeyInline]

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        # The name is in every address and signing key id: it is fixed once created.
        return [*self.readonly_fields, "name"] if obj else self.readonly_fields

    @admin.display(description="Default quota", ordering="default_quota_bytes")
    def default_quota(self, obj: Domain) -> str:
        return filesizeformat(obj.default_quota_bytes)

    def get_queryset(self, request):  # type: ignore[no-untyped-def]
        return super().get_queryset(request).annotate(mailbox_total=Count("mailboxes"))

    @admin.display(description="Mailboxes", ordering="mailbox_total")
    def mailbox_count(self, obj: Domain) -> int:
        return obj.mailbox_total  # type: ignore[attr-defined]

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        from federation import discovery
        from federation.keys import create_signing_key

        super().save_model(request, obj, form, change)
        if not change and not obj.signing_keys.exists():
            create_signing_key(domain=obj)
            discovery.forget_hosted_domains()


class MailboxCreationForm(AdminUserCreationForm):
    """Create a mailbox from its address; its domain must be hosted here."""

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
        if User.objects.filter(email=address).exists():
            raise forms.ValidationError(f"The mailbox {address} already exists.")
        self.instance.local_part = local_part
        self.instance.domain = domain
        return address


@admin.register(User)
class MailboxAdmin(UserAdmin):
    """Mailboxes. "Reset password" is Django's password form, linked from the change page."""

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

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        return self.readonly_fields if obj else []

    @admin.display(description="Quota", ordering="quota_bytes")
    def quota(self, obj: User) -> str:
        text = filesizeformat(obj.effective_quota_bytes)
        return text if obj.quota_bytes is not None else f"{text} (domain default)"

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        super().save_model(request, obj, form, change)
        if not change:
            # The address is the login; allauth counts it as verified, as create_mailbox does.
            EmailAddress.objects.get_or_create(user=obj, email=obj.email, defaults={"verified": True, "primary": True})


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix", "user", "name", "created_at", "last_used_at"]
    list_filter = ["user__domain"]
    search_fields = ["user__email", "name", "prefix"]
    date_hierarchy = "created_at"
    list_select_related = ["user"]
    readonly_fields = ["user", "key_hash", "prefix", "created_at", "last_used_at"]
    fields = ["user", "name", "prefix", "key_hash", "created_at", "last_used_at"]

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False  # a token is shown once to its owner: created in Settings or with `manage.py apitoken`


# allauth's session admin searches user__username, which this User has not: searching would fail.
admin.site.unregister(UserSession)


@admin.register(UserSession)
class MailboxSessionAdmin(UserSessionAdmin):
    search_fields = ["user__email", "ip", "user_agent"]
    list_filter = ["user__domain"]
    list_select_related = ["user"]
