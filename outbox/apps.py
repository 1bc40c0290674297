from django.apps import AppConfig


class OutboxConfig(AppConfig):
    name = "outbox"
    verbose_name = "Outbox (sender side)"

    def ready(self) -> None:
        # Answer the hooks and receive the signals of the apps below, once the models are loaded.
        from . import receivers  # noqa: F401
