"""``manage.py smtpd``: take mail for the hosted domains from any mail server, by SMTP."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from gateway.server import GatewayController, listen_address, tls_context


class Command(BaseCommand):
    help = "Run the inbound SMTP gateway (MX) on PUSHMAIL_SMTP_LISTEN (default 127.0.0.1:2525)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--listen", default="", help="host:port, overriding PUSHMAIL_SMTP_LISTEN")
        parser.add_argument(
            "--processes",
            type=int,
            default=1,
            help="gateway processes sharing the port (SO_REUSEPORT), e.g. one per CPU core (default 1)",
        )
        parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # one of --processes

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            listen = options["listen"] or settings.PUSHMAIL_SMTP_LISTEN
            host, port = listen_address(listen, setting="PUSHMAIL_SMTP_LISTEN")
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        processes = options["processes"]
        if processes < 1:
            raise CommandError(f"--processes {processes}: at least 1")
        controller = GatewayController(host=host, port=port, reuse_port=options["reuse_port"] or processes > 1)
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        try:
            controller.start()
        except OSError as exc:
            raise CommandError(f"cannot listen on {host}:{port}: {exc}") from exc
        # The others: this command again, each its own process with its own event loop and database connections.
        others = [
            subprocess.Popen(  # noqa: S603 - this very program, with arguments of our making
                [sys.executable, os.path.abspath(sys.argv[0]), "smtpd", "--listen", f"[{host}]:{port}", "--reuse-port"],
                stdout=subprocess.DEVNULL,
            )
            for _ in range(processes - 1)
        ]
        tls = "with STARTTLS" if tls_context() is not None else "without STARTTLS (no certificate set)"
        shared = f" ({processes} processes)" if processes > 1 else ""
        self.stdout.write(f"SMTP gateway listening on {host}:{port}{shared} {tls}", ending="\n")
        self.stdout.flush()
        failed = None
        try:
            while not stop.wait(1):
                failed = next((other for other in others if other.poll() is not None), None)
                if failed is not None:
                    break
        finally:
            for other in others:
                if other.poll() is None:
                    other.terminate()
            controller.stop()
            for other in others:
                other.wait(timeout=60)
        if failed is not None:
            raise CommandError(f"a gateway process ended (exit status {failed.returncode}); the others were stopped")
