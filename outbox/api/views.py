from __future__ import annotations

import math
from uuid import UUID

from django.conf import settings
from django.core.exceptions import ValidationError
from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.exceptions import ValidationError as ApiValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.http import AuthedApiRequest
from attachments.api import store_api_attachments
from attachments.services import storing_atomically

from .. import selectors, services
from ..models import Message
from ..rules import human_size
from .serializers import MessageSerializer, SendSerializer


def _message_or_404(request: AuthedApiRequest, message_id: UUID) -> Message:
    try:
        return selectors.sent_message_detail(user=request.user, message_id=message_id)
    except Message.DoesNotExist as exc:
        raise Http404("no such message") from exc


class MessageCreateView(APIView):
    @staticmethod
    def max_body_bytes() -> int:
        """The largest JSON body a message can need: its attachments in base64, plus the rest of the message."""
        files = settings.PUSHMAIL_MAX_MESSAGE_ATTACHMENTS_BYTES
        return settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 4 * math.ceil(files / 3)

    @staticmethod
    def max_body_reason() -> str:
        return (
            f"{human_size(settings.PUSHMAIL_MAX_MESSAGE_ATTACHMENTS_BYTES)} of attachments, base64-encoded, "
            f"plus {human_size(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)} for the rest of the message"
        )

    @extend_schema(request=SendSerializer, responses={201: MessageSerializer})
    def post(self, request: AuthedApiRequest) -> Response:
        serializer = SendSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        try:
            # Every limit is checked before a byte is stored; a send refused later takes the stored files with it.
            with storing_atomically():
                attachments = store_api_attachments(user=request.user, files=data.pop("attachments", []))
                message = services.send_message(sender=request.user, attachments=attachments, **data)
        except ValidationError as exc:
            raise ApiValidationError(
                exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages}
            ) from exc
        detail = selectors.sent_message_detail(user=request.user, message_id=message.pk)
        return Response(MessageSerializer(detail).data, status=status.HTTP_201_CREATED)


class MessageDetailView(APIView):
    @extend_schema(responses=MessageSerializer)
    def get(self, request: AuthedApiRequest, message_id: UUID) -> Response:
        return Response(MessageSerializer(_message_or_404(request, message_id)).data)


class MessageWithdrawView(APIView):
    @extend_schema(request=None, responses=MessageSerializer)
    def post(self, request: AuthedApiRequest, message_id: UUID) -> Response:
        message = _message_or_404(request, message_id)
        services.withdraw_message(message=message)
        return Response(MessageSerializer(_message_or_404(request, message_id)).data)
