"""Production settings: `manage.py check --deploy` is clean, HTTPS is enforced behind the TLS proxy, and the
instance refuses to start without what it cannot guess (its public base URL, the key-encryption key).

Production settings are read once per process, so each case runs Django in a subprocess with the
environment an operator would give it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from accounts.models import User
from federation import discovery

ROOT = Path(__file__).resolve().parents[2]

PRODUCTION = {
    "DEBUG": "0",
    "SECRET_KEY": "Zq8vN3-production-like-secret-key-for-the-deploy-check-4f9XcW2pLk7",
    "PUSHMAIL_KEY_ENCRYPTION_KEY": "k3Y-encryption-key-for-the-deploy-check-8d1Qa",
    "PUSHMAIL_BASE_URL": "https://mail.example.org",
    "BEHIND_TLS_PROXY": "1",
    "ALLOWED_HOSTS": "mail.example.org",
}


def _run(tmp_path: Path, args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "PUSHMAIL_DATA_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "pushmail_site.settings",
        **env,
    }
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )


def _import_settings(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return _run(tmp_path, ["-c", "import pushmail_site.settings"], **env)


# --- check --deploy --------------------------------------------------------------------------------------


def test_check_deploy_is_clean_in_production_settings(tmp_path: Path) -> None:
    result = _run(tmp_path, ["manage.py", "check", "--deploy", "--fail-level", "WARNING"], **PRODUCTION)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "System check identified no issues" in output, output
    assert "WARNING" not in output and "security.W" not in output


def test_check_deploy_is_clean_with_hsts_for_subdomains_and_preload(tmp_path: Path) -> None:
    result = _run(
        tmp_path,
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        **PRODUCTION,
        PUSHMAIL_HSTS_INCLUDE_SUBDOMAINS="1",
        PUSHMAIL_HSTS_PRELOAD="1",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "no issues (0 silenced)" in output, output


_PROBE = """
import json, django
django.setup()
from django.test import Client
client = Client(HTTP_HOST="mail.example.org")
out = {}
for name, path, headers in [
    ("https", "/accounts/login/", {"HTTP_X_FORWARDED_PROTO": "https"}),
    ("http", "/accounts/login/", {}),
    ("healthz", "/healthz", {}),
]:
    response = client.get(path, **headers)
    out[name] = {"status": response.status_code, **{k.lower(): v for k, v in response.headers.items()}}
print(json.dumps(out))
"""


def _probe(tmp_path: Path, **env: str) -> dict[str, Any]:
    result = _run(tmp_path, ["-c", _PROBE], **env)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_behind_the_tls_proxy_browsers_get_hsts_and_http_is_redirected(tmp_path: Path) -> None:
    answers = _probe(tmp_path, **PRODUCTION)
    https = answers["https"]
    assert https["status"] == 200
    assert https["strict-transport-security"] == "max-age=31536000"  # a year; no includeSubDomains by default
    assert https["x-frame-options"] == "DENY"
    assert answers["http"]["status"] == 301
    assert answers["http"]["location"] == "https://mail.example.org/accounts/login/"
    # A load balancer's health check over plain http is answered, not redirected.
    assert answers["healthz"]["status"] != 301


def test_hsts_is_configurable(tmp_path: Path) -> None:
    answers = _probe(
        tmp_path, **{**PRODUCTION, "PUSHMAIL_HSTS_SECONDS": "600", "PUSHMAIL_HSTS_INCLUDE_SUBDOMAINS": "1"}
    )
    assert answers["https"]["strict-transport-security"] == "max-age=600; includeSubDomains"


# --- what production refuses to start without ------------------------------------------------------------


def test_production_settings_load(tmp_path: Path) -> None:
    result = _import_settings(tmp_path, **PRODUCTION)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"PUSHMAIL_BASE_URL": ""}, "PUSHMAIL_BASE_URL is not set"),
        ({"PUSHMAIL_BASE_URL": "http://mail.example.org"}, "must use https"),
        ({"PUSHMAIL_BASE_URL": "mail.example.org"}, "PUSHMAIL_BASE_URL"),
        ({"PUSHMAIL_BASE_URL": "https://mail.example.org/?x=1"}, "PUSHMAIL_BASE_URL"),
        ({"PUSHMAIL_KEY_ENCRYPTION_KEY": ""}, "PUSHMAIL_KEY_ENCRYPTION_KEY is not set"),
        ({"PUSHMAIL_KEY_ENCRYPTION_KEY": "short"}, "at least 32 characters"),
        ({"PUSHMAIL_KEY_ENCRYPTION_KEY": PRODUCTION["SECRET_KEY"]}, "differ from SECRET_KEY"),
    ],
)
def test_production_refuses_to_start_without(tmp_path: Path, change: dict[str, str], message: str) -> None:
    env = {**PRODUCTION, **change}
    env = {k: v for k, v in env.items() if v}
    result = _import_settings(tmp_path, **env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and message in result.stderr, result.stderr


@pytest.mark.parametrize("base", ["http://127.0.0.1:8001", "http://alpha.localhost:8001", "http://[::1]:8002"])
def test_plain_http_base_url_is_allowed_on_loopback_only(tmp_path: Path, base: str) -> None:
    # Instances side by side on one machine (the two-instance tests) run with DEBUG off on loopback.
    result = _import_settings(tmp_path, **{**PRODUCTION, "PUSHMAIL_BASE_URL": base})
    assert result.returncode == 0, result.stderr


def test_development_needs_neither(tmp_path: Path) -> None:
    result = _import_settings(tmp_path, DEBUG="1")
    assert result.returncode == 0, result.stderr


# --- development: discovery names the host it was asked on -----------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("host", "secure", "api"),
    [
        ("alpha.localhost:8001", False, "http://alpha.localhost:8001/federation/v1/"),
        ("mail.alpha.test", True, "https://mail.alpha.test/federation/v1/"),
    ],
)
def test_without_a_base_url_development_discovery_uses_the_request(
    alice: User, settings: Any, host: str, secure: bool, api: str
) -> None:
    settings.DEBUG = True
    settings.PUSHMAIL_BASE_URL = ""
    settings.ALLOWED_HOSTS = [".localhost", "mail.alpha.test"]
    response = Client().get(discovery.WELL_KNOWN_PATH, HTTP_HOST=host, secure=secure)
    assert response.status_code == 200
    assert response.json()["api"] == api
    assert "Host" in response.headers.get("Vary", "")


@pytest.mark.django_db
def test_the_configured_base_url_wins_over_the_request(alice: User, settings: Any) -> None:
    settings.PUSHMAIL_BASE_URL = "https://mail.alpha.test"
    settings.ALLOWED_HOSTS = ["other.localhost"]
    response = Client().get(discovery.WELL_KNOWN_PATH, HTTP_HOST="other.localhost")
    assert response.json()["api"] == "https://mail.alpha.test/federation/v1/"


@pytest.mark.django_db
def test_a_host_not_allowed_gets_no_document(alice: User, settings: Any) -> None:
    settings.PUSHMAIL_BASE_URL = ""
    settings.ALLOWED_HOSTS = ["alpha.localhost"]
    response = Client().get(discovery.WELL_KNOWN_PATH, HTTP_HOST="evil.example")
    assert response.status_code == 400
