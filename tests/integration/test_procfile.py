"""The Procfile, run as an operator would for a single-host trial: ``honcho start``.

Beta is the Procfile's web server (two gunicorn workers), Celery worker and beat, started by
honcho with counters kept across processes (PROMETHEUS_MULTIPROC_DIR), JSON logs and a metrics
token. Alpha is an ordinary instance (tools/cluster.py). A message from alpha reaches beta and
is read there; beta's ``/metrics``, scraped with the token, shows it the way an operator's
dashboard would: one more notification received, a fetch timed by the worker, the fetch job
rows by state. Then honcho is stopped with Ctrl-C (SIGINT) and every process leaves on its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import _LIVE, FAST_ENV, REDIS_DB_BASE, mailboxes, unique, wait_for
from tools.cluster import ROOT, Backend, Instance, make_cluster, wait_http

TOKEN = "procfile-scrape-token-" + "t" * 20  # noqa: S105 - test data
STOP_WITHIN_SECONDS = 30


class Honcho:
    """``honcho start`` on the project's Procfile for one instance, its output in a file."""

    def __init__(self, inst: Instance, multiproc_dir: Path) -> None:
        self.inst = inst
        self.log = inst.data_dir / "honcho.log"
        empty_env_file = inst.data_dir / "empty.env"
        empty_env_file.write_text("")
        env = {
            **inst.env(),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir),
            "WEB_CONCURRENCY": "2",
            "C_FORCE_ROOT": "1",
        }
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "honcho"),
                "start",
                "--no-colour",
                "-f",
                str(ROOT / "Procfile"),
                "-d",
                str(ROOT),
                "-e",
                str(empty_env_file),
                "-p",
                str(inst.port),
            ],
            cwd=ROOT,
            env=env,
            stdout=open(self.log, "wb"),  # noqa: SIM115 - handed to the child
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def lines_of(self, process: str) -> list[str]:
        """What one process (web, worker, beat) wrote, without honcho's "12:00:00 web.1 | " prefix."""
        found = []
        for line in self.output().splitlines():
            prefix, bar, rest = line.partition(" | ")
            if bar and prefix.split()[-1].startswith(f"{process}."):
                found.append(rest)
        return found

    def stop(self) -> int:
        """Ctrl-C, as at a terminal: honcho passes SIGTERM to each process and waits for them."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout=STOP_WITHIN_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            raise


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Instance, Instance, Honcho]]:
    backend = Backend.from_env()
    backend._redis_db = REDIS_DB_BASE
    base = tmp_path_factory.mktemp("procfile")
    cluster = make_cluster(base, {"pf_alpha": ["alpha.test"], "pf_beta": ["beta.test"]}, backend=backend)
    alpha, beta = cluster["pf_alpha"], cluster["pf_beta"]
    alpha.extra_env = {**FAST_ENV, "PUSHMAIL_METRICS_TOKEN": TOKEN}
    beta.extra_env = {**FAST_ENV, "PUSHMAIL_METRICS_TOKEN": TOKEN, "LOG_FORMAT": "json"}
    for inst in (alpha, beta):
        inst.env()  # Redis database numbers, before either starts
        inst.setup()
    _LIVE.extend([alpha, beta])
    alpha.start()
    honcho = Honcho(beta, base / "metrics")
    try:
        wait_http(beta.base_url + "/.well-known/pushmail")
        yield alpha, beta, honcho
    finally:
        if honcho.proc.poll() is None:
            honcho.stop()
        alpha.kill_worker()
        alpha.stop()
        for inst in (alpha, beta):
            _LIVE.remove(inst)


def scrape(inst: Instance, token: str | None = TOKEN) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = requests.get(f"{inst.base_url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def json_lines(lines: list[str]) -> list[dict[str, Any]]:
    found = []
    for line in lines:
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict):
            found.append(data)
    return found


def test_a_message_shows_in_the_metrics_and_the_json_logs(instances: tuple[Instance, Instance, Honcho]) -> None:
    alpha, beta, honcho = instances
    assert requests.get(f"{beta.base_url}/metrics", timeout=30).status_code == 401
    assert (
        requests.get(f"{beta.base_url}/metrics", headers={"Authorization": "Bearer wrong"}, timeout=30).status_code
        == 403
    )
    (sender,) = mailboxes(alpha, 1)
    (reader,) = mailboxes(beta, 1)
    before = scrape(beta)

    subject = unique("metrics ")
    sent = sender.send(to=[reader.address], subject=subject, text="Counted, not read by the counter.")
    wait_for(
        "alpha's delivery to beta to be notified",
        lambda: sender.delivery(sent["id"], "beta.test")["state"] == "notified",
    )
    received = scrape(beta)
    name = "pushmail_notifications_received_total"
    assert value(received, name) == value(before, name) + 1
    name = "pushmail_notification_recipients_total"
    accepted = value(received, name, status="accepted", reason="") - value(before, name, status="accepted", reason="")
    assert accepted == 1
    assert value(received, "pushmail_jobs", job="fetch", state="notified") == 1
    assert value(received, "pushmail_jobs_due", job="fetch") == 0

    entry = reader.entry_with_subject(subject)
    reader.read_until(entry["id"], "fetched")

    # Timed by the Celery worker's pool process, shown by a web worker: the counts are shared.
    def after_the_fetch() -> dict[Any, float] | None:
        samples = scrape(beta)
        return samples if value(samples, "pushmail_fetch_seconds_count", outcome="body") >= 1 else None

    fetched = wait_for("the fetch to show in beta's metrics", after_the_fetch)
    assert value(fetched, "pushmail_fetch_seconds_count", outcome="body") == 1
    assert 0 < value(fetched, "pushmail_fetch_seconds_sum", outcome="body") < 30
    assert value(fetched, "pushmail_fetch_seconds_bucket", outcome="body", le="+Inf") == 1
    assert value(fetched, "pushmail_jobs", job="fetch", state="fetched") == 1
    assert value(fetched, "pushmail_jobs", job="fetch", state="notified") == 0
    assert value(fetched, "pushmail_job_oldest_due_seconds", job="fetch") == 0

    # The sender's side, on the ordinary instance: its delivery row is notified.
    sender_side = scrape(alpha)
    assert value(sender_side, "pushmail_jobs", job="delivery", state="notified") == 1
    assert value(sender_side, "pushmail_jobs", job="delivery", state="pending") == 0

    # LOG_FORMAT=json: the web's and the worker's lines about the message name it and its sender's domain.
    def about_message(process: str, text: str) -> list[dict[str, Any]]:
        return [
            line
            for line in json_lines(honcho.lines_of(process))
            if line.get("message_id") == sent["id"] and line["message"].startswith(text)
        ]

    (notified,) = wait_for("the web's log line", lambda: about_message("web", "notification received"))
    assert notified["peer"] == "alpha.test" and notified["level"] == "INFO"
    (body,) = wait_for("the worker's log line", lambda: about_message("worker", "body fetched"))
    assert body["peer"] == "alpha.test"


def test_honcho_stops_every_process_on_ctrl_c(instances: tuple[Instance, Instance, Honcho]) -> None:
    _alpha, beta, honcho = instances
    returncode = honcho.stop()
    output = honcho.output()
    assert returncode == 130, output[-3000:]  # honcho's answer to SIGINT, once all have stopped
    for process in ("web.1", "worker.1", "beat.1"):
        assert f"{process} stopped" in output, output[-3000:]
    assert "SIGKILL" not in output, output[-3000:]  # none had to be killed
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{beta.base_url}/healthz", timeout=5)
