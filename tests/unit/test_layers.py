"""The apps stay in layers: the contracts hold, every call up is answered, no import hides in a function."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

from django.dispatch import Signal

from pushmail_site.hooks import Hook

ROOT = Path(__file__).resolve().parents[2]
APPS = [
    "accounts",
    "attachments",
    "encryption",
    "federation",
    "gateway",
    "mailbox",
    "mailsettings",
    "newsletters",
    "outbox",
    "pushmail_site",
    "reputation",
    "webmail",
]


def _modules() -> list[str]:
    names = []
    for app in APPS:
        for info in pkgutil.walk_packages([str(ROOT / app)], prefix=f"{app}."):
            if ".migrations" not in info.name and not info.name.startswith("pushmail_site.wsgi"):
                names.append(info.name)
    return names


def test_the_import_contracts_hold() -> None:
    """No app imports a higher one, no module cycle inside an app, no user API imports an HTML view.

    The linter runs in its own process, from the checkout's top: it must see the files as they are,
    whatever the tests before it imported, and say which contract broke.
    """
    linter = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(
        [str(linter), "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_hook_and_signal_of_a_lower_app_is_answered() -> None:
    """A call up to an app that registered nothing would fail (a hook) or be lost (a signal)."""
    hooks, signals = {}, {}
    for name in _modules():
        for attribute, value in vars(importlib.import_module(name)).items():
            if isinstance(value, Hook):
                hooks[value.name] = value
            elif isinstance(value, Signal) and name.endswith(".signals"):
                signals[f"{name}.{attribute}"] = value
    assert len(hooks) >= 8 and len(signals) >= 5
    assert [name for name, hook in hooks.items() if not hook.answered] == []
    assert [name for name, signal in signals.items() if not signal.has_listeners()] == []


def _local_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            # The one place a function imports: an app's ready() loads its receivers once the models are.
            if path.name == "apps.py" and node.name == "ready":
                continue
            found += [
                f"{path.relative_to(ROOT)}:{inner.lineno}"
                for inner in ast.walk(node)
                if isinstance(inner, ast.Import | ast.ImportFrom)
            ]
    return found


def test_no_import_hides_inside_a_function() -> None:
    """An import inside a function dodging a cycle means the layers are wrong: fix the layers instead."""
    paths = [p for app in APPS for p in (ROOT / app).rglob("*.py") if "migrations" not in p.parts]
    assert [hit for path in paths for hit in _local_imports(path)] == []
