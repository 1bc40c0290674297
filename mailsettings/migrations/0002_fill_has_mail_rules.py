"""Set ``User.has_mail_rules`` for the mailboxes that have filters or a vacation reply turned on."""

from typing import Any

from django.db import migrations
from django.db.models import Exists, OuterRef, Q


def fill(apps: Any, schema_editor: Any) -> None:
    User = apps.get_model("accounts", "User")
    Filter = apps.get_model("mailsettings", "Filter")
    Vacation = apps.get_model("mailsettings", "Vacation")
    User.objects.filter(
        Q(Exists(Filter.objects.filter(owner=OuterRef("pk"))))
        | Q(Exists(Vacation.objects.filter(owner=OuterRef("pk"), enabled=True)))
    ).update(has_mail_rules=True)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_user_has_mail_rules"),
        ("mailsettings", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(fill, migrations.RunPython.noop),
    ]
