"""Withdrawals reaching inboxes: from another instance, or from a sender on this one."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from federation import payloads
from federation.inbound import WithdrawalResult
from outbox.models import Message
from pushmail_site.jobs import lock
from pushmail_site.states import transition, transition_rows

from . import search
from .models import EntryState, FetchState, InboxEntry, RemoteMessage, Transport
from .states import ENTRY, FETCH


def accept_withdrawal(*, origin: str, withdrawal: payloads.Withdrawal) -> WithdrawalResult | None:
    """Hide a withdrawn message from everyone who has not opened it; None if unknown here."""
    with transaction.atomic():
        remote = (
            lock(RemoteMessage.objects.all(), skip_locked=False)
            # Mail received by SMTP is this instance's to keep: no instance withdraws it.
            .filter(origin_domain=origin, global_id=withdrawal.global_id, transport=Transport.PUSHMAIL)
            .first()
        )
        if remote is None:
            return None
        if remote.state != FetchState.WITHDRAWN:
            transition(remote, FETCH, FetchState.WITHDRAWN, fields=_withdrawn_fields(remote))
            # Whoever had not opened it can no longer find it by its body either.
            InboxEntry.objects.filter(remote=remote, opened_at__isnull=True).update(
                search_document=search.entry_document(subject=remote.subject, sender=remote.sender)
            )
    return WithdrawalResult(fetched_before=remote.fetched_at is not None)


def _withdrawn_fields(remote: RemoteMessage) -> dict[str, Any]:
    fields: dict[str, Any] = {"withdrawn_at": timezone.now(), "next_attempt_at": None}
    if not InboxEntry.objects.filter(remote=remote, opened_at__isnull=False).exists():
        fields["content"] = None  # a cached body nobody opened is deleted
    return fields


def withdraw_local_entries(*, message: Message) -> int:
    """A sender here withdrew a message: its local readers who had not opened it lose it (and it is not unread)."""
    document = search.entry_document(subject=message.subject, sender=message.sender_address)
    unopened = InboxEntry.objects.filter(local=message, opened_at__isnull=True)
    fields = {"search_document": document, "read": True}
    return len(transition_rows(unopened, ENTRY, EntryState.WITHDRAWN, fields=fields))
