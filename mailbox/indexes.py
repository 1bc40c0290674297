"""The full-text index for search: a GIN index that exists on PostgreSQL only.

mailbox.search matches ``to_tsvector('simple', search_document)`` on PostgreSQL
and falls back to substring matching elsewhere, so on SQLite (the embedded
default) the index would be useless and its ``USING gin`` is not even valid
there. Declaring it as a model index keeps it in Django's migration state; its
SQL is empty on any other database.
"""

from __future__ import annotations

from typing import Any

from django.contrib.postgres.indexes import GinIndex
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.backends.ddl_references import Statement


class PostgresGinIndex(GinIndex):
    """A GIN index created on PostgreSQL and skipped (an empty statement) elsewhere."""

    def create_sql(self, model: Any, schema_editor: BaseDatabaseSchemaEditor, using: str = "", **kwargs: Any) -> Any:
        if schema_editor.connection.vendor != "postgresql":
            return Statement("")
        return super().create_sql(model, schema_editor, using=using, **kwargs)

    def remove_sql(self, model: Any, schema_editor: BaseDatabaseSchemaEditor, **kwargs: Any) -> Any:
        if schema_editor.connection.vendor != "postgresql":
            return Statement("")
        return super().remove_sql(model, schema_editor, **kwargs)
