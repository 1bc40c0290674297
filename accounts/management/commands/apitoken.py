from django.core.management.base import BaseCommand, CommandError

from accounts.models import User
from accounts.services import issue_api_token


class Command(BaseCommand):
    help = "Print a new API token for a mailbox (use as 'Authorization: Bearer TOKEN')."

    def add_arguments(self, parser):
        parser.add_argument("address")
        parser.add_argument("--name", default="command line")

    def handle(self, *args, address: str, name: str, **options):
        user = User.objects.filter(email=address.strip().lower()).first()
        if user is None:
            raise CommandError(f"no mailbox {address}")
        self.stdout.write(issue_api_token(user=user, name=name))
