"""Folder work on a user's own copies: move, read/unread, star, labels, Trash and its emptying.

Every verb takes the user and ids and acts only on that user's rows: an id that is
not the user's raises ``NotFound`` before anything changes, so a selection is
applied whole or not at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from accounts.models import User
from outbox.models import Message, MessageAttachment, SenderFolder
from outbox.selectors import has_outgoing_work

from .models import Folder, InboxEntry, Label


class FolderError(ValueError):
    """Bad input for a folder action; the message is fit to show to the user."""


class NotFound(FolderError):
    """An id in the selection is not one of the user's (or no longer exists)."""


def _ids(values: Iterable[object]) -> set[int]:
    ids: set[int] = set()
    for value in values:
        try:
            ids.add(int(str(value)))
        except ValueError:
            raise NotFound("Some of the selected messages were not found.") from None
    if not ids:
        raise FolderError("Select at least one message first.")
    return ids


def _owned(user: User, entry_ids: Iterable[object]) -> QuerySet[InboxEntry]:
    """The user's entries with these ids, locked; NotFound if any id is not the user's."""
    ids = _ids(entry_ids)
    entries = InboxEntry.objects.owned_by(user).filter(pk__in=ids)
    found = set(entries.select_for_update().values_list("pk", flat=True))
    if found != ids:
        raise NotFound("Some of the selected messages were not found.")
    return InboxEntry.objects.filter(pk__in=ids)


@transaction.atomic
def move_entries(*, user: User, entry_ids: Iterable[object], folder: str) -> int:
    """Move entries to inbox, archive, spam or trash; return how many."""
    if folder not in Folder.values:
        raise FolderError(f"There is no folder called {folder!r}.")
    entries = _owned(user, entry_ids)
    if folder == Folder.TRASH:
        # Only entries newly moved to Trash start their 30 days.
        entries.exclude(folder=Folder.TRASH).update(folder=folder, trashed_at=timezone.now())
        return entries.count()
    return entries.update(folder=folder, trashed_at=None)


@transaction.atomic
def mark_read(*, user: User, entry_ids: Iterable[object], read: bool = True) -> int:
    """Mark entries read (or unread with ``read=False``)."""
    return _owned(user, entry_ids).update(read=read)


@transaction.atomic
def star(*, user: User, entry_ids: Iterable[object], starred: bool = True) -> int:
    """Star entries (or unstar with ``starred=False``)."""
    return _owned(user, entry_ids).update(starred=starred)


def _label(user: User, label_id: object) -> Label:
    try:
        return Label.objects.get(owner=user, pk=int(str(label_id)))
    except (Label.DoesNotExist, ValueError):
        raise NotFound("That label was not found.") from None


@transaction.atomic
def apply_label(*, user: User, entry_ids: Iterable[object], label_id: int) -> int:
    """Put one of the user's labels on entries (already labelled ones are left as they are)."""
    label = _label(user, label_id)
    ids = list(_owned(user, entry_ids).values_list("pk", flat=True))
    through = InboxEntry.labels.through
    through.objects.bulk_create(
        [through(inboxentry_id=pk, label_id=label.pk) for pk in ids],  # type: ignore[misc]
        ignore_conflicts=True,
    )
    return len(ids)


@transaction.atomic
def remove_label(*, user: User, entry_ids: Iterable[object], label_id: int) -> int:
    label = _label(user, label_id)
    ids = list(_owned(user, entry_ids).values_list("pk", flat=True))
    deleted, _ = InboxEntry.labels.through.objects.filter(inboxentry_id__in=ids, label_id=label.pk).delete()
    return deleted


@transaction.atomic
def delete(*, user: User, entry_ids: Iterable[object]) -> tuple[int, int]:
    """Move entries to Trash; entries already in Trash are deleted for good. Returns (trashed, deleted)."""
    entries = _owned(user, entry_ids)
    _, per_model = entries.filter(folder=Folder.TRASH).delete()
    deleted = per_model.get(InboxEntry._meta.label, 0)
    trashed = entries.exclude(folder=Folder.TRASH).update(folder=Folder.TRASH, trashed_at=timezone.now())
    return trashed, deleted


