"""Recompute every inbox entry's search document."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from mailbox.search import rebuild_documents


class Command(BaseCommand):
    help = "Recompute every inbox entry's search document (subject, sender, fetched body, attachment names)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--batch-size", type=int, default=200)

    def handle(self, *args: Any, batch_size: int, **options: Any) -> None:
        count = rebuild_documents(batch_size=batch_size)
        self.stdout.write(f"Rebuilt the search documents of {count} entries.")
