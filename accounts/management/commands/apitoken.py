from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import User
from accounts.services import issue_api_token


class Command(BaseCommand):
    help = (
        "Print a new API token for a mailbox: 'Authorization: Bearer TOKEN' for the API, "
        "or the app password of a mail program (name it after the program)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("address")
        parser.add_argument("--name", default="command line")

    def handle(self, *args: Any, address: str, name: str, **options: Any) -> None:
        user = User.objects.filter(email=address.strip().lower()).first()
        if user is None:
            raise CommandError(f"no mailbox {address}")
        self.stdout.write(issue_api_token(user=user, name=name))
