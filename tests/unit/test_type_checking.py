"""mypy's configuration covers every app, and nothing in it switches checking off.

mypy itself runs in `make lint` and CI; these tests keep its scope from shrinking
unnoticed: a new app left out of ``files``, or an override that ignores errors.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Scripts and tests around the code, not the code the instance runs.
NOT_APPS = {"tests", "bench", "tools"}


@pytest.fixture(scope="module")
def mypy_config() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        config: dict[str, Any] = tomllib.load(f)["tool"]["mypy"]
    return config


def _packages() -> set[str]:
    return {
        path.parent.name
        for path in ROOT.glob("*/__init__.py")
        if path.parent.name not in NOT_APPS and not path.parent.name.startswith(".")
    }


def test_every_package_of_the_project_is_type_checked(mypy_config: dict[str, Any]) -> None:
    assert _packages() >= {"accounts", "federation", "outbox", "mailbox", "webmail", "pushmail_site"}
    assert _packages() <= set(mypy_config["files"])


def test_every_function_is_typed_and_checked(mypy_config: dict[str, Any]) -> None:
    for option in ("disallow_untyped_defs", "disallow_incomplete_defs", "check_untyped_defs", "warn_unused_ignores"):
        assert mypy_config.get(option) is True, option
    assert "ignore-without-code" in mypy_config.get("enable_error_code", [])
    assert {"mypy_django_plugin.main", "mypy_drf_plugin.main"} <= set(mypy_config["plugins"])


def test_no_override_switches_checking_off(mypy_config: dict[str, Any]) -> None:
    for override in mypy_config.get("overrides", []):
        assert not override.get("ignore_errors"), override["module"]
        assert override.get("check_untyped_defs", True), override["module"]
        assert override.get("follow_imports", "normal") != "skip", override["module"]


def test_the_wire_protocol_package_stays_strictest(mypy_config: dict[str, Any]) -> None:
    federation = next(o for o in mypy_config["overrides"] if o["module"] == ["federation.*"])
    for option in ("disallow_untyped_calls", "disallow_any_generics", "warn_return_any", "no_implicit_reexport"):
        assert federation.get(option) is True, option
