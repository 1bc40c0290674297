"""Folder work on a user's received copies: move, read/unread, star, labels, Trash and its emptying.

The sender's copies (Sent, and sent mail in Trash) are the sender side's: outbox.sent_folder.

Every verb takes the user and ids and acts only on that user's rows: an id that is
not the user's raises ``NotFound`` before anything changes, so a selection is
applied whole or not at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import User
from outbox.sent_folder import FolderError, NotFound, empty_sent_trash

from .models import Folder, InboxEntry, Label

__all__ = ["FolderError", "NotFound"]  # the sender's copies raise the same (outbox.sent_folder)


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
def apply_label(*, user: User, entry_ids: Iterable[object], label_id: int | str) -> int:
    """Put one of the user's labels on entries (already labelled ones are left as they are)."""
    label = _label(user, label_id)
    ids = list(_owned(user, entry_ids).values_list("pk", flat=True))
    through = InboxEntry.labels.through
    through.objects.bulk_create(
        [through(inboxentry_id=pk, label_id=label.pk) for pk in ids],
        ignore_conflicts=True,
    )
    return len(ids)


@transaction.atomic
def remove_label(*, user: User, entry_ids: Iterable[object], label_id: int | str) -> int:
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


def folders_of(*, user: User, entry_ids: Iterable[int]) -> list[tuple[int, str, datetime | None]]:
    """Each of the user's entries with its folder and Trash date (what Undo of a move puts back)."""
    return list(
        InboxEntry.objects.owned_by(user).filter(pk__in=list(entry_ids)).values_list("pk", "folder", "trashed_at")
    )


def labelled(*, user: User, entry_ids: Iterable[int], label_id: int) -> set[int]:
    """Which of the user's entries carry the label."""
    entries = InboxEntry.objects.owned_by(user).filter(pk__in=list(entry_ids), labels__pk=label_id)
    return set(entries.values_list("pk", flat=True))


@transaction.atomic
def restore_folders(*, user: User, before: Iterable[tuple[int, str, datetime | None]]) -> int:
    """Put the user's entries back in the folders they were in (Undo of a move); returns how many.

    Entries deleted since, or not the user's, are skipped: the rest are still put back.
    """
    wanted = {pk: (folder, trashed_at) for pk, folder, trashed_at in before if folder in Folder.values}
    owned = InboxEntry.objects.owned_by(user).filter(pk__in=list(wanted))
    found = list(owned.select_for_update().values_list("pk", flat=True))
    groups: dict[tuple[str, datetime | None], list[int]] = {}
    for pk in found:
        groups.setdefault(wanted[pk], []).append(pk)
    for (folder, trashed_at), pks in groups.items():
        InboxEntry.objects.filter(pk__in=pks).update(folder=folder, trashed_at=trashed_at, hidden_from="")
    return len(found)


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


# --- Emptying Trash -----------------------------------------------------------------------


def empty_trash(*, older_than: datetime | None = None, user: User | None = None) -> dict[str, int]:
    """Delete for good what has been in Trash since before ``older_than`` (default: now minus
    settings.PUSHMAIL_TRASH_DAYS), for one user or everyone.

    Returns counts: entries deleted, sender copies deleted, sender copies hidden (still
    needed by recipients or pending deliveries; see outbox.sent_folder).
    """
    if older_than is None:
        older_than = timezone.now() - timedelta(days=settings.PUSHMAIL_TRASH_DAYS)
    entries = InboxEntry.objects.filter(folder=Folder.TRASH, trashed_at__lt=older_than)
    if user is not None:
        entries = entries.filter(owner=user)
    result = {"entries": 0, "sent_deleted": 0, "sent_hidden": 0}
    # In batches, so one sweep never holds long locks over a big Trash.
    while True:
        batch = list(entries.values_list("pk", flat=True)[:1000])
        if not batch:
            break
        result["entries"] += InboxEntry.objects.filter(pk__in=batch).delete()[1].get(InboxEntry._meta.label, 0)
    result["sent_deleted"], result["sent_hidden"] = empty_sent_trash(older_than=older_than, user=user)
    return result
