"""User API for attachments: upload with a message (base64 in JSON) and download an inbox entry's file."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import Http404
from django.http.response import HttpResponseBase
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .filenames import clean_filename
from .services import AttachmentInput, AttachmentUnavailable, blob_for_entry, check_new_files, store_upload


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


def store_api_attachments(*, user: Any, files: list[dict[str, Any]]) -> list[AttachmentInput]:
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


class EntryAttachmentView(APIView):
    """``GET /api/v1/inbox/<id>/attachments/<index>/``: the file's bytes, fetched from the sender on first use."""

    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    def get(self, request: Request, entry_id: int, index: int) -> HttpResponseBase:
        from mailbox.models import InboxEntry
        from webmail.views.attachments import serve_blob

        entry = InboxEntry.objects.owned_by(request.user).select_related("remote", "local").filter(pk=entry_id).first()
        if entry is None:
            raise Http404("no such entry")
        try:
            blob, item = blob_for_entry(entry=entry, index=index)
        except LookupError:
            raise Http404("no such attachment") from None
        except AttachmentUnavailable as problem:
            return Response({"error": problem.code, "detail": problem.message}, status=problem.status)
        return serve_blob(request, blob, name=item.name, content_type=item.content_type)


__all__ = ["AttachmentUploadSerializer", "EntryAttachmentView", "ValidationError", "store_api_attachments"]
