"""Encrypt the stored private signing keys with PUSHMAIL_KEY_ENCRYPTION_KEY (and decrypt them on the way back)."""

import base64

from django.db import migrations, models

from federation.keys import ENCRYPTED_PREFIX, decrypt_seed, encrypt_seed


def encrypt_keys(apps, schema_editor):
    SigningKey = apps.get_model("federation", "SigningKey")
    for key in SigningKey.objects.using(schema_editor.connection.alias).exclude(
        private_key__startswith=ENCRYPTED_PREFIX
    ):
        seed = base64.b64decode(key.private_key.encode("ascii"), validate=True)
        key.private_key = encrypt_seed(seed, key_id=key.key_id)
        key.save(update_fields=["private_key"])


def decrypt_keys(apps, schema_editor):
    SigningKey = apps.get_model("federation", "SigningKey")
    for key in SigningKey.objects.using(schema_editor.connection.alias).filter(
        private_key__startswith=ENCRYPTED_PREFIX
    ):
        seed = decrypt_seed(key.private_key, key_id=key.key_id)
        key.private_key = base64.b64encode(seed).decode("ascii")
        key.save(update_fields=["private_key"])


class Migration(migrations.Migration):
    dependencies = [("federation", "0002_cache_table")]
    operations = [
        migrations.AlterField(
            model_name="signingkey",
            name="private_key",
            field=models.TextField(
                help_text="The 32-byte Ed25519 seed, encrypted with PUSHMAIL_KEY_ENCRYPTION_KEY (federation.keys)."
            ),
        ),
        migrations.RunPython(encrypt_keys, decrypt_keys),
    ]
