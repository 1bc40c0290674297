"""Configuration from the environment: PUSHMAIL_PEERS, and the refusal to run with the default secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from pushmail_site.settings import DEFAULT_SECRET_KEY, parse_peers

ROOT = Path(__file__).resolve().parents[2]


def test_peers_parse_into_a_mapping() -> None:
    assert parse_peers("alpha.test=http://127.0.0.1:8001,beta.test=http://127.0.0.1:8002") == {
        "alpha.test": "http://127.0.0.1:8001",
        "beta.test": "http://127.0.0.1:8002",
    }


def test_peers_are_normalised() -> None:
    assert parse_peers(" Alpha.Test = https://alpha.example/ , ,beta.test=http://[::1]:8002/") == {
        "alpha.test": "https://alpha.example",
        "beta.test": "http://[::1]:8002",
    }


@pytest.mark.parametrize("value", ["", " ", ",,"])
def test_no_peers(value: str) -> None:
    assert parse_peers(value) == {}


@pytest.mark.parametrize(
    "value",
    [
        "alpha.test",
        "alpha.test=",
        "=http://127.0.0.1:8001",
        "alpha.test=ftp://127.0.0.1",
        "alpha.test=127.0.0.1:8001",
        "alpha.test=http://127.0.0.1:8001,beta.test",
    ],
)
def test_bad_peer_entries_are_refused(value: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="PUSHMAIL_PEERS"):
        parse_peers(value)


def _import_settings(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "PUSHMAIL_DATA_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "pushmail_site.settings",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-c", "import pushmail_site.settings"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_refuses_to_start_with_debug_off_and_the_default_secret(tmp_path: Path) -> None:
    result = _import_settings(tmp_path, DEBUG="0")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and "SECRET_KEY" in result.stderr


def test_refuses_the_default_secret_when_given_explicitly(tmp_path: Path) -> None:
    result = _import_settings(tmp_path, DEBUG="false", SECRET_KEY=DEFAULT_SECRET_KEY)
    assert result.returncode != 0 and "ImproperlyConfigured" in result.stderr


def test_starts_with_debug_off_and_a_real_secret(tmp_path: Path) -> None:
    result = _import_settings(
        tmp_path,
        DEBUG="0",
        SECRET_KEY="a-real-secret-from-the-environment",
        PUSHMAIL_KEY_ENCRYPTION_KEY="a-real-key-encryption-key-from-the-environment",
        PUSHMAIL_BASE_URL="https://mail.example.org",
    )
    assert result.returncode == 0, result.stderr


def test_starts_in_development_with_the_default_secret(tmp_path: Path) -> None:
    result = _import_settings(tmp_path, DEBUG="1")
    assert result.returncode == 0, result.stderr


def test_bad_peers_in_the_environment_stop_the_start(tmp_path: Path) -> None:
    result = _import_settings(tmp_path, DEBUG="1", PUSHMAIL_PEERS="alpha.test")
    assert result.returncode != 0 and "PUSHMAIL_PEERS" in result.stderr
