from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import Domain
from gateway.dns_records import discovery_note, records_for


class Command(BaseCommand):
    help = "Print the DNS records to publish for a hosted domain: MX, SPF, DKIM, DMARC, and the discovery note."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("domain")

    def handle(self, *args: Any, domain: str, **options: Any) -> None:
        found = Domain.objects.filter(name=domain.strip().lower().rstrip(".")).first()
        if found is None:
            raise CommandError(f"no hosted domain {domain}")
        self.stdout.write(f"; DNS records for {found.name}: publish these in its zone.")
        for record in records_for(found):
            self.stdout.write(f"; {record.note}")
            self.stdout.write(record.zone_line())
        self.stdout.write(f"; {discovery_note(found)}")
