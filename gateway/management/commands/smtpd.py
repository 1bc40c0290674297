"""``manage.py smtpd``: take mail for the hosted domains from any mail server, by SMTP."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from gateway.server import GatewayController, listen_address, tls_context


class Command(BaseCommand):
    help = "Run the inbound SMTP gateway (MX) on PUSHMAIL_SMTP_LISTEN (default 127.0.0.1:2525)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--listen", default="", help="host:port, overriding PUSHMAIL_SMTP_LISTEN")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            host, port = listen_address(options["listen"] or settings.PUSHMAIL_SMTP_LISTEN)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        controller = GatewayController(host=host, port=port)
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        try:
            controller.start()
        except OSError as exc:
            raise CommandError(f"cannot listen on {host}:{port}: {exc}") from exc
        tls = "with STARTTLS" if tls_context() is not None else "without STARTTLS (no certificate set)"
        self.stdout.write(f"SMTP gateway listening on {host}:{port} {tls}", ending="\n")
        self.stdout.flush()
        try:
            stop.wait()
        finally:
            controller.stop()
