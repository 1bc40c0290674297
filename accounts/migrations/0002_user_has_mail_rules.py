from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="user",
            name="has_mail_rules",
            field=models.BooleanField(
                default=False,
                editable=False,
                help_text="Has filters or a vacation reply turned on: new mail runs them (kept by the mail settings).",
            ),
        ),
    ]
