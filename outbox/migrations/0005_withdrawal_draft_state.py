import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("outbox", "0004_draft_client_key"),
    ]

    operations = [
        migrations.CreateModel(
            name="Withdrawal",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("domain", models.CharField(max_length=253)),
                (
                    "state",
                    models.CharField(
                        choices=[("pending", "Pending"), ("sent", "Sent"), ("failed", "Failed")],
                        default="pending",
                        max_length=8,
                    ),
                ),
                ("attempts", models.PositiveIntegerField(default=0)),
                ("next_attempt_at", models.DateTimeField(blank=True, null=True)),
                ("last_error", models.CharField(blank=True, max_length=500)),
                (
                    "acknowledged_at",
                    models.DateTimeField(
                        blank=True, help_text="When the domain acknowledged the withdrawal.", null=True
                    ),
                ),
                (
                    "message",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="withdrawals",
                        to="outbox.message",
                    ),
                ),
            ],
            options={
                "indexes": [models.Index(fields=["state", "next_attempt_at"], name="withdrawal_due")],
                "constraints": [
                    models.UniqueConstraint(fields=("message", "domain"), name="unique_withdrawal_per_domain")
                ],
            },
        ),
        migrations.AddField(
            model_name="draft",
            name="state",
            field=models.CharField(
                choices=[("draft", "Draft"), ("scheduled", "Scheduled"), ("sent", "Sent")],
                default="draft",
                max_length=9,
            ),
        ),
        migrations.RemoveIndex(model_name="draft", name="draft_due"),
        migrations.AddIndex(
            model_name="draft",
            index=models.Index(fields=["state", "send_at"], name="draft_due"),
        ),
    ]
