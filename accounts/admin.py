from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from .models import ApiToken, Domain, User


@admin.register(Domain)
class DomainAdmin(admin.ModelAdmin):
    list_display = ["name", "created_at"]
    search_fields = ["name"]

    def save_model(self, request, obj, form, change):
        from federation.keys import create_signing_key

        super().save_model(request, obj, form, change)
        if not change and not obj.signing_keys.exists():
            create_signing_key(domain=obj)


@admin.register(User)
class MailboxAdmin(UserAdmin):
    ordering = ["email"]
    list_display = ["email", "domain", "is_active", "is_staff", "last_login"]
    list_filter = ["domain", "is_active", "is_staff"]
    search_fields = ["email"]
    fieldsets = (
        (None, {"fields": ("email", "local_part", "domain", "password")}),
        ("Profile", {"fields": ("first_name", "last_name")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = (
        (None, {"classes": ("wide",), "fields": ("email", "local_part", "domain", "password1", "password2")}),
    )


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix", "user", "name", "created_at", "last_used_at"]
    search_fields = ["user__email", "name"]
    readonly_fields = ["key_hash", "prefix", "created_at", "last_used_at"]
