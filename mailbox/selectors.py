"""Reads for the recipient side, always scoped to the user."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Count, Exists, Max, Min, OuterRef, Prefetch, Q, QuerySet
from django.urls import reverse

from accounts.models import User
from attachments.filenames import blocked_reason
from attachments.selectors import AttachmentItem, previewable
from outbox import selectors as outbox_selectors

from .content import readable_content_for, withheld_by_verdict
from .models import EntryState, Folder, InboxEntry, Label, RemoteMessage
from .states import BODY_AT_SENDER


def inbox_for(*, user: User, folder: str | None = None) -> QuerySet[InboxEntry]:
    """The user's entries, newest first: all of them, or those in one folder (Inbox, Archive, Spam, Trash)."""
    entries = InboxEntry.objects.owned_by(user)
    if folder is not None:
        entries = entries.filter(folder=folder)
    return entries.order_by("-received_at", "-pk")


def entry_for(*, user: User, entry_id: int) -> InboxEntry:
    return InboxEntry.objects.owned_by(user).select_related("remote", "local").get(pk=entry_id)


def spam_verdicts(*, remote_ids: Collection[int]) -> dict[int, str]:
    """Why each of these messages was judged spam here, for those that were."""
    found = RemoteMessage.objects.filter(pk__in=remote_ids).exclude(spam_verdict="")
    return dict(found.values_list("pk", "spam_verdict"))


def body_at_sender(entry: InboxEntry) -> bool:
    """The entry's body is still at the sender's (not fetched yet, or being fetched)."""
    return entry.state in BODY_AT_SENDER


def body_on_its_way(entry: InboxEntry) -> bool:
    """The reader of an opened entry should wait for its body: it is still at the sender's, and
    no spam verdict withholds it from them (a withheld copy's body is never fetched for them)."""
    return body_at_sender(entry) and not withheld_by_verdict(entry)


def body_of(entry: InboxEntry) -> dict[str, Any] | None:
    """The body a reader sees, or None while it is not available to this reader (see mailbox.content)."""
    return readable_content_for(entry=entry).body


# --- Folder lists (webmail) ---------------------------------------------------------------

