from django.apps import AppConfig


class MailboxConfig(AppConfig):
    name = "mailbox"
    label = "mailbox"
    verbose_name = "Mailbox (recipient side)"

    def ready(self) -> None:
        # Answer the hooks and receive the signals of the apps below, once the models are loaded.
        from . import receivers  # noqa: F401
