"""``make demo``: the API tokens it keeps, the commands it prints, and how one instance is stopped alone."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from accounts.models import User
from tests.conftest import api_as
from tools import demo

TOKENS = {"alpha": "pm_alpha-token", "beta": "pm_beta-token"}


def test_the_token_is_issued_once_and_reused_on_the_next_run(tmp_path: Path) -> None:
    issued: list[str] = []

    def issue() -> str:
        issued.append(f"pm_token-{len(issued) + 1}")
        return issued[-1] + "\n"

    first = demo.stored_token(tmp_path / "alpha", issue)
    again = demo.stored_token(tmp_path / "alpha", issue)

    assert first == again == "pm_token-1"
    assert issued == ["pm_token-1"]
    kept = tmp_path / "alpha" / demo.TOKEN_FILE
    assert kept.read_text().strip() == "pm_token-1"
    assert kept.stat().st_mode & 0o077 == 0  # only the owner reads it


def test_an_empty_token_file_gets_a_new_token(tmp_path: Path) -> None:
    (tmp_path / demo.TOKEN_FILE).write_text("\n")
    assert demo.stored_token(tmp_path, lambda: "pm_new") == "pm_new"


def _programs(text: str) -> list[str]:
    return re.findall(r"python3 -c '([^']*)'", text)


def _run(program: str, answer: object) -> str:
    result = subprocess.run(
        [sys.executable, "-c", program], input=json.dumps(answer), capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


@pytest.mark.django_db
@pytest.mark.usefixtures("net")
def test_the_printed_commands_read_the_message_they_just_sent(alice: User, bob: User, tmp_path: Path) -> None:
    text = demo.usage(TOKENS, tmp_path)
    assert "inbox/1/" not in text
    payload = json.loads(re.search(r"-d '(\{.*\})'", text).group(1))  # type: ignore[union-attr]
    assert payload["to"] == [demo.MAILBOXES["beta"][0]]
    find_message_id, find_entry = _programs(text)
    sender, reader = api_as(alice), api_as(bob)
    # bob already has mail, so the new message is not his first entry
    sender.post("/api/v1/messages/", {"to": [bob.email], "subject": "Earlier", "text": "x"}, format="json")
    sender.post("/api/v1/messages/", {"to": [bob.email], "subject": "Hello again", "text": "y"}, format="json")

    sent = sender.post("/api/v1/messages/", {**payload, "to": [bob.email]}, format="json")
    assert sent.status_code == 201, sent.content
    message_id = _run(find_message_id, sent.json())
    assert '--data-urlencode "conversation=$MID"' in text
    listed = reader.get("/api/v1/inbox/", {"conversation": message_id})
    entry_id = _run(find_entry, listed.json())
    assert "/api/v1/inbox/$ENTRY/" in text
    opened = reader.get(f"/api/v1/inbox/{entry_id}/")

    assert opened.status_code in (200, 202)
    assert opened.json()["subject"] == payload["subject"] == "Hello"


def test_the_printed_text_says_how_to_stop_and_start_one_instance(tmp_path: Path) -> None:
    text = demo.usage(TOKENS, tmp_path)
    assert "stop alpha" in text and "start alpha" in text
    assert "python -m tools.demo stop alpha" in text
    assert TOKENS["alpha"] in text and TOKENS["beta"] in text


@pytest.mark.parametrize(
    ("line", "parsed"),
    [
        ("stop beta", ("stop", "beta")),
        ("  start alpha \n", ("start", "alpha")),
        ("stop", None),
        ("stop gamma", None),
        ("restart beta", None),
        ("stop beta now", None),
    ],
)
def test_commands_name_an_action_and_an_instance(line: str, parsed: tuple[str, str] | None) -> None:
    assert demo.parse_command(line) == parsed


def test_a_stop_request_without_a_running_demo_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.request_action(tmp_path, "stop", "beta") == 1
    assert "no demo is running" in capsys.readouterr().err
    assert not (tmp_path / "control").exists()


def test_a_stop_request_is_picked_up_by_the_running_demo(tmp_path: Path) -> None:
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "stop-beta").write_text("")
    (tmp_path / "control" / "junk").write_text("")

    found = demo.pending_requests(tmp_path)

    assert [(action, name) for action, name, _ in found] == [("stop", "beta")]
    assert not (tmp_path / "control" / "junk").exists()
