import uuid
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from mailbox.models import RemoteMessage
from reputation.abuse import DEFAULT_LIMIT, NoEvidence, abuse_report, evidence_for_messages, evidence_of_origin


class Command(BaseCommand):
    help = (
        "Write an abuse report (ARF, RFC 5965) with the signed notifications kept from an origin, "
        "or of some messages, to standard output: abuse_report --origin alpha.example > report.eml"
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--origin", help="the origin domain: its newest kept notifications")
        parser.add_argument(
            "--limit", type=int, default=DEFAULT_LIMIT, help=f"at most this many, newest first ({DEFAULT_LIMIT})"
        )
        parser.add_argument(
            "--message", action="append", default=[], metavar="GLOBAL_ID", help="a message's global id (repeatable)"
        )
        parser.add_argument("--from", dest="reporter", default="", help="the report's From address")

    def handle(
        self, *args: Any, origin: str | None, limit: int, message: list[str], reporter: str, **options: Any
    ) -> None:
        if bool(origin) == bool(message):
            raise CommandError("name either --origin DOMAIN or one or more --message GLOBAL_ID")
        if limit < 1:
            raise CommandError("--limit must be at least 1")
        if origin:
            rows = evidence_of_origin(origin.strip(), limit=limit)
        else:
            try:
                ids = [uuid.UUID(value) for value in message]
            except ValueError as exc:
                raise CommandError(f"--message takes a global id (a UUID): {exc}") from exc
            rows = evidence_for_messages(RemoteMessage.objects.filter(global_id__in=ids))
        try:
            content = abuse_report(notifications=rows, reporter=reporter, limit=limit)
        except NoEvidence as exc:
            raise CommandError(str(exc)) from exc
        # The report is 7-bit (every part is encoded for mail), so it passes through a text stream unchanged.
        self.stdout.write(content.decode("ascii"), ending="")
