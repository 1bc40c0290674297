"""The sender keeps a sent body: "purged" becomes "no longer offered to recipient domains".

``body_purged_at`` was set when retention ended or when every recipient domain had
fetched the body (and the text was erased then). Retention is now read from
``expires_at`` itself, so only the second meaning stays, as ``fetched_by_all_at``.
"""

from django.db import migrations, models
from django.db.models import F


def keep_only_fetched_by_all(apps, schema_editor):
    Message = apps.get_model("outbox", "Message")
    # Marked when retention ended, not because every domain fetched it.
    Message.objects.filter(fetched_by_all_at__gte=F("expires_at")).update(fetched_by_all_at=None)


class Migration(migrations.Migration):
    dependencies = [
        ("outbox", "0002_draft_draftattachment_messageattachment_and_more"),
    ]

    operations = [
        migrations.RenameField(model_name="message", old_name="body_purged_at", new_name="fetched_by_all_at"),
        migrations.AlterField(
            model_name="message",
            name="fetched_by_all_at",
            field=models.DateTimeField(
                blank=True,
                help_text="When every recipient domain allowed to fetch the body had fetched it.",
                null=True,
            ),
        ),
        migrations.RunPython(keep_only_fetched_by_all, migrations.RunPython.noop),
    ]
