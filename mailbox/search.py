"""Search over one user's mail: the text each entry is matched on, and the query.

Every entry carries ``search_document``: subject and sender from the notification,
plus the body text and attachment names once the body is here. Bodies still at the
sender's are therefore matched on subject and sender only.

PostgreSQL matches with full-text search on ``to_tsvector('simple', search_document)``,
served by InboxEntry's GIN expression index ``mailbox_entry_search_fts`` (mailbox/indexes.py;
the query below must use exactly that expression, or the index is not used). Other databases (SQLite in development)
require every word to appear as a case-insensitive substring.
"""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, TypeVar

import nh3
from celery import shared_task
from django.db import connection, transaction
from django.db.models import BooleanField, Exists, OuterRef, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone

from accounts.models import User
from federation import payloads
from outbox.models import Message, MessageAttachment, Recipient, SenderFolder
from pushmail_site.jobs import enqueue

from .content import readable_content_for
from .models import EntryState, InboxEntry, RemoteMessage

# 'simple' rather than 'english': mail is multilingual and full of addresses, names and
# codes; 'simple' lower-cases and keeps every word (no stemming to English, no stop
# words dropped), so "the-who" or a Finnish word is found as typed. Keep in step with
# the InboxEntry index mailbox_entry_search_fts, built on this exact configuration.
FTS_MATCH = "to_tsvector('simple', \"mailbox_inboxentry\".\"search_document\") @@ websearch_to_tsquery('simple', %s)"

FTS_PREFIX_MATCH = "to_tsvector('simple', \"mailbox_inboxentry\".\"search_document\") @@ to_tsquery('simple', %s)"

MAX_DOCUMENT_CHARS = 200_000  # bounds indexing work (and tsvector's 1 MB limit) per message
MAX_QUERY_CHARS = 300
MAX_TERMS = 12
PAGE_SIZE = 50

_TOKEN = re.compile(r'(-?)(?:"([^"]*)"?|(\S+))')
_JOINERS = re.compile(r"(?<=\w)[^\w\s]+(?=\w)")  # "@" in "carol@peer", "." in "budget.xlsx"
_QUERY_WORD = re.compile(r"[^\W_]+")  # what PostgreSQL's parser makes words of
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --- The document an entry is matched on ---------------------------------------------------


def searchable(text: str) -> str:
    """Text as it is matched: lower case, and punctuation inside a word turned into a space.

    PostgreSQL's parser keeps "carol@peer.test", "budget.xlsx" or "example.com/path" as
    single tokens, so a search for "carol" or "budget" would not find them. Documents and
    queries both go through this, so "carol@peer.test" is still found as typed (as the
    words "carol peer test"). Lower case makes SQLite's substring match case-insensitive
    beyond ASCII ("München").
    """
    return _JOINERS.sub(" ", text).lower()


def body_text(body: dict[str, Any]) -> str:
    """The plain text of a body: its text part, or its HTML part with every tag removed.

    Nothing of an encrypted body (docs/protocol.md §4.6): its text is ciphertext, opened only in readers' browsers.
    """
    if body.get("encrypted"):
        return ""
    text = body.get("text") or ""
    if text:
        return str(text)
    markup = body.get("html") or ""
    if not markup:
        return ""
    # nh3 drops <script>/<style> content entirely and returns the rest escaped.
    return html.unescape(nh3.clean(str(markup), tags=set()))


def attachment_names(manifest: Iterable[Any] | None) -> list[str]:
    return [str(item["name"]) for item in manifest or () if isinstance(item, dict) and item.get("name")]


def entry_document(
    *, subject: str, sender: str, text: str = "", attachments: Iterable[str] = (), sender_name: str = ""
) -> str:
    """The text an entry is matched on (a sender's name too), capped at MAX_DOCUMENT_CHARS."""
    parts = (subject, f"{sender_name} {sender}" if sender_name else sender, " ".join(attachments), text)
    document = "\n".join(part for part in parts if part)
    # PostgreSQL text cannot hold NUL characters.
    return searchable(document.replace("\x00", " "))[:MAX_DOCUMENT_CHARS]


