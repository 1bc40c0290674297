"""Every job's transitions are in one file per app: ``<app>/states.py``.

A reader looking for how a row of an app may move opens that app's states.py and
finds every graph of the app there; a graph declared anywhere else (a second
``*_states.py`` beside it) fails here.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from pushmail_site.states import StateGraph

ROOT = Path(__file__).resolve().parents[2]
NOT_APPS = {"tests", "bench", "tools"}


def _apps() -> list[str]:
    return sorted(
        path.parent.name
        for path in ROOT.glob("*/__init__.py")
        if path.parent.name not in NOT_APPS and not path.parent.name.startswith(".")
    )


def _graph_declarations() -> list[tuple[Path, int]]:
    """Where the project's code builds a StateGraph (tests and scripts aside)."""
    found = []
    for app in _apps():
        for path in sorted((ROOT / app).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call):
                    func = node.func
                    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                    if name == "StateGraph":
                        found.append((path.relative_to(ROOT), node.lineno))
    return found


def test_the_scan_finds_the_graphs() -> None:
    declared = {path.parts[0] for path, _ in _graph_declarations()}
    assert {"outbox", "mailbox", "reputation", "mailsettings", "federation"} <= declared


def test_every_graph_is_declared_in_its_apps_states_module() -> None:
    elsewhere = [f"{path}:{line}" for path, line in _graph_declarations() if path.parts[1:] != ("states.py",)]
    assert elsewhere == [], "declare every state graph of an app in <app>/states.py"


def test_each_apps_states_module_holds_all_of_its_graphs() -> None:
    for app in {path.parts[0] for path, _ in _graph_declarations()}:
        module = importlib.import_module(f"{app}.states")
        graphs = [value for value in vars(module).values() if isinstance(value, StateGraph)]
        lines = [line for path, line in _graph_declarations() if path.parts[0] == app]
        assert len(graphs) == len(lines), app
