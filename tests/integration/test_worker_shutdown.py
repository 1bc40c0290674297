"""`celery -A pushmail_site worker --beat` stops when its process group gets SIGTERM.

systemd stops a service by sending SIGTERM to every process of it, and the demo stops its
workers the same way. A real worker with its beat and pool children runs here on SQLite and the
filesystem broker (the demo's setup), in its own process group; SIGTERM goes to the whole group,
and every process of it must be gone within 10 seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools.cluster import ROOT

STOP_WITHIN_SECONDS = 10.0


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PUSHMAIL_", "CELERY_", "DATABASE_", "CACHE_"))}
    env.update(
        {
            # Production settings, as systemd would run them, on the embedded backends.
            "DEBUG": "0",
            "SECRET_KEY": "worker-shutdown-test-" + "k" * 40,
            "PUSHMAIL_KEY_ENCRYPTION_KEY": "worker-shutdown-test-key-encryption-key",
            "PUSHMAIL_BASE_URL": "https://mail.example.org",
            "ALLOWED_HOSTS": "mail.example.org",
            "PUSHMAIL_DATA_DIR": str(data_dir),
            "DATABASE_URL": f"sqlite:///{data_dir / 'pushmail.sqlite3'}",
            "PUSHMAIL_SWEEP_SECONDS": "1",
            "DJANGO_SETTINGS_MODULE": "pushmail_site.settings",
            "PYTHONUNBUFFERED": "1",
            "C_FORCE_ROOT": "1",
        }
    )
    return env


def _wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail(f"the worker did not log {text!r}:\n{log.read_text(errors='replace')[-4000:]}")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("worker-shutdown")
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=_env(path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return path


@pytest.mark.parametrize("round_", range(3))  # the hang it guards against depended on timing
def test_worker_with_beat_stops_on_sigterm_to_its_process_group(data_dir: Path, round_: int) -> None:
    log = data_dir / f"worker-{round_}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "pushmail_site",
                "worker",
                "--beat",
                "--schedule",
                str(data_dir / "celerybeat-schedule"),
                "--concurrency",
                "2",
                "--loglevel",
                "INFO",
            ],
            cwd=ROOT,
            env=_env(data_dir),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for(log, " ready.", proc)
        _wait_for(log, "succeeded in", proc)  # beat has sent its sweeps and the pool has run them
        assert len(_group_members(proc.pid)) >= 4, "expected the worker, its beat and two pool children"

        os.killpg(proc.pid, signal.SIGTERM)
        started = time.monotonic()
        while _group_members(proc.pid) and time.monotonic() - started < STOP_WITHIN_SECONDS:
            proc.poll()  # reap the main process as soon as it exits
            time.sleep(0.1)
        left = _group_members(proc.pid)
        assert not left, (
            f"{len(left)} worker processes still running {STOP_WITHIN_SECONDS:g}s after SIGTERM:\n"
            + log.read_text(errors="replace")[-3000:]
        )
        assert proc.wait(timeout=5) == 0
    finally:
        if _group_members(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
