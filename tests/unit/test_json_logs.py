"""LOG_FORMAT=json: one JSON object a line, naming the message and peer of the lines about them."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from accounts.models import User
from mailbox.models import RemoteMessage
from mailbox.services import fetch_body, open_entry
from pushmail_site.logs import ContextFilter, JsonFormatter, about
from tests.conftest import FakePeer, FederationClient, Queued
from tests.factories import PeerMessageFactory

ROOT = Path(__file__).resolve().parents[2]


def _record(message: str, *args: object, exc_info: Any = None, **extra: object) -> logging.LogRecord:
    record = logging.getLogger("pushmail.test").makeRecord(
        "pushmail.test", logging.WARNING, __file__, 1, message, args, exc_info, extra=extra or None
    )
    ContextFilter().filter(record)
    return record


def test_a_line_is_one_json_object_with_the_message_and_peer() -> None:
    with about(message_id="3f0c-id", peer="beta.test"):
        line = JsonFormatter().format(_record("body fetched: %d bytes", 120))
    data = json.loads(line)
    assert "\n" not in line
    assert data["message"] == "body fetched: 120 bytes"
    assert data["level"] == "WARNING" and data["logger"] == "pushmail.test"
    assert data["message_id"] == "3f0c-id" and data["peer"] == "beta.test"
    assert data["time"].endswith("+00:00")


def test_the_context_ends_with_its_block_and_extra_wins() -> None:
    with about(peer="beta.test"):
        with about(message_id="m1"):
            inner = json.loads(JsonFormatter().format(_record("inner")))
        outer = json.loads(JsonFormatter().format(_record("outer", peer="gamma.test")))
    after = json.loads(JsonFormatter().format(_record("after")))
    assert inner["message_id"] == "m1" and inner["peer"] == "beta.test"
    assert "message_id" not in outer and outer["peer"] == "gamma.test"
    assert "peer" not in after and "message_id" not in after


def test_an_exception_stays_on_the_line() -> None:
    try:
        raise ValueError("bad body")
    except ValueError:
        line = JsonFormatter().format(_record("failed", exc_info=sys.exc_info()))
    assert "\n" not in line
    assert "ValueError: bad body" in json.loads(line)["exception"]


@pytest.mark.django_db
@pytest.mark.usefixtures("net")
def test_the_lines_about_a_received_message_name_it_and_its_sender(
    caplog: pytest.LogCaptureFixture,
    federation: FederationClient,
    peer: FakePeer,
    alice: User,
    queued: list[Queued],
    django_capture_on_commit_callbacks: Any,
) -> None:
    message = PeerMessageFactory(to=[alice.email])
    peer.bodies[str(message.global_id)] = message.content()
    caplog.handler.addFilter(ContextFilter())
    with caplog.at_level(logging.INFO):
        assert federation.notify(peer, message.payload()).status_code == 200
        remote = RemoteMessage.objects.get(global_id=message.global_id)
        with django_capture_on_commit_callbacks(execute=True):
            open_entry(entry=remote.entries.get(owner=alice))
        fetch_body(remote.pk)
    about_it = [r for r in caplog.records if r.name in ("federation.views", "mailbox.fetching")]
    assert [r.getMessage().split(":")[0] for r in about_it] == ["notification received", "body fetched"]
    for record in about_it:
        data = json.loads(JsonFormatter().format(record))
        assert data["message_id"] == str(message.global_id) and data["peer"] == peer.domain


def test_log_format_json_configures_the_processes(tmp_path: Path) -> None:
    code = "import logging; logging.getLogger('pushmail.probe').warning('hello %s', 'world')"
    env = {**os.environ, "LOG_FORMAT": "json", "DJANGO_SETTINGS_MODULE": "pushmail_site.settings", "DEBUG": "1"}
    env["PUSHMAIL_DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert line["message"] == "hello world" and line["logger"] == "pushmail.probe"

    env["LOG_FORMAT"] = "xml"
    refused = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode != 0 and "LOG_FORMAT must be text or json" in refused.stderr
