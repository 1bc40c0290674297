from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db.models import QuerySet
from django.http import Http404
from django.http.response import HttpResponseBase
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import ValidationError as ApiValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.http import AuthedApiRequest
from attachments.responses import serve_blob
from pushmail_site.sizes import human_size

from .. import selectors, services
from ..models import EntryState, Folder, InboxEntry
from ..received_attachments import AttachmentStatus, attachment_for_entry, retry_attachment_now
from .serializers import EntryDetailSerializer, EntryListSerializer

# How long an API client is asked to wait before asking again for a file being fetched.
FETCH_POLL_SECONDS = 1


def _entry_or_404(request: AuthedApiRequest, entry_id: int) -> InboxEntry:
    try:
        return selectors.entry_for(user=request.user, entry_id=entry_id)
    except InboxEntry.DoesNotExist as exc:
        raise Http404("no such entry") from exc


class InboxListView(generics.ListAPIView):
    serializer_class = EntryListSerializer
    request: AuthedApiRequest

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "folder", str, enum=list(Folder.values), description="Only the entries in this folder (default: all)."
            ),
            OpenApiParameter(
                "conversation", str, description="Only the entries of this conversation (an entry's `conversation`)."
            ),
        ]
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """The user's entries, newest first, each with the ``folder`` it is in (a spam verdict moves
        unopened copies to ``spam``) and its ``conversation``; ``?folder=inbox`` lists one folder, an
        unknown one is a 400; ``?conversation=<id>`` lists one conversation."""
        return super().get(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet[InboxEntry]:
        folder = self.request.query_params.get("folder")
        if folder is not None and folder not in Folder.values:
            known = ", ".join(Folder.values)
            raise ApiValidationError({"folder": [f"Unknown folder {folder[:40]!r}: one of {known}."]})
        entries = selectors.inbox_for(user=self.request.user, folder=folder)
        conversation = self.request.query_params.get("conversation")
        if conversation is not None:
            if not conversation or len(conversation) > 400:
                raise ApiValidationError({"conversation": ["A conversation id is 1 to 400 characters."]})
            entries = entries.filter(thread_key=conversation)
        return entries


class InboxEntryView(APIView):
    @extend_schema(responses={200: EntryDetailSerializer, 202: EntryDetailSerializer})
    def get(self, request: AuthedApiRequest, entry_id: int) -> Response:
        """The entry with its body; 202 while the body is still at the sender's (a fetch is queued).

        A copy a spam verdict hid before its owner saw it is answered 200 with no body: none is coming."""
        entry = services.open_entry(entry=_entry_or_404(request, entry_id))
        entry = _entry_or_404(request, entry_id)
        if entry.opened_at is None and entry.state == EntryState.FETCHED:
            # The body arrived between the two reads: the reader gets it now, so they have seen it.
            entry = services.open_entry(entry=entry)
        data = EntryDetailSerializer(entry).data
        waiting = data["body"] is None and selectors.body_on_its_way(entry)
        return Response(data, status=status.HTTP_202_ACCEPTED if waiting else status.HTTP_200_OK)


class InboxRetryView(APIView):
    @extend_schema(request=None, responses=EntryDetailSerializer)
    def post(self, request: AuthedApiRequest, entry_id: int) -> Response:
        """Retry an unavailable fetch at once."""
        entry = services.retry_fetch_now(entry=_entry_or_404(request, entry_id))
        return Response(EntryDetailSerializer(entry).data, status=status.HTTP_202_ACCEPTED)


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
    entry = _entry_or_404(request, entry_id)
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
