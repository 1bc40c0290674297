"""``manage.py submission``: mail programs sign in with an app password and send through this instance."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from gateway.submission_server import SubmissionController, listen_address, tls_context


class Command(BaseCommand):
    help = (
        "Run the submission server for mail programs: SMTP AUTH with an app password, on PUSHMAIL_SUBMISSION_LISTEN "
        "(default 127.0.0.1:5870; STARTTLS when a certificate is set) and, when set, PUSHMAIL_SUBMISSION_TLS_LISTEN "
        "(implicit TLS)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--listen", default="", help="host:port, overriding PUSHMAIL_SUBMISSION_LISTEN")
        parser.add_argument(
            "--tls-listen", default="", help="host:port for implicit TLS, overriding PUSHMAIL_SUBMISSION_TLS_LISTEN"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        listeners: list[tuple[str, bool]] = [(options["listen"] or settings.PUSHMAIL_SUBMISSION_LISTEN, False)]
        implicit = options["tls_listen"] or settings.PUSHMAIL_SUBMISSION_TLS_LISTEN
        if implicit:
            listeners.append((implicit, True))
        controllers = []
        try:
            for spec, implicit_tls in listeners:
                try:
                    setting = "PUSHMAIL_SUBMISSION_TLS_LISTEN" if implicit_tls else "PUSHMAIL_SUBMISSION_LISTEN"
                    host, port = listen_address(spec, setting=setting)
                    controller = SubmissionController(host=host, port=port, implicit_tls=implicit_tls)
                except ValueError as exc:
                    raise CommandError(str(exc)) from exc
                try:
                    controller.start()
                except OSError as exc:
                    raise CommandError(f"cannot listen on {host}:{port}: {exc}") from exc
                controllers.append(controller)
                if implicit_tls:
                    how = "with implicit TLS"
                elif tls_context() is not None:
                    how = "with STARTTLS"
                else:
                    how = "without TLS (no certificate set): AUTH only from loopback"
                self.stdout.write(f"Submission server listening on {host}:{port} {how}")
            self.stdout.flush()
            stop = threading.Event()
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, lambda *_: stop.set())
            stop.wait()
        finally:
            for controller in controllers:
                controller.stop()
