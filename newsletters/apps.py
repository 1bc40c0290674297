from django.apps import AppConfig


class NewslettersConfig(AppConfig):
    name = "newsletters"
    label = "newsletters"
    verbose_name = "Newsletters (lists, subscriptions, issues)"

    def ready(self) -> None:
        # Answer federation's list hooks (subscriptions, list notifications) once the models are loaded.
        from . import receivers  # noqa: F401
