"""A user's mail as IMAP mailboxes: their names, UIDs and flags, and the messages' bytes.

These synchronous functions are called by the IMAP server (mailaccess.imap) in
the reactor's thread pool, never in the reactor's thread.

- The mailboxes are the folders (INBOX, Archive, Spam, Trash), the sender's
  Sent, Drafts, and one mailbox per label.
- :func:`sync` compares a mailbox's UID rows (mailaccess.models) with what it
  holds now, so anything the webmail did meanwhile shows: a message that left
  loses its UID, one that came gets the mailbox's next UID.
- Listing (flags, sizes, dates, envelopes, header fields) reads only what the
  notification said (:func:`headers`); nothing is fetched from the sender. A
  message's bytes (:func:`messages`) come from the body stored here, exactly
  as its ``.eml`` download; a body still at the sender's is asked for
  (:func:`ask_bodies`) and the server waits for it as POP3 does.
- Flags map both ways: ``\\Seen`` is read, ``\\Flagged`` starred; ``\\Deleted``
  and EXPUNGE move to Trash (from Trash: deleted for good; from a label
  mailbox: the label is taken off).
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from email.message import Message as EmailMessage
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import User
from mailbox import fetching, folders
from mailbox.eml import EmlSource, build_eml
from mailbox.eml_entries import sent_eml_source
from mailbox.models import Folder, InboxEntry, Label
from mailbox.states import BODY_AT_SENDER
from outbox import drafts as outbox_drafts
from outbox import sent_folder
from outbox.models import Draft, Message, SenderFolder
from outbox.selectors import open_drafts_for

from . import maildrop
from .imapenvelope import envelope_bytes
from .models import ImapEnvelope, ImapFolder, ImapUid

__all__ = [
    "Box",
    "CannotDo",
    "Row",
    "Snapshot",
    "append",
    "ask_bodies",
    "copy",
    "create_label",
    "delete_label",
    "expunge",
    "envelopes",
    "find_box",
    "headers",
    "list_boxes",
    "messages",
    "rename_label",
    "set_flags",
    "sync",
]

# The system mailboxes, in the order LIST gives them: (key, name, RFC 6154 attribute).
_SYSTEM = (
    ("inbox", "INBOX", ""),
    ("archive", "Archive", "\\Archive"),
    ("sent", "Sent", "\\Sent"),
    ("drafts", "Drafts", "\\Drafts"),
    ("spam", "Spam", "\\Junk"),
    ("trash", "Trash", "\\Trash"),
)
_FOLDER_KEYS = {Folder.INBOX.value, Folder.ARCHIVE.value, Folder.SPAM.value, Folder.TRASH.value}


class CannotDo(Exception):
    """What the user asked is not possible here; the message says why (answered ``NO [CANNOT]``)."""


@dataclass(frozen=True)
class Box:
    """One mailbox: its key (mailaccess.models.ImapFolder), its name and its LIST attributes."""

    key: str
    name: str
    attributes: tuple[str, ...]

    @property
    def label_id(self) -> int | None:
        return int(self.key.split(":", 1)[1]) if self.key.startswith("label:") else None

    @property
    def kind(self) -> str:
        """``entries`` (received copies), ``sent`` or ``drafts``."""
        return self.key if self.key in ("sent", "drafts") else "entries"


@dataclass(frozen=True)
class Row:
    """One message of a mailbox: its UID, what it is (an entry, sent message or draft id), its flags."""

    uid: int
    ref: str
    seen: bool
    flagged: bool


@dataclass(frozen=True)
class Snapshot:
    uid_validity: int
    uid_next: int
    rows: list[Row]


def list_boxes(*, user_id: int) -> list[Box]:
    """Every mailbox of the user: the system ones, then one per label (a label named like a system
    mailbox is listed as ``Labels/<name>``)."""
    boxes = [Box(key, name, (attr, "\\HasNoChildren") if attr else ("\\HasNoChildren",)) for key, name, attr in _SYSTEM]
    taken = {name.upper() for _k, name, _a in _SYSTEM}
    for label_id, name in Label.objects.filter(owner_id=user_id).order_by("name").values_list("pk", "name"):
        shown = name if name.upper() not in taken else f"Labels/{name}"
        taken.add(shown.upper())
        boxes.append(Box(f"label:{label_id}", shown, ("\\HasNoChildren",)))
    return boxes


def find_box(*, user_id: int, name: str) -> Box | None:
    """The mailbox called ``name`` (INBOX in any case, the others as listed), or None."""
    wanted = name.upper() if name.upper() == "INBOX" else name
    for box in list_boxes(user_id=user_id):
        if box.name == wanted:
            return box
    return None


# --- Members and UIDs ----------------------------------------------------------------------------


def _entries(user_id: int, box: Box) -> QuerySet[InboxEntry]:
    entries = InboxEntry.objects.filter(owner_id=user_id)
    if box.label_id is not None:
        return entries.filter(labels__pk=box.label_id).exclude(folder__in=[Folder.SPAM, Folder.TRASH])
    return entries.filter(folder=box.key)


def _members(user_id: int, box: Box) -> list[tuple[str, bool, bool]]:
    """What the mailbox holds now, oldest first: (ref, seen, flagged)."""
    if box.kind == "sent":
        sent = Message.objects.filter(sender_id=user_id, sender_folder=SenderFolder.SENT).order_by("date", "pk")
        return [(str(pk), True, starred) for pk, starred in sent.values_list("pk", "sender_starred")]
    if box.kind == "drafts":
        user = User.objects.get(pk=user_id)
        drafts = open_drafts_for(user=user).order_by("created_at", "pk")
        return [(str(pk), True, False) for pk in drafts.values_list("pk", flat=True)]
    rows = _entries(user_id, box).order_by("received_at", "pk").values_list("pk", "read", "starred")
    return [(str(pk), read, starred) for pk, read, starred in rows]


_REF_FIELD = {"entries": "entry_id", "sent": "sent_id", "drafts": "draft_id"}


def _folder(user_id: int, key: str) -> ImapFolder:
    """The mailbox's row, locked; made on first use with a UIDVALIDITY of the current time."""
    found = ImapFolder.objects.select_for_update().filter(owner_id=user_id, key=key).first()
    if found is not None:
        return found
    try:
        with transaction.atomic():
            ImapFolder.objects.create(owner_id=user_id, key=key, uid_validity=int(time.time()) & 0xFFFFFFFF or 1)
    except IntegrityError:
        pass  # another session made it meanwhile
    return ImapFolder.objects.select_for_update().get(owner_id=user_id, key=key)