# A virtual folder: starred entries outside Spam and Trash.
STARRED = "starred"
LIST_FOLDERS = (Folder.INBOX, Folder.NEWS, Folder.ARCHIVE, STARRED, Folder.SPAM, Folder.TRASH)
# Folders a label or the Starred view shows: Spam and Trash stay out of sight, as elsewhere.
_VISIBLE = (Folder.INBOX, Folder.ARCHIVE)
# The columns a list row needs: never the search document (it holds fetched body text).
_ROW_FIELDS = (
    "id",
    "owner_id",
    "remote_id",
    "local_id",
    "sender",
    "sender_name",
    "subject",
    "size",
    "received_at",
    "state",
    "read",
    "folder",
    "starred",
    "has_attachments",
    "attachments_size",
    "thread_key",
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A row's labels, as a plain list (``entry.label_list``), one query for the page.
_LABELS = Prefetch("labels", queryset=Label.objects.order_by("name"), to_attr="label_list")


@dataclass(frozen=True)
class Cursor:
    """A position in a list ordered by (time, primary key), newest first; opaque in URLs."""

    at: datetime
    pk: Any

    def encode(self) -> str:
        delta = self.at - _EPOCH
        micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
        return f"{micros}~{self.pk}"

    @classmethod
    def decode(cls, raw: str | None, pk_type: Callable[[str], Any] = int) -> Cursor | None:
        """The cursor in ``raw``, or None when it is missing or malformed (the first page then)."""
        if not raw or len(raw) > 80:
            return None
        micros, sep, pk = raw.partition("~")
        if not sep or not micros.isdigit() or len(micros) > 18:
            return None
        try:
            return cls(at=_EPOCH + timedelta(microseconds=int(micros)), pk=pk_type(pk))
        except (OverflowError, ValueError):
            return None

    @classmethod
    def of(cls, entry: InboxEntry) -> Cursor:
        return cls(at=entry.received_at, pk=entry.pk)


@dataclass
class Page:
    """One page of a list, newest first, with the cursors of the pages around it."""

    items: list[Any]
    older: str | None = None
    newer: str | None = None
    first: bool = True


def _older_than(cursor: Cursor) -> Q:
    # received_at <= t bounds the index scan; the OR only filters rows at exactly t.
    return Q(received_at__lte=cursor.at) & (Q(received_at__lt=cursor.at) | Q(pk__lt=cursor.pk))


def _newer_than(cursor: Cursor) -> Q:
    return Q(received_at__gte=cursor.at) & (Q(received_at__gt=cursor.at) | Q(pk__gt=cursor.pk))


def _folder_entries(*, user: User, folder: str) -> QuerySet[InboxEntry]:
    entries = InboxEntry.objects.owned_by(user)
    if folder == STARRED:
        return entries.filter(starred=True, folder__in=_VISIBLE)
    if folder not in Folder.values:
        raise ValueError(f"unknown folder {folder!r}")
    return entries.filter(folder=folder)


def _latest_of_conversation(entries: QuerySet[InboxEntry]) -> QuerySet[InboxEntry]:
    """Of ``entries`` (one list's), each conversation's newest only: one row per conversation.

    An entry stays unless the same list holds a newer one with its ``thread_key``
    (an anti-join on the entry_thread index, per row read); entries without a key
    are conversations of their own. Keyset pages stay exact: a conversation's row
    is its newest entry, so it is on one page only, wherever its older entries are.
    """
    newer = entries.filter(thread_key=OuterRef("thread_key")).filter(
        Q(received_at__gt=OuterRef("received_at")) | Q(received_at=OuterRef("received_at"), pk__gt=OuterRef("pk"))
    )
    return entries.filter(Q(thread_key="") | ~Exists(newer))


def _keyset_page(
    entries: QuerySet[InboxEntry],
    *,
    before: str | None,
    after: str | None,
    limit: int,
    cursor_of: Callable[[InboxEntry], Cursor] = Cursor.of,
) -> Page:
    """Keyset pagination: a page costs one indexed range scan however deep it is (no OFFSET, no COUNT)."""
    entries = entries.only(*_ROW_FIELDS).prefetch_related(_LABELS)
    older_cursor, newer_cursor = Cursor.decode(before), Cursor.decode(after)
    if newer_cursor is not None and older_cursor is None:
        rows = list(entries.filter(_newer_than(newer_cursor)).order_by("received_at", "pk")[: limit + 1])
        has_newer = len(rows) > limit
        rows = rows[:limit][::-1]
        has_older = True
    else:
        if older_cursor is not None:
            entries = entries.filter(_older_than(older_cursor))
        rows = list(entries.order_by("-received_at", "-pk")[: limit + 1])
        has_older = len(rows) > limit
        rows = rows[:limit]
        has_newer = older_cursor is not None
    return Page(
        items=rows,
        older=cursor_of(rows[-1]).encode() if rows and has_older else None,
        newer=cursor_of(rows[0]).encode() if rows and has_newer else None,
        first=not has_newer,
    )


def folder_page(
    *, user: User, folder: str, before: str | None = None, after: str | None = None, limit: int = 50
) -> Page:
    """One page of a folder (inbox, archive, spam, trash or the virtual "starred"), newest first,
    one row per conversation (the row is its newest entry in the folder; see conversation_summaries).

    ``before``/``after`` are cursors from a previous page (``Page.older``/``Page.newer``).
    """
    entries = _latest_of_conversation(_folder_entries(user=user, folder=folder))
    return _keyset_page(entries, before=before, after=after, limit=limit)


def label_page(
    *, user: User, label: Label, before: str | None = None, after: str | None = None, limit: int = 50
) -> Page:
    """One page of a label, one row per conversation, as folder_page."""
    entries = _latest_of_conversation(InboxEntry.objects.owned_by(user).filter(labels=label, folder__in=_VISIBLE))
    return _keyset_page(entries, before=before, after=after, limit=limit)


def entries_newer_than(*, user: User, folder: str, after: str, limit: int = 50) -> list[InboxEntry]:
    """Entries that arrived after the cursor (for an open list polling for new mail), newest first,
    one per conversation (the open list replaces a conversation's row with the new one)."""
    cursor = Cursor.decode(after)
    if cursor is None:
        return []
    entries = _latest_of_conversation(_folder_entries(user=user, folder=folder))
    entries = entries.only(*_ROW_FIELDS).prefetch_related(_LABELS)
    rows: list[InboxEntry] = list(entries.filter(_newer_than(cursor)).order_by("received_at", "pk")[:limit])
    return rows[::-1]


# --- Conversations ------------------------------------------------------------------------------


def conversation_folders(folder: str) -> tuple[str, ...]:
    """The folders a conversation spans as seen from a list or from an entry in ``folder``.

    From the Inbox, Archive, Starred and labels: its messages in Inbox and Archive
    (a reply that brought it back to the Inbox belongs with the ones archived
    before). From Spam or Trash: its messages there only.
    """
    if folder in (Folder.SPAM, Folder.TRASH):
        return (folder,)
    return _VISIBLE


@dataclass(frozen=True)
class ConversationSummary:
    """What a list row says about the conversation it stands for."""

    count: int  # messages: received ones in its folders, and the user's own sent ones
    unread: bool  # any of its received messages is unread
    at_sender: bool  # any of its received messages' body is still at the sender's
    participants: list[str]  # senders, oldest first, each once ("me" for the user's own)
    names: dict[str, str] = field(default_factory=dict)  # display names senders gave


def conversation_summaries(*, user: User, rows: Collection[InboxEntry], folder: str) -> dict[str, ConversationSummary]:
    """Per conversation key of these list rows, its summary: two queries whatever the page holds
    (one for received messages, one for the user's sent ones), none when no row has a key."""
    keys = {row.thread_key for row in rows if row.thread_key}
    if not keys:
        return {}
    # One row per conversation and sender (a conversation has few), counted in the database.
    received = (
        InboxEntry.objects.owned_by(user)
        .filter(thread_key__in=keys, folder__in=conversation_folders(folder))
        .values("thread_key", "sender", "sender_name")
        .annotate(
            n=Count("pk"),
            unread=Count("pk", filter=Q(read=False)),
            away=Count("pk", filter=Q(state__in=BODY_AT_SENDER)),
            first=Min("received_at"),
        )
        .order_by("first")
        .values_list("thread_key", "sender", "sender_name", "n", "unread", "away")
    )
    found: dict[str, dict[str, Any]] = {}
    for key, sender, sender_name, n, unread, away in received:
        summary = found.setdefault(key, {"count": 0, "unread": False, "at_sender": False, "senders": {}, "names": {}})
        if sender_name:
            summary["names"][sender] = sender_name
        summary["count"] += n
        summary["unread"] = summary["unread"] or unread > 0
        summary["at_sender"] = summary["at_sender"] or away > 0
        summary["senders"][sender] = None
    sent = outbox_selectors.sent_counts_by_thread(user=user, thread_keys=keys)
    out = {}
    for key, summary in found.items():
        participants = list(summary["senders"])
        if sent.get(key):
            participants.append("me")
        out[key] = ConversationSummary(
            count=summary["count"] + sent.get(key, 0),
            unread=summary["unread"],
            at_sender=summary["at_sender"],
            participants=participants,
            names=summary["names"],
        )
    return out


def conversation_entry_ids(
    *, user: User, entry_ids: Collection[object], skip_states: Collection[str] = ()
) -> list[object]:
    """``entry_ids`` and every other entry of the user in the same conversations, each as seen
    from its own folder (conversation_folders), leaving out other entries in ``skip_states``.
    Ids that are not the user's are passed on as they are, so the verb that gets them refuses
    the selection as for single messages."""
    try:
        ids = {int(str(value)) for value in entry_ids}
    except ValueError:
        return list(entry_ids)
    chosen = list(InboxEntry.objects.owned_by(user).filter(pk__in=ids).values_list("thread_key", "folder"))
    wanted: dict[str, set[str]] = {}
    for key, folder in chosen:
        if key:
            wanted.setdefault(key, set()).update(conversation_folders(folder))
    if not wanted:
        return list(entry_ids)
    others = (
        InboxEntry.objects.owned_by(user)
        .filter(thread_key__in=wanted.keys())
        .exclude(state__in=list(skip_states))
        .values_list("pk", "thread_key", "folder")
    )
    more = {pk for pk, key, folder in others if folder in wanted[key]}
    return [*entry_ids, *sorted(more - ids)]


#: How many shown rows an open list may ask about in one poll (a page, plus what arrived since).
SHOWN_CAP = 200


@dataclass(frozen=True)
class ShownChanges:
    """What changed, since an open list was drawn, about the rows it shows."""

    gone: list[int]  # no longer in the folder: hidden by a spam verdict, moved, deleted
    withdrawn: list[int]  # still there, but their sender withdrew them (the row says so)


def shown_changes(*, user: User, folder: str, entry_ids: Collection[int]) -> ShownChanges:
    """Of the entries an open list shows (at most SHOWN_CAP), those that left its folder and those
    withdrawn since: one query on the primary key, whatever happened to them."""
    ids = sorted(set(entry_ids))[:SHOWN_CAP]
    if not ids:
        return ShownChanges(gone=[], withdrawn=[])
    states = dict(_folder_entries(user=user, folder=folder).filter(pk__in=ids).values_list("pk", "state"))
    return ShownChanges(
        gone=[pk for pk in ids if pk not in states],
        withdrawn=[pk for pk in ids if states.get(pk) == EntryState.WITHDRAWN],
    )


# Unread counts stop here (the page shows "999+"): a mailbox with 100,000 unread
# newsletters costs the sidebar no more than one with a thousand.
UNREAD_CAP = 1000


# The parts of the counting queries, written once: compiling them with the ORM on every
# page cost more than running them. Equivalent ORM forms, whose plans the tests check:
#   InboxEntry.objects.filter(owner=u, folder=f, read=False).values("folder")
_ENTRY = InboxEntry._meta.db_table
_ENTRY_LABEL = InboxEntry.labels.through._meta.db_table
_FOLDER_UNREAD = f'SELECT folder FROM {_ENTRY} WHERE owner_id = %s AND folder = %s AND NOT "read"'  # noqa: S608
# Label counts start from the unread entries (the partial index), at most LABEL_SCAN_CAP
# of them, and look up their labels: the cost follows the unread mail, not the size of
# the labels. Past the cap a label's count is a lower bound.
LABEL_SCAN_CAP = 5000
_LABEL_UNREAD = (
    f"SELECT t.label_id, COUNT(*) FROM (SELECT id FROM {_ENTRY} WHERE owner_id = %s"  # noqa: S608
    f' AND NOT "read" AND folder IN (%s, %s) LIMIT {LABEL_SCAN_CAP}) AS e'
    f" INNER JOIN {_ENTRY_LABEL} t ON t.inboxentry_id = e.id GROUP BY t.label_id"
)


def _capped_counts(part: str, params: list[list[int | str]]) -> list[int]:
    """``SELECT COUNT(*) FROM (<part> LIMIT cap)`` for each parameter list, in one query."""
    # Only integers and the constant parts above are interpolated; values stay parameters.
    sql = " UNION ALL ".join(
        f"SELECT {i} AS k, COUNT(*) AS n FROM ({part} LIMIT {UNREAD_CAP}) AS part_{i}"  # noqa: S608
        for i in range(len(params))
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [value for part_params in params for value in part_params])
        found = dict(cursor.fetchall())
    return [int(found.get(i, 0)) for i in range(len(params))]


def unread_counts(*, user: User) -> dict[str, int]:
    """Unread entries per folder, each capped at UNREAD_CAP, in one query.

    Each count walks the partial index entry_unread_by_folder (only indexed columns:
    PostgreSQL answers from the index alone) and stops at the cap. Starred is not
    counted: it is a view across folders, and counting it would need the table rows.
    """
    folders = list(Folder.values)
    counts = _capped_counts(_FOLDER_UNREAD, [[user.pk, folder] for folder in folders])
    return dict(zip(folders, counts, strict=True))


def labels_for(*, user: User) -> QuerySet[Label]:
    """The user's labels by name."""
    return Label.objects.filter(owner=user).order_by("name")


def label_unread_counts(*, user: User, label_ids: list[int]) -> dict[int, int]:
    """Unread entries per label outside Spam and Trash, in one query (see _LABEL_UNREAD)."""
    if not label_ids:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(_LABEL_UNREAD, [user.pk, *_VISIBLE])
        counts = {label_id: min(int(n), UNREAD_CAP) for label_id, n in cursor.fetchall()}
    return {label_id: counts.get(label_id, 0) for label_id in label_ids}


def labels_with_unread(*, user: User) -> list[Label]:
    """The user's labels by name, each with ``unread`` set (two queries; one when there are none)."""
    labels = list(labels_for(user=user))
    counts = label_unread_counts(user=user, label_ids=[label.pk for label in labels])
    for label in labels:
        label.unread = counts.get(label.pk, 0)
    return labels


def label_for(*, user: User, label_id: int) -> Label:
    """One of the user's labels; another user's label is a DoesNotExist (404 in views)."""
    return Label.objects.filter(owner=user).get(pk=label_id)


# --- Attachments and quota -------------------------------------------------------------------


def attachment_items_for_entry(entry: Any) -> list[AttachmentItem]:
    """Attachments of an inbox entry, each with its download URL and whether it is still at the sender's.

    "At the sender's" means this message's own fetch has not brought the bytes
    yet, whatever else is stored here: the same file held for another message
    must not show (it would tell the reader what others hold).
    """
    items = []
    for item in readable_content_for(entry=entry).attachments:
        kwargs = {"entry_id": entry.pk, "index": item.index}
        url = reverse("webmail:entry-attachment", kwargs=kwargs)
        at_sender = item.blob is None
        items.append(
            AttachmentItem(
                index=item.index,
                name=item.name,
                content_type=item.content_type,
                size=item.size,
                digest=item.digest,
                url=url,
                preview_url=f"{url}?inline=1" if previewable(item.content_type) and not item.blocked else None,
                at_sender=at_sender,
                blocked=blocked_reason(item.name, item.blocked, received=True) if item.blocked else None,
                fetch_url=reverse("webmail:entry-attachment-fetch", kwargs=kwargs)
                if at_sender and not item.blocked
                else None,
            )
        )
    return items


def received_references(message_id: str) -> list[str] | None:
    """The References of a message received here under ``message_id`` (any mailbox's), None when none was."""
    return RemoteMessage.objects.filter(message_id=message_id).values_list("references", flat=True).first()


def manifest_names(sha256: str) -> bool:
    """Whether the manifest of any received message names a file with this SHA-256 (hex)."""
    return RemoteMessage.objects.filter(attachments__icontains=sha256).exists()


def usage_bytes(user: User) -> int:
    """Bytes that count against ``user``'s quota (``User.effective_quota_bytes``).

    The sum of:

    - the size of every message the user sent that is still in their mailbox
      (Sent and Trash; the canonical body size, so the text and HTML), however
      long ago recipients fetched it or its retention for them ended;
    - the size of every attachment of those messages, counted per message even
      when the bytes are shared with other messages (dedupe saves disk for the
      instance, not quota for the user);
    - the size of every attachment on the user's unsent drafts;
    - the size of every received message whose body has been fetched to this
      instance (remote entries in state "fetched").

    Not counted: received messages still at the sender's, notices, mail from
    the same instance (it counts for its sender), attachments fetched for
    received mail (stored once for the whole instance), and sent messages the
    user deleted for good whose rows stay only for their recipients.
    """
    fetched = InboxEntry.objects.filter(owner=user, remote__isnull=False, state=EntryState.FETCHED)
    # One query with a subquery per part: every SMTP RCPT TO and every upload asks.
    used = outbox_selectors.sent_usage_expression(user=user) + outbox_selectors.total_of(fetched, "size")
    return int(User.objects.filter(pk=user.pk).values_list(used, flat=True).first() or 0)


# --- Correspondents (compose) ------------------------------------------------------------------


def correspondents_named(*, user, query: str = "", limit: int = 8) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """(address, display name or "") of the user's correspondents, most recent first, whose
    address or name matches ``query``. A mailbox here is named as its owner names it now."""
    query = query.strip().lower()
    received = (
        InboxEntry.objects.owned_by(user)
        .exclude(state=EntryState.NOTICE)
        .filter(Q(sender__icontains=query) | Q(sender_name__icontains=query))
        .values("sender")
        .annotate(last=Max("received_at"), name=Max("sender_name"))
        .order_by("-last")[: limit * 2]
    )
    sent = outbox_selectors.addressed_by(user=user, query=query, limit=limit * 2)
    latest: dict[str, object] = {}
    names: dict[str, str] = {}
    for address, last, name in [
        *((r["sender"], r["last"], r["name"]) for r in received),
        *((a, t, "") for a, t in sent),
    ]:
        address = address.lower()
        if address == user.email.lower():
            continue
        if address not in latest or last > latest[address]:
            latest[address] = last
        names[address] = names.get(address) or name
    # Addresses (or names) that start with the query come before those that merely contain it.
    ranked = sorted(latest, key=lambda a: latest[a], reverse=True)  # type: ignore[arg-type,return-value]
    ranked.sort(
        key=lambda a: (
            not (a.startswith(query) or a.partition("@")[2].startswith(query) or names[a].lower().startswith(query))
        )
    )
    ranked = ranked[:limit]
    here = dict(User.objects.filter(email__in=ranked).exclude(display_name="").values_list("email", "display_name"))
    return [(address, here.get(address) or names[address]) for address in ranked]
