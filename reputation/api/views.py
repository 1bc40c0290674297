"""``POST /api/v1/inbox/<id>/spam/`` and ``/not-spam/``: a reader's spam report through the user API."""

from __future__ import annotations

from collections.abc import Callable

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.http import AuthedApiRequest
from accounts.models import User

from .. import services

ReportOutcomeSerializer = inline_serializer(
    "SpamReportOutcome",
    {
        "id": serializers.IntegerField(),
        "folder": serializers.CharField(),
        "spam": serializers.BooleanField(help_text="What this reader said: spam (true) or not spam (false)."),
        "repeated": serializers.BooleanField(help_text="The reader had already said the same; nothing changed."),
        "judged_spam": serializers.BooleanField(help_text="The message stands judged spam for this instance."),
        "detail": serializers.CharField(),
    },
)
ErrorSerializer = inline_serializer(
    "SpamReportError", {"error": serializers.CharField(), "detail": serializers.CharField()}
)


def _answer(request: AuthedApiRequest, entry_id: int, report: Callable[..., services.ReportOutcome]) -> Response:
    user: User = request.user
    try:
        outcome = report(user=user, entry_id=entry_id)
    except services.ReportRefused as refused:
        headers = {"Retry-After": str(refused.retry_after)} if refused.retry_after else None
        return Response({"error": refused.code, "detail": refused.detail}, status=refused.status, headers=headers)
    return Response(
        {
            "id": outcome.entry.pk,
            "folder": outcome.entry.folder,
            "spam": outcome.spam,
            "repeated": outcome.repeated,
            "judged_spam": outcome.judged_spam,
            "detail": outcome.detail,
        }
    )


class ReportSpamView(APIView):
    @extend_schema(
        request=None,
        responses={
            200: ReportOutcomeSerializer,
            400: ErrorSerializer,
            404: ErrorSerializer,
            409: ErrorSerializer,
            429: ErrorSerializer,
        },
    )
    def post(self, request: AuthedApiRequest, entry_id: int) -> Response:
        """Report a received message as spam: your copy moves to Spam, and your report counts towards a
        verdict for everyone here. A repeat changes nothing and says so (``repeated``). A notice from
        this instance is ``400 notice``; withdrawn mail ``409 withdrawn``; someone else's entry ``404``;
        more than ``PUSHMAIL_SPAM_REPORTS_PER_HOUR`` reports in the hour ``429 too_many_reports``
        (with ``Retry-After``)."""
        return _answer(request, entry_id, services.report_spam)


class ReportNotSpamView(APIView):
    @extend_schema(
        request=None,
        responses={
            200: ReportOutcomeSerializer,
            400: ErrorSerializer,
            404: ErrorSerializer,
            409: ErrorSerializer,
            429: ErrorSerializer,
        },
    )
    def post(self, request: AuthedApiRequest, entry_id: int) -> Response:
        """Mark a received message as not spam: your copy moves back to the Inbox (or the folder a
        verdict hid it from), and a spam report of yours on it is withdrawn."""
        return _answer(request, entry_id, services.report_not_spam)