def sync(*, user_id: int, box: Box) -> Snapshot:
    """The mailbox now, with a UID for every message: those that left lose theirs, new ones get the next."""
    members = _members(user_id, box)
    field = _REF_FIELD[box.kind]
    with transaction.atomic():
        folder = _folder(user_id, box.key)
        uids = {str(ref): uid for ref, uid in ImapUid.objects.filter(folder=folder).values_list(field, "uid")}
        present = {ref for ref, _s, _f in members}
        gone = [uid for ref, uid in uids.items() if ref not in present]
        if gone:
            ImapUid.objects.filter(folder=folder, uid__in=gone).delete()
        new = [ref for ref, _s, _f in members if ref not in uids]
        if new:
            made = []
            for ref in new:
                uids[ref] = folder.uid_next
                made.append(ImapUid(folder=folder, uid=folder.uid_next, **{field: ref}))
                folder.uid_next += 1
            ImapUid.objects.bulk_create(made)
            folder.save(update_fields=["uid_next"])
    rows = sorted((Row(uids[ref], ref, seen, flagged) for ref, seen, flagged in members), key=lambda r: r.uid)
    return Snapshot(folder.uid_validity, folder.uid_next, rows)


def uids_of(*, user_id: int, box: Box, refs: Iterable[str]) -> dict[str, int]:
    """The UIDs the mailbox gave these messages (after a :func:`sync`)."""
    field = _REF_FIELD[box.kind]
    rows = ImapUid.objects.filter(folder__owner_id=user_id, folder__key=box.key, **{f"{field}__in": list(refs)})
    return {str(ref): uid for ref, uid in rows.values_list(field, "uid")}


