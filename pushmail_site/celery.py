"""The Celery app. Workers wake up on broker messages; the database holds the truth."""

import logging.config
import os
import signal
from typing import Any

from celery import Celery, signals
from django.conf import settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pushmail_site.settings")

app = Celery("pushmail_site")

app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

if os.environ.get("LOG_FORMAT", "").strip().lower() == "json":

    @signals.setup_logging.connect
    def _log_as_django_says(**kwargs: Any) -> None:
        """LOG_FORMAT=json: the worker and beat log through Django's LOGGING (pushmail_site.logs), not
        Celery's own format, so every line of every process is one JSON object."""
        logging.config.dictConfig(settings.LOGGING)


# --- Stopping on SIGTERM to the whole process group ------------------------------------
#
# systemd (KillMode=control-group), `kill -TERM -PGID` and the demo's Ctrl-C send SIGTERM to the
# worker's main process *and* to every pool child. The main process answers with a warm shutdown:
# it closes the pool, which hands each child a sentinel, and each exits once its current task is
# done. Left to Celery's defaults the children also act on the signal themselves and exit at once;
# the pool's supervisor thread then forks replacements for them, and those replacements die with
# that thread (Celery sets their parent-death signal) while one of them holds the lock of the
# shared task queue, blocked reading it. With a broker that has no asynchronous I/O (the filesystem
# and memory transports, which use billiard's blocking pool) the main process then waits for that
# lock for ever when it finalizes the pool: the worker never exits.
#
# So pool children ignore SIGTERM and leave only through the pool's own shutdown (a sentinel, or
# SIGKILL for a hard time limit). billiard keeps an ignored SIGTERM ignored when it installs its
# own signal handlers after this initializer.


@signals.worker_process_init.connect
def _pool_children_leave_shutdown_to_the_main_process(**kwargs: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
