"""Spam on the recipient side: a reader's own copy moved by their report, and the copies a verdict hides.

The reputation app decides (reports, verdicts); these are the writes it asks of the mailbox.
A hidden copy remembers its folder in ``hidden_from`` so that an overturned verdict puts it back.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from django.db import transaction
from django.db.models import Exists, F, OuterRef, QuerySet
from django.db.models.functions import Left, Length

from federation import payloads
from outbox.models import Recipient
from pushmail_site.hooks import Hook

from . import search
from .content import withheld_by_verdict
from .models import EntryState, Folder, InboxEntry, RemoteMessage

#: ``spam_reason_for_new(remote=..., recipients=[addresses])``: why a message just notified here is judged
#: spam at once (a known campaign, a poorly reputed sender or origin), or "" for the Inbox. The
#: reputation app answers (and files the message in its campaign meanwhile).
spam_reason_for_new: Hook[..., str] = Hook("mailbox.spam.spam_reason_for_new")
#: ``spam_reasons_for_new(arrivals=[(remote, [addresses]), ...])``: the same for messages new here
#: together (a batch of notifications), one reason each, in order, in a few queries.
spam_reasons_for_new: Hook[..., list[str]] = Hook("mailbox.spam.spam_reasons_for_new")

# Folders a verdict hides copies from: Trash is the owner's own decision and stays as it is.
_HIDDEN_FROM = [Folder.INBOX, Folder.ARCHIVE]


def _wrote_to_sender() -> Exists:
    """The entry's owner has sent mail to the entry's sender: a known correspondent."""
    return Exists(Recipient.objects.filter(address__iexact=OuterRef("sender"), message__sender=OuterRef("owner")))


def file_own_copy(*, entry: InboxEntry, spam: bool) -> None:
    """A reader's report: their copy to Spam at once, or (not spam) back to the Inbox."""
    entry.folder = Folder.SPAM if spam else (entry.hidden_from or Folder.INBOX)
    entry.hidden_from = ""
    entry.trashed_at = None
    entry.save(update_fields=["folder", "hidden_from", "trashed_at"])


#: Remote message ids: a list, or a queryset of ids (``.values("message_id")``) the database expands.
RemoteIds = Collection[int] | QuerySet[Any]


def _ids(remote_id: int | None, remote_ids: RemoteIds | None) -> RemoteIds:
    if remote_ids is None:
        if remote_id is None:
            raise TypeError("name a remote_id or remote_ids")
        return [remote_id]
    return remote_ids


@transaction.atomic
def hide_as_spam(*, reason: str, remote_id: int | None = None, remote_ids: RemoteIds | None = None) -> int:
    """Judge messages spam here (one, or a campaign's): record why, and hide every unopened copy; returns how many.

    Bulk updates whatever the number of messages and copies: a spam run to thousands of
    local mailboxes is hidden in three statements. Copies of known correspondents stay where
    they are (their readers see a warning instead); opened copies are their readers' own.
    """
    ids = _ids(remote_id, remote_ids)
    RemoteMessage.objects.filter(pk__in=ids).update(spam_verdict=reason[:300])
    unopened = InboxEntry.objects.filter(remote_id__in=ids, opened_at__isnull=True, folder__in=_HIDDEN_FROM)
    hidden = unopened.exclude(_wrote_to_sender())
    # Spam does not count as unread mail; the folder it left is kept to put it back.
    return _hide(hidden)


def classify_new(remote: RemoteMessage, *, recipients: Sequence[str] = ()) -> None:
    """A message new here (to these local addresses): judged spam at once if the reputation app says why.

    Called before any entry exists, so that the entries start in Spam.
    """
    reason = spam_reason_for_new(remote=remote, recipients=list(recipients))[:300]
    if reason:
        RemoteMessage.objects.filter(pk=remote.pk).update(spam_verdict=reason)
        remote.spam_verdict = reason


def classify_new_many(arrivals: Sequence[tuple[RemoteMessage, Sequence[str]]]) -> None:
    """:func:`classify_new` for messages new here together (a batch of notifications)."""
    reasons = spam_reasons_for_new(arrivals=[(remote, list(recipients)) for remote, recipients in arrivals])
    for (remote, _recipients), reason in zip(arrivals, reasons, strict=True):
        if reason:
            RemoteMessage.objects.filter(pk=remote.pk).update(spam_verdict=reason[:300])
            remote.spam_verdict = reason[:300]


def _hide(entries: QuerySet[InboxEntry]) -> int:
    # A hidden copy is matched by search on its subject and sender only (the head of its search
    # document, mailbox.search.entry_document): its reader never opened it. It also keeps the
    # verdict cheap: the full-text index is computed again for each row the verdict moves, and
    # for a head that costs little, where a fetched body's text for ten thousand copies costs seconds.
    head = Left(F("search_document"), Length(F("subject")) + Length(F("sender")) + 1)
    return sum(
        entries.filter(folder=folder).update(folder=Folder.SPAM, hidden_from=folder, read=True, search_document=head)
        for folder in _HIDDEN_FROM
    )


@transaction.atomic
def lift_spam_verdict(*, remote_id: int | None = None, remote_ids: RemoteIds | None = None) -> int:
    """An overturned verdict (on one message or a campaign): every copy it hid goes back, unread; returns how many."""
    ids = _ids(remote_id, remote_ids)
    RemoteMessage.objects.filter(pk__in=ids).update(spam_verdict="")
    hidden = InboxEntry.objects.filter(remote_id__in=ids).exclude(hidden_from="")
    fetched = list(hidden.filter(state=EntryState.FETCHED).values_list("remote_id", flat=True).distinct())
    lifted = sum(
        hidden.filter(hidden_from=folder).update(folder=folder, hidden_from="", read=False) for folder in _HIDDEN_FROM
    )
    # Their readers may find them by their text again (an overturn is rare: one update per message).
    for remote in RemoteMessage.objects.filter(pk__in=fetched, content__isnull=False):
        if remote.content is not None:
            search.index_fetched_body(remote=remote, body=payloads.parse_body(bytes(remote.content)))
    return lifted


def straight_to_spam(*, remote: RemoteMessage, owner_ids: list[int]) -> set[int]:
    """Of these new recipients of a message judged spam, the owners whose copies go straight to Spam."""
    if not remote.spam_verdict:
        return set()
    known = set(
        Recipient.objects.filter(address__iexact=remote.sender, message__sender_id__in=owner_ids).values_list(
            "message__sender_id", flat=True
        )
    )
    return set(owner_ids) - known


def is_hidden(entry: InboxEntry) -> bool:
    """A copy a verdict hid from its owner: its body is neither fetched nor shown for it."""
    return withheld_by_verdict(entry)
