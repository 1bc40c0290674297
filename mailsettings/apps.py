from django.apps import AppConfig


class MailSettingsConfig(AppConfig):
    name = "mailsettings"
    label = "mailsettings"
    verbose_name = "Mail settings (filters, vacation reply, contacts, import)"

    def ready(self) -> None:
        # Receive the mailbox's "new mail arrived" and "body fetched" signals once the models are loaded.
        from . import receivers  # noqa: F401
