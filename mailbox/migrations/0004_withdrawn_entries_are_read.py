"""A withdrawn message is not unread: entries withdrawn before this rule are marked read."""

from django.db import migrations


def mark_withdrawn_read(apps, schema_editor):
    InboxEntry = apps.get_model("mailbox", "InboxEntry")
    InboxEntry.objects.filter(state="withdrawn", read=False).update(read=True)


class Migration(migrations.Migration):
    dependencies = [("mailbox", "0003_smtp_messages")]

    operations = [migrations.RunPython(mark_withdrawn_read, migrations.RunPython.noop)]
