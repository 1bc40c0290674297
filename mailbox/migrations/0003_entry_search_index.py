"""Full-text index for search, on PostgreSQL only.

A GIN index on the expression that mailbox.search queries with:
to_tsvector('simple', search_document). The 'simple' configuration (no stemming,
no stop words) suits mail: addresses, names and many languages are found as typed.
SQLite has no such index; search there falls back to substring matching.
"""

from django.db import migrations

INDEX = "mailbox_entry_search_fts"


def create_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(
        f"CREATE INDEX IF NOT EXISTS {INDEX} ON mailbox_inboxentry "
        "USING gin (to_tsvector('simple', search_document))"
    )


def drop_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f"DROP INDEX IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    dependencies = [
        ("mailbox", "0002_allowedsender_label_and_more"),
    ]

    operations = [
        migrations.RunPython(create_index, drop_index, elidable=False),
    ]
