from django.apps import AppConfig


class ReputationConfig(AppConfig):
    name = "reputation"
    verbose_name = "Reputation"

    def ready(self) -> None:
        # Answer the hooks and receive the signals of the apps below, once the models are loaded.
        from . import receivers  # noqa: F401
