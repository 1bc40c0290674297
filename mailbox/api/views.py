from __future__ import annotations

from django.db.models import QuerySet
from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.http import AuthedApiRequest

from .. import selectors, services
from ..models import InboxEntry
from .serializers import EntryDetailSerializer, EntryListSerializer


def _entry_or_404(request: AuthedApiRequest, entry_id: int) -> InboxEntry:
    try:
        return selectors.entry_for(user=request.user, entry_id=entry_id)
    except InboxEntry.DoesNotExist as exc:
        raise Http404("no such entry") from exc


class InboxListView(generics.ListAPIView):
    serializer_class = EntryListSerializer
    request: AuthedApiRequest

    def get_queryset(self) -> QuerySet[InboxEntry]:
        return selectors.inbox_for(user=self.request.user)


class InboxEntryView(APIView):
    @extend_schema(responses={200: EntryDetailSerializer, 202: EntryDetailSerializer})
    def get(self, request: AuthedApiRequest, entry_id: int) -> Response:
        """The entry with its body; 202 while the body is still at the sender's (a fetch is queued)."""
        entry = services.open_entry(entry=_entry_or_404(request, entry_id))
        entry = _entry_or_404(request, entry_id)
        data = EntryDetailSerializer(entry).data
        waiting = data["body"] is None and selectors.body_at_sender(entry)
        return Response(data, status=status.HTTP_202_ACCEPTED if waiting else status.HTTP_200_OK)


class InboxRetryView(APIView):
    @extend_schema(request=None, responses=EntryDetailSerializer)
    def post(self, request: AuthedApiRequest, entry_id: int) -> Response:
        """Retry an unavailable fetch at once."""
        entry = services.retry_fetch_now(entry=_entry_or_404(request, entry_id))
        return Response(EntryDetailSerializer(entry).data, status=status.HTTP_202_ACCEPTED)
