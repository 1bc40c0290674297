from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "gateway"
    verbose_name = "SMTP gateway"

    def ready(self) -> None:
        # Answer the hooks of the apps below, once the models are loaded.
        from . import receivers  # noqa: F401
