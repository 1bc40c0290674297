from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from attachments.api import AttachmentUploadSerializer

from .. import rules
from ..bodies import manifest_of
from ..models import Message
from ..reach import withdrawal_scope
from ..selectors import domain_status


class SendSerializer(serializers.Serializer):
    """The shape of a message to send; what it may contain is outbox.rules', checked by send_message."""

    # The recipient cap is rules.max_recipients(), checked once by send_message.
    # Addresses keep their whitespace so that a trailing CR or LF is refused, not trimmed.
    to = serializers.ListField(
        child=serializers.CharField(max_length=320, trim_whitespace=False),
        required=False,
        default=list,
    )
    cc = serializers.ListField(
        child=serializers.CharField(max_length=320, trim_whitespace=False),
        required=False,
        default=list,
    )
    bcc = serializers.ListField(
        child=serializers.CharField(max_length=320, trim_whitespace=False),
        required=False,
        default=list,
    )
    subject = serializers.CharField(max_length=rules.MAX_SUBJECT, allow_blank=True, trim_whitespace=False)
    text = serializers.CharField(allow_blank=True, trim_whitespace=False, max_length=5_000_000)
    html = serializers.CharField(
        required=False, allow_null=True, allow_blank=True, trim_whitespace=False, max_length=5_000_000
    )
    in_reply_to = serializers.CharField(required=False, allow_blank=True, default="", max_length=rules.MAX_MESSAGE_ID)
    attachments = AttachmentUploadSerializer(many=True, required=False, default=list)


class RecipientSerializer(serializers.Serializer):
    address = serializers.CharField()
    kind = serializers.CharField()
    status = serializers.CharField()
    reason = serializers.CharField()


class DomainStatusSerializer(serializers.Serializer):
    domain = serializers.CharField(source="delivery.domain")
    local = serializers.BooleanField(source="delivery.local")
    state = serializers.CharField(source="delivery.state")
    attempts = serializers.IntegerField(source="delivery.attempts")
    next_attempt_at = serializers.DateTimeField(source="delivery.next_attempt_at")
    last_error = serializers.CharField(source="delivery.last_error")
    notified_at = serializers.DateTimeField(
        source="delivery.notified_at", help_text="When the domain answered (by SMTP: when its server took it)."
    )
    transport = serializers.ChoiceField(
        source="delivery.transport",
        choices=["federation", "smtp"],
        help_text="smtp: the domain has no Pushmail instance; the message itself went to its mail server.",
    )
    smtp_reply = serializers.CharField(
        source="delivery.smtp_reply", help_text='The receiving mail server\'s answer, e.g. "250 2.0.0 Ok: queued".'
    )
    recipients = RecipientSerializer(many=True)
    fetch_status = serializers.CharField()
    first_fetched_at = serializers.DateTimeField(allow_null=True)
    fetch_count = serializers.IntegerField()
    withdrawal = serializers.CharField(source="withdrawal_state")
    withdrawn_before_fetch = serializers.BooleanField(allow_null=True)
    offered = serializers.BooleanField(help_text="Whether this domain can still fetch the body.")
    by_smtp = serializers.BooleanField(
        help_text="Reached by ordinary email (SMTP), not Pushmail: a copy there cannot be withdrawn."
    )


class WithdrawalScopeSerializer(serializers.Serializer):
    """Which recipient domains Withdraw reaches: only Pushmail domains (and this server's own)."""

    pushmail_domains = serializers.ListField(child=serializers.CharField())
    smtp_domains = serializers.ListField(
        child=serializers.CharField(), help_text="Reached by ordinary email (SMTP): their copies cannot be withdrawn."
    )
    summary = serializers.CharField()


class OfferEndedSerializer(serializers.Serializer):
    """Why and since when recipient domains can no longer fetch the body (the sender keeps it)."""

    reason = serializers.ChoiceField(choices=["withdrawn", "retention_ended", "fetched_by_all"])
    at = serializers.DateTimeField()


class MessageSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(read_only=True)
    deliveries = serializers.SerializerMethodField()
    offered_to_recipients = serializers.SerializerMethodField()
    offer_ended = serializers.SerializerMethodField()
    attachments = serializers.SerializerMethodField()
    withdrawal_scope = serializers.SerializerMethodField()

    class Meta:
        model = Message
        fields = [
            "id",
            "message_id",
            "sender_address",
            "to",
            "cc",
            "bcc",
            "subject",
            "text",
            "html",
            "in_reply_to",
            "references",
            "date",
            "size",
            "digest",
            "expires_at",
            "withdrawn_at",
            "offered_to_recipients",
            "offer_ended",
            "attachments",
            "deliveries",
            "withdrawal_scope",
        ]
        read_only_fields = fields

    def get_offered_to_recipients(self, message: Message) -> bool:
        """Whether recipient domains can still fetch the body. The sender's copy stays either way."""
        return message.offer_end() is None

    @extend_schema_field(OfferEndedSerializer(allow_null=True))
    def get_offer_ended(self, message: Message) -> dict | None:
        end = message.offer_end()
        if end is None:
            return None
        return {"reason": end.api_reason, "at": serializers.DateTimeField().to_representation(end.at)}

    def get_attachments(self, message: Message) -> list[dict]:
        """The manifest: name, type, size and digest of each file, in order."""
        return manifest_of(message)

    @extend_schema_field(WithdrawalScopeSerializer)
    def get_withdrawal_scope(self, message: Message) -> dict:
        scope = withdrawal_scope(message)
        return {"pushmail_domains": scope.pushmail, "smtp_domains": scope.smtp, "summary": scope.summary}

    def get_deliveries(self, message: Message) -> list[dict]:
        # many=True makes a ListSerializer, whose data is a list: the stub types it as the class's dict.
        return DomainStatusSerializer(domain_status(message), many=True).data  # type: ignore[return-value]
