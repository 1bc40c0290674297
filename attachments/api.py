"""User API for attachments: upload with a message (base64 in JSON) and download an inbox entry's file."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import Http404
from django.http.response import HttpResponseBase
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.http import AuthedApiRequest
from accounts.models import User

from .fetching import AttachmentStatus, attachment_for_entry, retry_attachment_now
from .filenames import clean_filename
from .services import AttachmentInput, check_new_files, human_size, store_upload

# How long an API client is asked to wait before asking again for a file being fetched.
FETCH_POLL_SECONDS = 1


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


class EntryAttachmentView(APIView):
    """``GET /api/v1/inbox/<id>/attachments/<index>/``: the file's bytes, or ``202`` while they are fetched.

    The first request for a file still at the sender's starts its fetch (one per
    message and file, whoever asks) and is answered at once: ``202`` with the
    fetch's status and a ``Retry-After``, until the bytes are here.
    """

    @extend_schema(responses={(200, "application/octet-stream"): bytes, 202: dict})
    def get(self, request: AuthedApiRequest, entry_id: int, index: int) -> HttpResponseBase:
        return _answer(request, entry_id, index, attachment_for_entry)


class EntryAttachmentRetryView(APIView):
    """``POST /api/v1/inbox/<id>/attachments/<index>/retry/``: try an unavailable file's fetch now."""

    @extend_schema(request=None, responses={(200, "application/octet-stream"): bytes, 202: dict})
    def post(self, request: AuthedApiRequest, entry_id: int, index: int) -> HttpResponseBase:
        return _answer(request, entry_id, index, retry_attachment_now)


def _answer(
    request: AuthedApiRequest, entry_id: int, index: int, ask: Callable[..., AttachmentStatus]
) -> HttpResponseBase:
    from mailbox.models import InboxEntry
    from webmail.views.attachments import serve_blob

    entry = InboxEntry.objects.owned_by(request.user).select_related("remote", "local").filter(pk=entry_id).first()
    if entry is None:
        raise Http404("no such entry")
    try:
        status = ask(entry=entry, index=index)
    except LookupError:
        raise Http404("no such attachment") from None
    if status.blob is not None:
        return serve_blob(request, status.blob, name=status.item.name, content_type=status.item.content_type)
    if status.in_flight:
        return _fetching(status)
    problem = status.problem
    assert problem is not None
    data: dict[str, Any] = {"error": problem.code, "detail": problem.message}
    if status.next_try is not None:
        data.update(status="unavailable", next_attempt_at=status.next_try.isoformat())
    return Response(data, status=problem.status)


def _fetching(status: AttachmentStatus) -> Response:
    item = status.item
    data = {
        "status": "fetching",
        "detail": f"{item.name} ({human_size(item.size)}) is being fetched from the sender's server; ask again.",
        "size": item.size,
    }
    return Response(data, status=202, headers={"Retry-After": str(FETCH_POLL_SECONDS)})


__all__ = [
    "AttachmentUploadSerializer",
    "EntryAttachmentRetryView",
    "EntryAttachmentView",
    "ValidationError",
    "store_api_attachments",
]
