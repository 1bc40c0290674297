"""Models follow the apps' layers (README, "Layout"): a foreign key points at the model's own app or one below.

So each app's tables are created by its own migrations, after the apps below it,
and the attachments app (stored bytes) knows nothing of messages.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.apps import apps
from django.db.migrations.loader import MigrationLoader

ROOT = Path(__file__).resolve().parents[2]
#: Lowest first, as in pyproject.toml's import-linter "layers" contract.
LAYERS = ["accounts", "federation", "attachments", "outbox", "mailbox", "reputation"]


def test_no_foreign_key_points_to_a_higher_app() -> None:
    upward = [
        f"{model._meta.label}.{field.name} -> {field.related_model._meta.label}"
        for label in LAYERS
        for model in apps.get_app_config(label).get_models()
        for field in model._meta.get_fields()
        if field.concrete
        and field.is_relation
        and field.related_model is not None
        and field.related_model._meta.app_label in LAYERS
        and LAYERS.index(field.related_model._meta.app_label) > LAYERS.index(label)
    ]
    assert upward == []


def test_the_attachments_app_holds_only_the_stored_bytes() -> None:
    assert [model.__name__ for model in apps.get_app_config("attachments").get_models()] == ["Blob"]


@pytest.mark.django_db
def test_each_apps_migrations_start_with_one_initial_and_depend_only_on_lower_apps() -> None:
    for label in LAYERS:
        assert sorted((ROOT / label / "migrations").glob("0*.py"))[0].name == "0001_initial.py"
    graph = MigrationLoader(None, ignore_no_migrations=True).graph
    for app_label, name in graph.nodes:
        if app_label not in LAYERS:
            continue
        needs = {app for app, _ in graph.nodes[(app_label, name)].dependencies if app in LAYERS}
        assert all(LAYERS.index(app) <= LAYERS.index(app_label) for app in needs), (app_label, name, needs)