#: A fetched body is indexed for up to this many copies in the caller's transaction; a message
#: with more (a run to thousands here) has its copies indexed after the commit, this many per
#: transaction, so that its first readers do not wait for thousands of full-text index entries:
#: 10,000 copies of an 8 KB text cost about 11 s of index maintenance on PostgreSQL.
INDEX_AT_ONCE = 500
#: ...starting this long after the fetch. The first minutes after a fetch are when a spam run is
#: judged by its first readers (reputation.spam); a copy its verdict hides meanwhile is never
#: indexed on the body, and the verdict does not wait for, nor compete with, thousands of index entries.
INDEX_LATER_SECONDS = 120


def fetched_document(remote: RemoteMessage, body: dict[str, Any]) -> str:
    """What a copy that may be read is matched on once ``remote``'s body is here."""
    return entry_document(
        subject=remote.subject,
        sender=remote.sender,
        sender_name=remote.sender_name,
        text=body_text(body),
        attachments=attachment_names(body.get("attachments") or remote.attachments),
    )


def _readable_copies(remote_id: int, document: str) -> QuerySet[InboxEntry]:
    """Copies whose reader may read the body (mailbox.content) and that are not matched on it yet:
    not a withdrawn or refused one, nor an unopened copy a spam verdict hid (matched on its
    subject and sender only, mailbox.spam)."""
    readable = InboxEntry.objects.filter(remote_id=remote_id, state=EntryState.FETCHED)
    return readable.exclude(opened_at__isnull=True, hidden_from__gt="").exclude(search_document=document)


def index_fetched_body(*, remote: RemoteMessage, body: dict[str, Any]) -> None:
    """A body arrived: its entries become searchable by body text and attachment names.

    At once for a message with up to INDEX_AT_ONCE copies to index; for more, INDEX_LATER_SECONDS
    after the caller's transaction commits, in batches (:func:`index_copies`), while readers
    already read it. Until then the other copies are matched on their subject and sender.
    """
    document = fetched_document(remote, body)
    copies = _readable_copies(remote.pk, document)
    if len(copies.values_list("pk", flat=True)[: INDEX_AT_ONCE + 1]) <= INDEX_AT_ONCE:
        copies.update(search_document=document)
    else:
        enqueue(index_copies_task, remote.pk, countdown=INDEX_LATER_SECONDS)


@shared_task(name="mailbox.index_fetched_copies")
def index_copies_task(remote_id: int) -> int:
    return index_copies(remote_id=remote_id)


def index_copies(*, remote_id: int, batch_size: int = INDEX_AT_ONCE) -> int:
    """Index a fetched body for every copy that may read it, one short transaction per batch; returns how many.

    Safe to repeat (copies already matched on the body are skipped). A copy a verdict hides
    meanwhile is left out: the update itself checks, under the row's lock, that it is not hidden.
    """
    remote = RemoteMessage.objects.filter(pk=remote_id, content__isnull=False).first()
    if remote is None or remote.content is None:
        return 0
    document = fetched_document(remote, payloads.parse_body(bytes(remote.content)))
    done, last = 0, 0
    while True:
        with transaction.atomic():
            copies = _readable_copies(remote_id, document)
            batch = list(copies.filter(pk__gt=last).order_by("pk").values_list("pk", flat=True)[:batch_size])
            if not batch:
                return done
            done += copies.filter(pk__in=batch).update(search_document=document)
            last = batch[-1]


def document_of(entry: InboxEntry) -> str:
    """What ``entry`` is matched on now: only what its reader may read (mailbox.content)."""
    if entry.hidden_from and entry.opened_at is None:
        return entry_document(subject=entry.subject, sender=entry.sender)  # hidden unopened (mailbox.spam)
    content = readable_content_for(entry=entry)
    if content.notice:
        return entry_document(subject=entry.subject, sender=entry.sender, text=entry.notice_text)
    body = content.body
    if body is None:
        return entry_document(subject=entry.subject, sender=entry.sender)
    return entry_document(
        subject=entry.subject,
        sender=entry.sender,
        text=body_text(body),
        attachments=content.attachment_names,
    )