# --- Labels -------------------------------------------------------------------------------


def _clean_label_name(name: str) -> str:
    cleaned = " ".join((name or "").split())
    if not cleaned:
        raise FolderError("A label needs a name.")
    if len(cleaned) > 60:
        raise FolderError("A label name can be at most 60 characters.")
    return cleaned


def create_label(*, user: User, name: str) -> Label:
    cleaned = _clean_label_name(name)
    try:
        with transaction.atomic():
            return Label.objects.create(owner=user, name=cleaned)
    except IntegrityError:
        raise FolderError(f"You already have a label called “{cleaned}”.") from None


def rename_label(*, user: User, label_id: int, name: str) -> Label:
    label = _label(user, label_id)
    cleaned = _clean_label_name(name)
    if Label.objects.filter(owner=user, name=cleaned).exclude(pk=label.pk).exists():
        raise FolderError(f"You already have a label called “{cleaned}”.")
    label.name = cleaned
    label.save(update_fields=["name"])
    return label


def delete_label(*, user: User, label_id: int) -> None:
    """Delete a label; the messages that carried it stay where they are."""
    _label(user, label_id).delete()


# --- The sender's copies (Sent) -----------------------------------------------------------


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
    deleted = _forget_sender_copies(messages.filter(sender_folder=SenderFolder.TRASH))
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


def _forget_sender_copies(messages: QuerySet[Message]) -> int:
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
    needed = has_outgoing_work() | Q(Exists(InboxEntry.objects.filter(local=OuterRef("pk")))) | offered
    ids = list(messages.values_list("pk", flat=True))
    keep = Message.objects.filter(pk__in=ids).filter(needed)
    keep.update(sender_folder=SenderFolder.TRASH, sender_trashed_at=None)
    deleted = Message.objects.filter(pk__in=ids).exclude(pk__in=keep.values("pk"))
    count = deleted.count()
    deleted.delete()
    return count


# --- Emptying Trash -----------------------------------------------------------------------


def empty_trash(*, older_than: datetime | None = None, user: User | None = None) -> dict[str, int]:
    """Delete for good what has been in Trash since before ``older_than`` (default: now minus
    settings.PUSHMAIL_TRASH_DAYS), for one user or everyone.

    Returns counts: entries deleted, sender copies deleted, sender copies hidden (still
    needed by recipients or pending deliveries).
    """
    if older_than is None:
        older_than = timezone.now() - timedelta(days=settings.PUSHMAIL_TRASH_DAYS)
    entries = InboxEntry.objects.filter(folder=Folder.TRASH, trashed_at__lt=older_than)
    messages = Message.objects.filter(sender_folder=SenderFolder.TRASH, sender_trashed_at__lt=older_than)
    # Hidden copies wait for their recipients: retry them on every sweep.
    hidden = Message.objects.filter(sender_folder=SenderFolder.TRASH, sender_trashed_at__isnull=True)
    if user is not None:
        entries, messages, hidden = entries.filter(owner=user), messages.filter(sender=user), hidden.filter(sender=user)
    result = {"entries": 0, "sent_deleted": 0, "sent_hidden": 0}
    # In batches, so one sweep never holds long locks over a big Trash.
    while True:
        batch = list(entries.values_list("pk", flat=True)[:1000])
        if not batch:
            break
        result["entries"] += InboxEntry.objects.filter(pk__in=batch).delete()[1].get(InboxEntry._meta.label, 0)
    with transaction.atomic():
        due = Message.objects.filter(pk__in=list(messages.values_list("pk", flat=True)[:5000]))
        due_count = due.count()
        deleted = _forget_sender_copies(due)
        result["sent_deleted"] += deleted
        result["sent_hidden"] += due_count - deleted
        result["sent_deleted"] += _forget_sender_copies(
            Message.objects.filter(pk__in=list(hidden.values_list("pk", flat=True)[:5000]))
        )
    return result
