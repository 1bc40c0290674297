"""User API for attachments: files uploaded with a message (base64 in JSON); downloads are the inbox API's."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework import serializers

from accounts.models import User

from .filenames import clean_filename
from .services import AttachmentInput, check_new_files, store_upload


class AttachmentUploadSerializer(serializers.Serializer):
    """One file sent with a message through the API: its bytes in standard base64."""

    name = serializers.CharField(max_length=255)
    type = serializers.CharField(max_length=127, required=False, default="application/octet-stream")
    content = serializers.CharField(help_text="The file's bytes, standard base64.", trim_whitespace=False)

    def validate_content(self, value: str) -> bytes:
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise serializers.ValidationError("not valid base64") from exc


def store_api_attachments(*, user: User, files: list[dict[str, Any]]) -> list[AttachmentInput]:
    """Check every limit for the uploaded files, then store them (once each, by digest) for send_message.

    Nothing is stored when a limit is crossed (ValidationError naming the file and
    the limit). Call it inside ``storing_atomically()`` with the send, so that a
    send refused afterwards leaves no file behind either.
    """
    check_new_files(user=user, files=[(item["name"], len(item["content"])) for item in files])
    inputs = []
    for item in files:
        name = clean_filename(item["name"])
        blob = store_upload(file=SimpleUploadedFile(name, item["content"]))
        inputs.append(AttachmentInput(blob=blob, name=name, content_type=item["type"]))
    return inputs


__all__ = [
    "AttachmentUploadSerializer",
    "ValidationError",
    "store_api_attachments",
]