def rebuild_documents(*, batch_size: int = 200) -> int:
    """Recompute every entry's search document, e.g. after what goes into one changed; returns the count."""
    done, last = 0, 0
    while True:
        entries = list(
            InboxEntry.objects.filter(pk__gt=last)
            .select_related("remote", "local")
            .prefetch_related("local__attachments")
            .order_by("pk")[:batch_size]
        )
        if not entries:
            return done
        for entry in entries:
            entry.search_document = document_of(entry)
        InboxEntry.objects.bulk_update(entries, ["search_document"])
        done += len(entries)
        last = entries[-1].pk


def _names_a_person(text: str) -> bool:
    """ "dave", "dave@", "dave@peer.test": yes; "@peer.test", "peer.test": no (a whole domain)."""
    local, at, _domain = text.partition("@")
    return bool(local) if at else "." not in text


def _prefix_query(text: str) -> str:
    """ "Dave@peer" -> "dave:* & peer:*": every word of ``text`` starts a word of the document."""
    words = _QUERY_WORD.findall(text.lower())[:MAX_TERMS]
    return " & ".join(f"{word}:*" for word in words)


# --- The query -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """A parsed search box: words and phrases (each must appear), -excluded ones, from:senders."""

    text: str = ""  # what PostgreSQL's websearch_to_tsquery reads (from: terms removed)
    terms: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()
    senders: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.terms or self.excluded or self.senders)


def parse_query(raw: str) -> Query:
    """Split a search box into terms. ``from:addr`` filters on the sender.

    Raises ValueError with a message for the page when the query is too long.
    """
    raw = raw.strip()
    if len(raw) > MAX_QUERY_CHARS:
        raise ValueError(f"The search is too long: at most {MAX_QUERY_CHARS} characters.")
    terms: list[str] = []
    excluded: list[str] = []
    senders: list[str] = []
    kept: list[str] = []
    for match in _TOKEN.finditer(raw):
        negated, phrase, word = match.group(1), match.group(2), match.group(3)
        value = (phrase if phrase is not None else word or "").strip()
        if not value:
            continue
        if phrase is None and value.lower().startswith("from:"):
            sender = value[5:].strip()
            if sender:
                senders.append(sender)
            continue
        kept.append(match.group(0))
        (excluded if negated else terms).append(value)
    if len(terms) + len(excluded) + len(senders) > MAX_TERMS:
        raise ValueError(f"The search has too many words: at most {MAX_TERMS}.")
    return Query(text=" ".join(kept), terms=tuple(terms), excluded=tuple(excluded), senders=tuple(senders))


@dataclass(frozen=True)
class Cursor:
    """Where the next page starts: after the row (moment, id), newest first.

    The id is an entry's integer key, or a sent message's UUID.
    """

    moment: datetime
    key: int | uuid.UUID

    def __str__(self) -> str:
        micros = (self.moment - _EPOCH) // timedelta(microseconds=1)
        key = self.key.hex if isinstance(self.key, uuid.UUID) else self.key
        return f"{micros}.{key}"

    @classmethod
    def parse(cls, raw: str) -> Cursor:
        invalid = ValueError("That page link is not valid; showing the first page.")
        micros, _, key = raw.partition(".")
        if not (micros.isdigit() and len(micros) < 19 and key.isascii() and key.isalnum()):
            raise invalid
        try:
            moment = _EPOCH + timedelta(microseconds=int(micros))
            parsed: int | uuid.UUID = int(key) if key.isdigit() and len(key) < 19 else uuid.UUID(hex=key)
        except (OverflowError, ValueError):
            raise invalid from None
        return cls(moment=moment, key=parsed)


@dataclass
class Page:
    entries: list[Any] = field(default_factory=list)
    next_cursor: Cursor | None = None
    sent: bool = False  # rows are the user's sent messages, not inbox entries