# --- Flags, expunge, copy ------------------------------------------------------------------------


def _entry_ids(user_id: int, refs: Iterable[str]) -> list[int]:
    wanted = [int(ref) for ref in refs]
    return list(InboxEntry.objects.filter(owner_id=user_id, pk__in=wanted).values_list("pk", flat=True))


def set_flags(*, user_id: int, box: Box, refs: list[str], seen: bool | None, flagged: bool | None) -> None:
    """Mark read or unread (``seen``) and star or unstar (``flagged``); None leaves it as it is."""
    user = User.objects.get(pk=user_id)
    if box.kind == "sent":
        present = list(Message.objects.filter(sender=user, pk__in=refs).values_list("pk", flat=True))
        if present and flagged is not None:
            sent_folder.star_sent(user=user, message_ids=present, starred=flagged)
        return
    if box.kind == "drafts":
        return
    ids = _entry_ids(user_id, refs)
    if not ids:
        return
    if seen is not None:
        folders.mark_read(user=user, entry_ids=ids, read=seen)
    if flagged is not None:
        folders.star(user=user, entry_ids=ids, starred=flagged)


def expunge(*, user_id: int, box: Box, refs: list[str]) -> None:
    """What a mail program deleted (``\\Deleted`` and EXPUNGE) leaves the mailbox: to Trash; from Trash
    for good; from a label mailbox the label comes off. Messages that left meanwhile are left alone."""
    user = User.objects.get(pk=user_id)
    if box.kind == "sent":
        present = list(
            Message.objects.filter(sender=user, pk__in=refs, sender_folder=SenderFolder.SENT).values_list(
                "pk", flat=True
            )
        )
        if present:
            sent_folder.trash_sent(user=user, message_ids=present)
        return
    if box.kind == "drafts":
        for draft in Draft.objects.filter(owner=user, pk__in=[int(r) for r in refs]):
            try:
                outbox_drafts.delete_draft(draft=draft)
            except outbox_drafts.DraftLocked:
                pass  # being sent right now: it leaves Drafts anyway
        return
    ids = list(_entries(user_id, box).filter(pk__in=[int(r) for r in refs]).values_list("pk", flat=True))
    if not ids:
        return
    if box.label_id is not None:
        folders.remove_label(user=user, entry_ids=ids, label_id=box.label_id)
    else:
        folders.delete(user=user, entry_ids=ids)


def copy(*, user_id: int, source: Box, target: Box, refs: list[str], move: bool) -> tuple[int, dict[str, int]]:
    """COPY or MOVE received messages to another mailbox; its UIDVALIDITY and their UIDs there, by ref.

    A received message is in one folder at a time, so a copy into a folder moves
    it there; a copy into a label mailbox puts the label on (a move also takes
    the source label off, or files it out of the Inbox into Archive).
    """
    if source.kind != "entries" or target.kind != "entries":
        raise CannotDo(
            "Only received messages can be copied or moved, and only to INBOX, Archive, Spam, Trash or a label"
        )
    user = User.objects.get(pk=user_id)
    ids = _entry_ids(user_id, refs)
    if ids:
        with transaction.atomic():
            if target.label_id is not None:
                folders.apply_label(user=user, entry_ids=ids, label_id=target.label_id)
                if move and source.label_id is not None:
                    folders.remove_label(user=user, entry_ids=ids, label_id=source.label_id)
                elif move and source.key == Folder.INBOX:
                    folders.move_entries(user=user, entry_ids=ids, folder=Folder.ARCHIVE)
            else:
                if move and source.label_id is not None:
                    folders.remove_label(user=user, entry_ids=ids, label_id=source.label_id)
                folders.move_entries(user=user, entry_ids=ids, folder=target.key)
    snapshot = sync(user_id=user_id, box=target)
    return snapshot.uid_validity, uids_of(user_id=user_id, box=target, refs=[str(pk) for pk in ids])


# --- Labels as mailboxes -------------------------------------------------------------------------


