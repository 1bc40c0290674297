from django.apps import AppConfig


class EncryptionConfig(AppConfig):
    name = "encryption"
    label = "encryption"
    verbose_name = "Encryption (OpenPGP keys)"

    def ready(self) -> None:
        # Answer federation's "which keys does this address publish" once the models are loaded.
        from . import receivers  # noqa: F401
