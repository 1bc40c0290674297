"""``manage.py mailaccess``: serve POP3 and IMAP to mail programs until stopped (SIGTERM or Ctrl-C)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from twisted.python import log as twisted_log

from mailaccess.server import start_listening


class Command(BaseCommand):
    help = (
        "Serve POP3 (PUSHMAIL_POP3_LISTEN, PUSHMAIL_POP3_TLS_LISTEN) and IMAP (PUSHMAIL_IMAP_LISTEN, "
        "PUSHMAIL_IMAP_TLS_LISTEN) to mail programs signed in with app passwords."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        # Importing the reactor installs it: only in the process that serves, never on import of this module.
        from twisted.internet import reactor as _reactor

        reactor: Any = _reactor  # the installed reactor; Twisted types the module loosely
        # Twisted's own messages (an unhandled error in a connection) go to Python logging, as the rest.
        twisted_log.PythonLoggingObserver(loggerName="mailaccess.twisted").start()

        # The ORM runs in this pool: one database connection per thread at most.
        reactor.suggestThreadPoolSize(settings.PUSHMAIL_MAILACCESS_THREADS)
        try:
            listeners = start_listening(reactor)
        except (ValueError, OSError) as exc:
            raise CommandError(str(exc)) from exc
        for listener, _port in listeners:
            where = f"[{listener.host}]" if ":" in listener.host else listener.host
            self.stdout.write(f"{listener.protocol} listening on {where}:{listener.port} (TLS: {listener.tls})")
        self.stdout.flush()
        reactor.run()
