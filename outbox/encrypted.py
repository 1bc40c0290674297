"""Sending a message the sender's browser encrypted (docs/protocol.md §4.6): only ciphertext reaches here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.core.exceptions import ValidationError

from accounts.models import User
from attachments.services import AttachmentInput, store_upload
from federation import payloads

from .models import Message
from .rules import parse_addresses
from .sending import send_message

# OpenPGP packet tags a message may start with (RFC 4880 §4.3): a public-key or a symmetric-key
# encrypted session key.
_SESSION_KEY_TAGS = {1, 3}
ENCRYPTED_FILE_TYPE = "application/octet-stream"


def first_packet_tag(data: bytes) -> int | None:
    """The tag of the first OpenPGP packet of binary data (RFC 4880 §4.2), None when it is not one."""
    if not data or not data[0] & 0x80:
        return None
    if data[0] & 0x40:  # new format
        return data[0] & 0x3F
    return (data[0] >> 2) & 0x0F


def is_encrypted_file(head: bytes) -> bool:
    return first_packet_tag(head) in _SESSION_KEY_TAGS


def send_encrypted(
    *,
    sender: User,
    to: str,
    cc: str = "",
    bcc: str = "",
    armored: str,
    files: Sequence[Any] = (),
    in_reply_to: str = "",
) -> Message:
    """Store and send a message encrypted in the browser: the armored PGP/MIME message and encrypted files.

    The subject travels only inside the ciphertext; outside it is the placeholder. Each file must
    be an OpenPGP message (binary); it is attached as ``encrypted-N.pgp`` so that not even its name
    is left in the clear. Raises ValidationError naming the field.
    """
    errors: dict[str, list[str]] = {}
    recipients: dict[str, list[str]] = {}
    for name, value in (("to", to), ("cc", cc), ("bcc", bcc)):
        try:
            recipients[name] = parse_addresses(value, name)
        except ValidationError as exc:
            errors[name] = exc.messages
    if not payloads.is_armored_message(armored):
        errors["text"] = ["the encrypted message is not one ASCII-armored OpenPGP message"]
    for i, file in enumerate(files):
        file.seek(0)
        head = file.read(2)
        file.seek(0)
        if not is_encrypted_file(head):
            errors.setdefault("attachments", []).append(f"file {i + 1} is not an encrypted OpenPGP message")
    if errors:
        raise ValidationError(errors)
    attachments = [
        AttachmentInput(blob=store_upload(file=file), name=f"encrypted-{i + 1}.pgp", content_type=ENCRYPTED_FILE_TYPE)
        for i, file in enumerate(files)
    ]
    return send_message(
        sender=sender,
        to=recipients["to"],
        cc=recipients["cc"],
        bcc=recipients["bcc"],
        subject=payloads.ENCRYPTED_SUBJECT,
        text=armored.strip() + "\n",
        html=None,
        in_reply_to=in_reply_to,
        attachments=attachments,
        encrypted=True,
    )
