"""The sender's copies of their sent mail: Sent, Trash, starring, and deleting them for good.

Every verb takes the user and ids and acts only on that user's messages: an id
that is not theirs raises ``NotFound`` before anything changes, so a selection
is applied whole or not at all. Recipients keep their copies whatever the
sender does with theirs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime

from django.db import transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from accounts.models import User

from .models import Message, MessageAttachment, SenderFolder
from .selectors import has_outgoing_work


class FolderError(ValueError):
    """Bad input for a folder action; the message is fit to show to the user."""


class NotFound(FolderError):
    """An id in the selection is not one of the user's (or no longer exists)."""


def _owned_messages(user: User, message_ids: Iterable[object]) -> QuerySet[Message]:
    ids: set[uuid.UUID] = set()
    for value in message_ids:
        try:
            ids.add(uuid.UUID(str(value)))
        except ValueError:
            raise NotFound("Some of the selected messages were not found.") from None
    if not ids:
        raise FolderError("Select at least one message first.")
    # Copies already deleted for good (hidden, kept for recipients) are not the sender's to act on.
    messages = Message.objects.filter(sender=user, pk__in=ids).exclude(
        sender_folder=SenderFolder.TRASH, sender_trashed_at__isnull=True
    )
    if set(messages.select_for_update().values_list("pk", flat=True)) != ids:
        raise NotFound("Some of the selected messages were not found.")
    return Message.objects.filter(pk__in=ids)


@transaction.atomic
def trash_sent(*, user: User, message_ids: Iterable[object]) -> tuple[int, int]:
    """Move the sender's copies to Trash (hidden from Sent); in Trash, delete them for good.

    Returns (trashed, deleted). Recipients keep their copies either way.
    """
    messages = _owned_messages(user, message_ids)
    deleted = forget_sender_copies(messages.filter(sender_folder=SenderFolder.TRASH))
    trashed = messages.filter(sender_folder=SenderFolder.SENT).update(
        sender_folder=SenderFolder.TRASH, sender_trashed_at=timezone.now()
    )
    return trashed, deleted


@transaction.atomic
def restore_sent(*, user: User, message_ids: Iterable[object]) -> int:
    return _owned_messages(user, message_ids).update(sender_folder=SenderFolder.SENT, sender_trashed_at=None)


@transaction.atomic
def star_sent(*, user: User, message_ids: Iterable[object], starred: bool = True) -> int:
    return _owned_messages(user, message_ids).update(sender_starred=starred)


def forget_sender_copies(messages: QuerySet[Message]) -> int:
    """Delete sender copies for good where nothing else needs the row; hide the rest.

    The Message row is also what recipients fetch the body and attachments from,
    what local recipients' entries point to, and what pending deliveries and
    withdrawals send: such rows stay, hidden from the sender (in Trash with no trash
    date), and a later sweep deletes them, with their attachment references, once
    they are no longer needed.
    """
    now = timezone.now()
    # Attachments stay offered until expires even once every domain fetched the body.
    offered = Q(withdrawn_at__isnull=True, expires_at__gt=now) & (
        Q(fetched_by_all_at__isnull=True) | Q(Exists(MessageAttachment.objects.filter(message=OuterRef("pk"))))
    )
    # Entries of local readers point at the row (mailbox.InboxEntry.local): it stays while they do.
    needed = has_outgoing_work() | Q(local_entries__isnull=False) | offered
    ids = list(messages.values_list("pk", flat=True))
    keep = Message.objects.filter(pk__in=ids).filter(needed)
    keep.update(sender_folder=SenderFolder.TRASH, sender_trashed_at=None)
    deleted = Message.objects.filter(pk__in=ids).exclude(pk__in=keep.values("pk"))
    count = deleted.count()
    deleted.delete()
    return count


def empty_sent_trash(*, older_than: datetime, user: User | None = None) -> tuple[int, int]:
    """Delete for good the sender copies in Trash since before ``older_than`` (one user's or everyone's).

    Returns (deleted, hidden): copies still needed by recipients or pending
    deliveries are hidden instead, and every sweep tries them again.
    """
    messages = Message.objects.filter(sender_folder=SenderFolder.TRASH, sender_trashed_at__lt=older_than)
    hidden = Message.objects.filter(sender_folder=SenderFolder.TRASH, sender_trashed_at__isnull=True)
    if user is not None:
        messages, hidden = messages.filter(sender=user), hidden.filter(sender=user)
    with transaction.atomic():
        due = Message.objects.filter(pk__in=list(messages.values_list("pk", flat=True)[:5000]))
        due_count = due.count()
        deleted = forget_sender_copies(due)
        earlier = forget_sender_copies(Message.objects.filter(pk__in=list(hidden.values_list("pk", flat=True)[:5000])))
    return deleted + earlier, due_count - deleted