def create_label(*, user_id: int, name: str) -> None:
    if find_box(user_id=user_id, name=name) is not None:
        raise CannotDo(f"There is already a mailbox called {name}")
    try:
        folders.create_label(user=User.objects.get(pk=user_id), name=name)
    except folders.FolderError as exc:
        raise CannotDo(str(exc)) from None


def delete_label(*, user_id: int, name: str) -> None:
    box = find_box(user_id=user_id, name=name)
    if box is None:
        raise LookupError(name)
    if box.label_id is None:
        raise CannotDo(f"{box.name} is a system mailbox; it cannot be deleted")
    folders.delete_label(user=User.objects.get(pk=user_id), label_id=box.label_id)


def rename_label(*, user_id: int, old: str, new: str) -> None:
    box = find_box(user_id=user_id, name=old)
    if box is None:
        raise LookupError(old)
    if box.label_id is None:
        raise CannotDo(f"{box.name} is a system mailbox; it cannot be renamed")
    if find_box(user_id=user_id, name=new) is not None:
        raise CannotDo(f"There is already a mailbox called {new}")
    try:
        folders.rename_label(user=User.objects.get(pk=user_id), label_id=box.label_id, name=new)
    except folders.FolderError as exc:
        raise CannotDo(str(exc)) from None


# --- What a mail program reads -------------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    """A message as given to a mail program: its bytes (whole, or only the header block), size, date."""

    data: bytes
    size: int
    internal_date: datetime
    whole: bool


def _head(eml: bytes) -> bytes:
    head, sep, _body = eml.partition(b"\r\n\r\n")
    if not sep:
        head, _sep, _body = eml.partition(b"\n\n")
    return head + b"\r\n\r\n"


def _sent_eml(message: Message) -> bytes:
    return build_eml(sent_eml_source(message))


def _addresses(value: str) -> list[str]:
    return [address for _name, address in email.utils.getaddresses([value]) if address]


def _draft_eml(draft: Draft, owner: User) -> bytes:
    return build_eml(
        EmlSource(
            sender=owner.email,
            to=_addresses(draft.to),
            cc=_addresses(draft.cc),
            subject=draft.subject,
            date=draft.updated_at,
            message_id="",
            in_reply_to=draft.in_reply_to,
            references=[str(r) for r in draft.references or []],
            text=draft.text,
            html=None,
        )
    )


def headers(*, user_id: int, box: Box, refs: list[str]) -> dict[str, Loaded]:
    """The header block, size and date of each message, from the notification alone: nothing is fetched.

    The size of a message whose body is still at the sender's is the one its notification announced.
    """
    found: dict[str, Loaded] = {}
    if box.kind != "entries":
        for ref, loaded in messages(user_id=user_id, box=box, refs=refs, peek=True).items():
            if loaded is not None:
                found[ref] = Loaded(_head(loaded.data), loaded.size, loaded.internal_date, whole=False)
        return found
    entries = InboxEntry.objects.filter(owner_id=user_id, pk__in=[int(r) for r in refs]).select_related(
        "remote", "local", "owner", "owner__domain"
    )
    for entry in entries:
        size = max(1, entry.size + entry.attachments_size)
        found[str(entry.pk)] = Loaded(maildrop.entry_headers(entry), size, entry.received_at, whole=False)
    return found


# Raised when the rendering of header blocks changes, so envelopes kept before are rendered again.
_ENVELOPE_VERSION = 1

