from django.apps import AppConfig


class FederationConfig(AppConfig):
    name = "federation"
    verbose_name = "Federation"

    def ready(self) -> None:
        # Receive the signals of the apps below, once the models are loaded.
        from . import receivers  # noqa: F401
