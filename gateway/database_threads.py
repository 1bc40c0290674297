"""Worker threads for an SMTP server's database work, off its event loop.

The gateway and the submission server answer each command on an asyncio event
loop; what touches the database runs in these threads, each command's
connection handled as Django handles a request's.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from django.db import close_old_connections, connections


def _with_database(function: Any, /, **kwargs: Any) -> Any:
    close_old_connections()
    try:
        return function(**kwargs)
    finally:
        close_old_connections()


class DatabaseThreads:
    """A fixed pool of threads that run synchronous, database-using functions for a coroutine."""

    def __init__(self, *, workers: int, name: str) -> None:
        self._workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)

    async def run(self, function: Any, /, **kwargs: Any) -> Any:
        """``function(**kwargs)`` in a worker thread."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, partial(_with_database, function, **kwargs)
        )

    def close(self) -> None:
        """Close every worker thread's database connections, then the workers."""
        # One task per worker, all waiting for each other, so each runs on its own thread.
        everyone = threading.Barrier(self._workers)

        def close_own() -> None:
            everyone.wait(timeout=30)
            connections.close_all()

        for done in [self._executor.submit(close_own) for _ in range(self._workers)]:
            done.result()
        self._executor.shutdown()