# Each entry's envelope as kept, if it is still the one to give. The key (mailaccess.models.ImapEnvelope)
# is a digest of the columns that decide which header block an entry has (the notification's, the
# body's, the message as it arrived by SMTP, or the note standing in for one that cannot be read) and
# what it says; a body and a message as it arrived never change once here, so their columns stand for
# them. ``live``: a copy in Spam that a verdict may hide, which depends on whom its owner wrote to since
# (mailbox.content.withheld_by_verdict), so it is never kept. In SQL, because a listing reads thousands
# of rows and comparing the keys there spares converting every column of every row in Python.
_KEPT_ENVELOPES = """
SELECT id, key, live, CASE WHEN kept = key AND NOT live THEN envelope END
FROM (
    SELECT e.id,
           md5(ROW(%(version)s::int, %(email)s::text, e.state, e.opened_at IS NULL, e.folder, e.hidden_from,
                   e.subject, e.sender, e.sender_name, e.remote_id, e.local_id, r.state, r.spam_verdict <> '',
                   r.raw_id, r.fetched_at, r.withdrawn_at, m.withdrawn_at)::text) AS key,
           (e.folder = %(spam)s AND e.opened_at IS NULL AND COALESCE(r.spam_verdict, '') <> '') AS live,
           v.key AS kept,
           v.envelope
    FROM mailbox_inboxentry e
    LEFT JOIN mailbox_remotemessage r ON r.id = e.remote_id
    LEFT JOIN outbox_message m ON m.id = e.local_id
    LEFT JOIN mailaccess_imapenvelope v ON v.entry_id = e.id
    WHERE e.owner_id = %(owner)s AND e.id = ANY(%(ids)s::bigint[])
) AS listed
"""


def envelopes(*, user_id: int, box: Box, refs: list[str]) -> dict[str, bytes]:
    """Each message's ENVELOPE (mailaccess.imapenvelope), from what the notification said: nothing is fetched.

    A received message's envelope is rendered once and kept (mailaccess.models.ImapEnvelope): a listing
    reads the kept ones in one query and renders only those whose message changed since (fetched,
    opened, withdrawn, filed as spam, ...). A copy in Spam that a verdict may hide is rendered every time.
    """
    if box.kind != "entries" or connection.vendor != "postgresql":
        # Envelopes are kept on PostgreSQL only (the key is computed in its SQL); elsewhere (the
        # SQLite demo) each listing renders them, which gives the same bytes.
        listed = headers(user_id=user_id, box=box, refs=refs)
        return {ref: envelope_bytes(loaded.data) for ref, loaded in listed.items()}
    email_address = User.objects.filter(pk=user_id).values_list("email", flat=True).first() or ""
    params: dict[str, Any] = {
        "version": _ENVELOPE_VERSION,
        "email": email_address,
        "spam": Folder.SPAM.value,
        "owner": user_id,
        "ids": [int(ref) for ref in refs],
    }
    found: dict[str, bytes] = {}
    keys: dict[str, str | None] = {}
    with connection.cursor() as cursor:
        cursor.execute(_KEPT_ENVELOPES, params)
        for pk, key, live, kept in cursor.fetchall():
            if kept is not None:
                found[str(pk)] = bytes(kept)
            else:
                keys[str(pk)] = None if live else key
    if not keys:
        return found
    made = []
    for ref, loaded in headers(user_id=user_id, box=box, refs=list(keys)).items():
        found[ref] = envelope_bytes(loaded.data)
        key = keys.get(ref)
        if key is not None:
            made.append(ImapEnvelope(entry_id=int(ref), key=key, envelope=found[ref]))
    if made:
        try:
            with transaction.atomic():
                ImapEnvelope.objects.bulk_create(
                    made, update_conflicts=True, unique_fields=["entry"], update_fields=["key", "envelope"]
                )
        except IntegrityError:
            pass  # a message deleted meanwhile: the next listing keeps the others
    return found


@dataclass(frozen=True)
class Asked:
    """The fetches a FETCH of bodies is waiting for."""

    fetches: list[maildrop.FetchAsked]


def ask_bodies(*, user_id: int, box: Box, refs: list[str], peek: bool) -> Asked:
    """Ask for the bodies still at their senders' (one fetch per message, so one per domain).

    Without ``peek`` the messages are opened as in the webmail (marked read); with
    it (``BODY.PEEK``) their read state is left alone.
    """
    if box.kind != "entries":
        return Asked([])
    asked_at = timezone.now().timestamp()
    entries = list(
        InboxEntry.objects.filter(owner_id=user_id, pk__in=[int(r) for r in refs]).select_related("remote", "local")
    )
    # An unopened copy hidden by a spam verdict is not fetched for its reader (mailbox.spam): nothing to wait for.
    waiting = [e for e in entries if e.remote_id is not None and e.state in BODY_AT_SENDER and not e.hidden_from]
    if not peek and entries:
        fetching.open_entries(entries=entries)
    for entry in waiting:
        if entry.remote_id is not None:
            fetching.request_fetch(remote_id=entry.remote_id, now=True)
    return Asked([maildrop.FetchAsked(remote_id=e.remote_id, asked_at=asked_at) for e in waiting if e.remote_id])


