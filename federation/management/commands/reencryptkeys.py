from typing import Any

from django.core.management.base import BaseCommand

from federation.keys import reencrypt_private_keys


class Command(BaseCommand):
    help = (
        "Re-encrypt the private signing keys with PUSHMAIL_KEY_ENCRYPTION_KEY, reading them with it or with "
        "PUSHMAIL_KEY_ENCRYPTION_OLD_KEYS (to rotate the key-encryption key)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        changed = reencrypt_private_keys()
        self.stdout.write(f"re-encrypted {changed} signing key(s)")
