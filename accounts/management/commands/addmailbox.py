from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.services import create_mailbox


class Command(BaseCommand):
    help = "Add a mailbox (a user whose login is its address). The address counts as verified."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("address")
        parser.add_argument("--password", required=True)
        parser.add_argument(
            "--staff", action="store_true", help="A domain admin: manages its own domain in the Django admin."
        )
        parser.add_argument("--superuser", action="store_true", help="Manages the whole instance (every domain).")

    def handle(self, *args: Any, address: str, password: str, staff: bool, superuser: bool, **options: Any) -> None:
        try:
            user = create_mailbox(address=address, password=password, is_staff=staff or superuser)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        if superuser:
            user.is_superuser = True
            user.save(update_fields=["is_superuser"])
        self.stdout.write(f"added mailbox {user.email}")
