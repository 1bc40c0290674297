"""What encryption answers for the layers below it; loaded by EncryptionConfig.ready()."""

from __future__ import annotations

from federation import publickeys

from . import selectors


@publickeys.published_keys.register
def published_keys(*, address: str) -> list[publickeys.PublishedKey]:
    return [
        publickeys.PublishedKey(
            fingerprint=key.fingerprint,
            key=bytes(key.public_key),
            revoked=key.revoked_at is not None,
            created=key.key_created_at,
        )
        for key in selectors.published_keys_for_address(address=address)
    ]
