from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.services import create_domain


class Command(BaseCommand):
    help = "Add a hosted domain and make its Ed25519 signing key."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("domain")

    def handle(self, *args: Any, domain: str, **options: Any) -> None:
        try:
            created = create_domain(name=domain)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        key = created.signing_keys.get()
        self.stdout.write(f"added {created.name} with key {key.key_id}")
