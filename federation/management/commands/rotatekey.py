from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from accounts.models import Domain
from federation.keys import rotate_key


class Command(BaseCommand):
    help = "Make a new signing key for a domain; the old one stays published until its expiry."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("domain")

    def handle(self, *args: Any, domain: str, **options: Any) -> None:
        found = Domain.objects.filter(name=domain.strip().lower()).first()
        if found is None:
            raise CommandError(f"no hosted domain {domain}")
        key = rotate_key(domain=found)
        self.stdout.write(f"new key {key.key_id} for {found.name}")
