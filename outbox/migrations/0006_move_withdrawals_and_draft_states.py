"""Each delivery's withdrawal sub-state becomes a Withdrawal row; each draft gets its state."""

from django.db import migrations


def forwards(apps, schema_editor):
    Delivery = apps.get_model("outbox", "Delivery")
    Withdrawal = apps.get_model("outbox", "Withdrawal")
    Draft = apps.get_model("outbox", "Draft")
    Withdrawal.objects.bulk_create(
        Withdrawal(
            message_id=delivery.message_id,
            domain=delivery.domain,
            state=delivery.withdrawal,
            attempts=delivery.withdrawal_attempts,
            next_attempt_at=delivery.withdrawal_next_attempt_at,
            last_error=delivery.withdrawal_error,
            acknowledged_at=delivery.withdrawn_at,
        )
        for delivery in Delivery.objects.exclude(withdrawal="none").iterator()
    )
    Draft.objects.filter(sent_message__isnull=False).update(state="sent")
    Draft.objects.filter(sent_message__isnull=True, send_at__isnull=False).update(state="scheduled")


def backwards(apps, schema_editor):
    Delivery = apps.get_model("outbox", "Delivery")
    Withdrawal = apps.get_model("outbox", "Withdrawal")
    for withdrawal in Withdrawal.objects.iterator():
        Delivery.objects.filter(message_id=withdrawal.message_id, domain=withdrawal.domain).update(
            withdrawal=withdrawal.state,
            withdrawal_attempts=withdrawal.attempts,
            withdrawal_next_attempt_at=withdrawal.next_attempt_at,
            withdrawal_error=withdrawal.last_error,
            withdrawn_at=withdrawal.acknowledged_at,
        )


class Migration(migrations.Migration):
    dependencies = [
        ("outbox", "0005_withdrawal_draft_state"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
