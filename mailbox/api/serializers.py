from __future__ import annotations

from drf_spectacular.utils import extend_schema_field, inline_serializer
from rest_framework import serializers

from ..models import InboxEntry
from ..selectors import attachment_items_for_entry, body_of

# The body as the reader gets it (docs/protocol.md §4.1 names): ``subject`` and ``from``
# are the verified body's, which may differ from the entry's only before it is fetched.
BODY_SCHEMA = inline_serializer(
    name="EntryBody",
    allow_null=True,
    fields={
        "subject": serializers.CharField(help_text="The subject of the verified body"),
        "from": serializers.CharField(help_text="The sender's address in the verified body"),
        "text": serializers.CharField(),
        "html": serializers.CharField(allow_null=True),
        "to": serializers.ListField(child=serializers.CharField()),
        "cc": serializers.ListField(child=serializers.CharField()),
        "date": serializers.CharField(allow_null=True, help_text="YYYY-MM-DDTHH:MM:SSZ; null for a notice"),
        "message_id": serializers.CharField(allow_null=True),
        "in_reply_to": serializers.CharField(allow_null=True),
        "references": serializers.ListField(child=serializers.CharField(), allow_null=True),
    },
)


#: What every listing of an entry gives; the detail adds the body and the fetch's state.
ENTRY_FIELDS = [
    "id",
    "sender",
    "sender_name",
    "subject",
    "received_at",
    "state",
    "read",
    "size",
    "folder",
    "conversation",
]


class EntryListSerializer(serializers.ModelSerializer):
    conversation = serializers.CharField(
        source="thread_key", read_only=True, help_text="The conversation's id (the Message-ID that started it)."
    )

    class Meta:
        model = InboxEntry
        fields = ENTRY_FIELDS
        read_only_fields = fields


class EntryDetailSerializer(serializers.ModelSerializer):
    body = serializers.SerializerMethodField()
    last_error = serializers.SerializerMethodField()
    last_attempt_at = serializers.SerializerMethodField()
    next_attempt_at = serializers.SerializerMethodField()
    digest = serializers.SerializerMethodField()
    attachments = serializers.SerializerMethodField()
    conversation = serializers.CharField(
        source="thread_key", read_only=True, help_text="The conversation's id (the Message-ID that started it)."
    )

    class Meta:
        model = InboxEntry
        fields = [
            *ENTRY_FIELDS,
            "digest",
            "last_error",
            "last_attempt_at",
            "next_attempt_at",
            "body",
            "attachments",
        ]
        read_only_fields = fields

    @extend_schema_field(BODY_SCHEMA)
    def get_body(self, entry: InboxEntry) -> dict | None:
        return body_of(entry)

    def get_last_error(self, entry: InboxEntry) -> str:
        return entry.remote.last_error if entry.remote else ""

    def get_last_attempt_at(self, entry: InboxEntry) -> str | None:
        value = entry.remote.last_attempt_at if entry.remote else None
        return value.isoformat() if value else None

    def get_next_attempt_at(self, entry: InboxEntry) -> str | None:
        value = entry.remote.next_attempt_at if entry.remote else None
        return value.isoformat() if value else None

    def get_attachments(self, entry: InboxEntry) -> list[dict]:
        """The manifest, each file with ``at_sender`` (not fetched here yet); download at
        ``/api/v1/inbox/<id>/attachments/<index>/``."""
        return [
            {"name": a.name, "type": a.content_type, "size": a.size, "digest": a.digest, "at_sender": a.at_sender}
            for a in attachment_items_for_entry(entry)
        ]

    def get_digest(self, entry: InboxEntry) -> str | None:
        if entry.remote:
            return entry.remote.digest
        return entry.local.digest if entry.local else None