def _day_start(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


_Rows = TypeVar("_Rows", bound=QuerySet[Any])


def _dated(rows: _Rows, field: str, after: date | None, before: date | None) -> _Rows:
    """Rows from the start of ``after`` to the end of ``before`` (both days included)."""
    if after is not None:
        rows = rows.filter(**{f"{field}__gte": _day_start(after)})
    if before is not None and before < date.max:
        rows = rows.filter(**{f"{field}__lt": _day_start(before + timedelta(days=1))})
    return rows


def search_entries(
    *,
    user: User,
    query: Query,
    folder: str = "",
    sender: str = "",
    has_attachment: bool = False,
    after: date | None = None,
    before: date | None = None,
) -> QuerySet[InboxEntry]:
    """The user's entries matching everything given, newest first. Dates are inclusive days.

    ``sender`` (and each ``from:`` of the query) is a case-insensitive part of the address;
    on PostgreSQL each of its words must also start a word of the address ("dana", "okafor@lum"),
    which lets the GIN index find one correspondent's mail without reading the whole mailbox.
    """
    entries = InboxEntry.objects.owned_by(user)
    if query.terms or query.excluded:
        if connection.vendor == "postgresql":
            # Constant SQL; the search text is a bound parameter.
            match = RawSQL(FTS_MATCH, [searchable(query.text)], output_field=BooleanField())  # noqa: S611
            entries = entries.filter(match)
        else:
            for term in query.terms:
                entries = entries.filter(search_document__contains=searchable(term))
            for term in query.excluded:
                entries = entries.exclude(search_document__contains=searchable(term))
    for address in (*query.senders, *([sender] if sender else [])):
        entries = entries.filter(sender__icontains=address)
        if connection.vendor == "postgresql" and _names_a_person(address) and (prefixes := _prefix_query(address)):
            # The document holds the sender's address words, so the GIN index finds one
            # correspondent's mail at once; without it the filter reads the whole mailbox.
            # A whole domain ("@gmail.com") is skipped: it matches too many rows for that to pay.
            entries = entries.filter(RawSQL(FTS_PREFIX_MATCH, [prefixes], output_field=BooleanField()))  # noqa: S611
    if folder:
        entries = entries.filter(folder=folder)
    if has_attachment:
        entries = entries.filter(has_attachments=True)
    entries = _dated(entries, "received_at", after, before)
    # The document can be 200 KB: never load it for a list.
    return entries.defer("search_document", "notice_text").order_by("-received_at", "-pk")


def page_of(rows: QuerySet[Any], *, cursor: Cursor | None = None, size: int = PAGE_SIZE) -> Page:
    """One page of a newest-first queryset, by keyset: constant cost however deep the page."""
    is_sent = rows.model is Message
    moment = "date" if is_sent else "received_at"
    if cursor is not None:
        if isinstance(cursor.key, uuid.UUID) != is_sent:
            raise ValueError("That page link is not valid; showing the first page.")
        rows = rows.filter(Q(**{f"{moment}__lt": cursor.moment}) | Q(**{moment: cursor.moment, "pk__lt": cursor.key}))
    found = list(rows[: size + 1])
    if len(found) <= size:
        return Page(entries=found, sent=is_sent)
    last = found[size - 1]
    return Page(entries=found[:size], next_cursor=Cursor(moment=getattr(last, moment), key=last.pk), sent=is_sent)


def search_sent(
    *,
    user: User,
    query: Query,
    sender: str = "",
    has_attachment: bool = False,
    after: date | None = None,
    before: date | None = None,
) -> QuerySet[Message]:
    """The user's sent messages (Sent, not Trash) matching everything given, newest first.

    Every word must appear in the subject, the text or a recipient's address, on every
    database: one user's Sent is small next to a whole instance's inboxes, so it has no
    full-text index of its own.
    """
    messages = Message.objects.filter(sender=user, sender_folder=SenderFolder.SENT)

    def matches(term: str) -> Q:
        recipients = Recipient.objects.filter(message=OuterRef("pk"), address__icontains=term)
        return Q(subject__icontains=term) | Q(text__icontains=term) | Q(Exists(recipients))

    for term in query.terms:
        messages = messages.filter(matches(term))
    for term in query.excluded:
        messages = messages.exclude(matches(term))
    for address in (*query.senders, *([sender] if sender else [])):
        messages = messages.filter(sender_address__icontains=address)
    if has_attachment:
        messages = messages.filter(Exists(MessageAttachment.objects.filter(message=OuterRef("pk"))))
    messages = _dated(messages, "date", after, before)
    return messages.defer("text", "html").order_by("-date", "-pk")
