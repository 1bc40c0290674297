from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("outbox", "0006_move_withdrawals_and_draft_states"),
    ]

    operations = [
        migrations.RemoveIndex(model_name="delivery", name="outbox_deli_withdra_c890bd_idx"),
        migrations.RemoveField(model_name="delivery", name="withdrawal"),
        migrations.RemoveField(model_name="delivery", name="withdrawal_attempts"),
        migrations.RemoveField(model_name="delivery", name="withdrawal_error"),
        migrations.RemoveField(model_name="delivery", name="withdrawal_next_attempt_at"),
        migrations.RemoveField(model_name="delivery", name="withdrawn_at"),
    ]
