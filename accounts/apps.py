from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Domains and mailboxes"


class PushmailAdminConfig(admin_apps.AdminConfig):
    """Django's admin on a site that keeps secret fields out of every lookup (accounts/admin_secrets.py)."""

    default = False  # AccountsConfig stays the default of this module
    default_site = "accounts.admin_secrets.GuardedAdminSite"