def bodies_settled(*, asked: Asked) -> bool:
    return all(maildrop.fetch_settled(one) for one in asked.fetches)


def messages(*, user_id: int, box: Box, refs: list[str], peek: bool) -> dict[str, Loaded | None]:
    """Each message's bytes, exactly as its ``.eml`` download; None for a body still at the sender's.

    Without ``peek`` a received message is marked read, as opening it does.
    """
    found: dict[str, Loaded | None] = {}
    if box.kind == "sent":
        for message in Message.objects.filter(sender_id=user_id, pk__in=refs):
            eml = _sent_eml(message)
            found[str(message.pk)] = Loaded(eml, len(eml), message.date, whole=True)
        return found
    if box.kind == "drafts":
        owner = User.objects.get(pk=user_id)
        for draft in Draft.objects.filter(owner_id=user_id, pk__in=[int(r) for r in refs]):
            eml = _draft_eml(draft, owner)
            found[str(draft.pk)] = Loaded(eml, len(eml), draft.created_at, whole=True)
        return found
    entries = InboxEntry.objects.filter(owner_id=user_id, pk__in=[int(r) for r in refs]).only("pk", "state")
    for entry in entries:
        if entry.state in BODY_AT_SENDER:
            found[str(entry.pk)] = None
            continue
        try:
            eml = maildrop.readable_eml(user_id=user_id, entry_id=entry.pk, mark_read=not peek)
        except LookupError:
            continue
        received = InboxEntry.objects.filter(pk=entry.pk).values_list("received_at", flat=True).first()
        found[str(entry.pk)] = Loaded(eml, len(eml), received or timezone.now(), whole=True)
    return found


# --- APPEND --------------------------------------------------------------------------------------


def _parsed(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def _text_of(message: Any) -> str:
    part = message.get_body(preferencelist=("plain",)) if hasattr(message, "get_body") else None
    if part is None:
        return ""
    try:
        return str(part.get_content())
    except (LookupError, ValueError):
        return ""


def append(*, user_id: int, box: Box, data: bytes) -> int:
    """APPEND: a copy of a sent message to Sent (it is already there: its UID), a draft to Drafts.

    Sent holds what Pushmail sent, so a copy of anything else is refused with
    :class:`CannotDo`; so is an APPEND to the received mailboxes.
    """
    message = _parsed(data)
    if box.kind == "sent":
        message_id = str(message.get("Message-ID", "")).strip()
        sent = Message.objects.filter(sender_id=user_id, message_id=message_id).first() if message_id else None
        if sent is None:
            raise CannotDo(
                "Sent holds the messages Pushmail sent; this one was not sent through this server "
                "(send through the submission server and it appears here by itself)"
            )
        sync(user_id=user_id, box=box)
        return uids_of(user_id=user_id, box=box, refs=[str(sent.pk)]).get(str(sent.pk), 0)
    if box.kind == "drafts":
        draft = outbox_drafts.create_draft(
            owner=User.objects.get(pk=user_id),
            to=str(message.get("To", "")),
            cc=str(message.get("Cc", "")),
            bcc=str(message.get("Bcc", "")),
            subject=str(message.get("Subject", "")),
            text=_text_of(message),
            in_reply_to=str(message.get("In-Reply-To", "")).strip(),
            references=str(message.get("References", "")).split(),
            signature=False,
        )
        sync(user_id=user_id, box=box)
        return uids_of(user_id=user_id, box=box, refs=[str(draft.pk)]).get(str(draft.pk), 0)
    raise CannotDo("Messages can be appended to Sent and Drafts only; mail arrives in the other mailboxes by itself")
