"""What a reader may see of a received message: the one place that decides.

Every path that shows a message's content asks :func:`readable_content_for`:
the message page and its conversation, the text and HTML views, the .eml
file, reply and forward, the search document, the user API, and attachment
downloads and previews. The rules live here and nowhere else:

- A system notice shows its text.
- A message withdrawn before this reader opened it shows nothing: no body,
  no attachment list, no attachment bytes. One opened before the withdrawal
  stays readable.
- A copy that a spam verdict hid from its owner before they opened it shows
  nothing, even when the body is here for others (mailbox.spam): the run
  stops at the readers it reached before the verdict. "Not spam" brings the
  copy back, and with it the body.
- A refused message (its body did not match what was announced, or did not
  match the body schema), or one that expired before it was fetched, shows
  nothing either. Only the states below in ``_SHOWN`` show anything, so a
  state added later is hidden until it is listed here.
- The bytes of a received attachment are given out only when this message's
  own fetch from its sender produced them and verified them against its
  manifest (``ReceivedAttachment``). Holding a file with
  the same digest, stored for another message or uploaded by another user,
  counts for nothing: a manifest can name any digest.
- Bodies are stored on their message's row (one per sender domain and message
  id), fetched from that sender and checked against its digest; they are
  never looked up by digest, so one message's body is never shown for another.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from attachments.filenames import blocked_extension, clean_filename
from attachments.models import Blob
from federation import payloads
from outbox.models import MessageAttachment, Recipient

from .models import EntryState, FetchState, Folder, InboxEntry, ReceivedAttachment
from .states import BODY_AT_SENDER

__all__ = ["ReadableAttachment", "ReadableContent", "readable_content_for"]

# Entry (and remote message) states whose content, or its promise, may be shown.
_SHOWN = BODY_AT_SENDER | {FetchState.FETCHED}
_BODY_KEYS = (
    "subject",
    "from",
    "text",
    "html",
    "to",
    "cc",
    "date",
    "message_id",
    "in_reply_to",
    "references",
    "encrypted",
)


@dataclass(frozen=True)
class ReadableAttachment:
    """One attachment a reader may see, and its bytes when this reader may have them already."""

    index: int
    name: str
    content_type: str
    size: int
    digest: str
    #: Bytes this message's own fetch (or, for mail from this instance, its sender's upload)
    #: produced; None while they are still at the sender's.
    blob: Blob | None
    #: The blocked extension of a received file's cleaned name (never fetched nor served), else None.
    blocked: str | None = None

    def manifest_item(self) -> dict[str, Any]:
        """The manifest entry as the wire and older callers spell it."""
        return {"name": self.name, "type": self.content_type, "size": self.size, "digest": self.digest}


def withheld_by_verdict(entry: InboxEntry) -> bool:
    """A copy a spam verdict hid from its owner before they opened it: nothing of it is shown or fetched
    for them (whether or not the body is here for others), until they say it is not spam.

    Known correspondents keep theirs (mailbox.spam): their copies are never withheld.
    """
    # The entry's own fields first: pages that load its message with few columns pay nothing.
    if entry.remote_id is None or entry.opened_at is not None or entry.folder != Folder.SPAM:
        return False
    remote = entry.remote
    if remote is None or not remote.spam_verdict:
        return False
    return not Recipient.objects.filter(address__iexact=remote.sender, message__sender_id=entry.owner_id).exists()


def _hidden(entry: InboxEntry) -> bool:
    if withheld_by_verdict(entry):
        return True
    opened = entry.opened_at is not None
    local, remote = entry.local, entry.remote
    if local is not None and local.withdrawn_at is not None and not opened:
        return True
    if remote is not None and remote.state not in _SHOWN and not (opened and remote.state == FetchState.WITHDRAWN):
        return True
    return entry.state not in _SHOWN and not (opened and entry.state == EntryState.WITHDRAWN)


class ReadableContent:
    """An entry's content as its reader may see it: ``body`` and ``attachments``, or nothing."""

    def __init__(self, entry: InboxEntry) -> None:
        self.entry = entry
        self.notice = entry.state == EntryState.NOTICE
        self.hidden = not self.notice and _hidden(entry)

    @cached_property
    def body(self) -> dict[str, Any] | None:
        """Text, HTML, recipients, date and ids; None while not here or not for this reader."""
        entry = self.entry
        if self.notice:
            return {
                "subject": entry.subject,
                "from": entry.sender,
                "text": entry.notice_text,
                "html": None,
                "to": [],
                "cc": [],
                "date": None,
                "message_id": None,
                "in_reply_to": None,
                "references": [],
            }
        if self.hidden:
            return None
        message, remote = entry.local, entry.remote
        if message is not None:
            # Read from the row, never rebuilt: the same values as its canonical body.
            return {
                "subject": message.subject,
                "from": message.sender_address,
                "text": message.text,
                "html": message.html,
                "to": list(message.to or []),
                "cc": list(message.cc or []),
                "date": payloads.format_time(message.date),
                "message_id": message.message_id,
                "in_reply_to": message.in_reply_to,
                "references": list(message.references or []),
                "encrypted": message.encrypted,
            }
        if remote is not None and remote.content is not None:
            try:
                data = payloads.check_body(bytes(remote.content))
            except payloads.PayloadError:
                return None  # stored before bodies were checked: never rendered
            return {key: data.get(key) for key in _BODY_KEYS}
        return None

    @cached_property
    def original(self) -> Blob | None:
        """A message received by SMTP as it arrived, with this instance's trace headers; None for
        any other message, and while the reader may not see it (the .eml download serves it)."""
        remote = self.entry.remote
        if self.hidden or self.notice or remote is None or remote.raw_id is None:
            return None
        return remote.raw

    @cached_property
    def attachments(self) -> list[ReadableAttachment]:
        """The attachments this reader may see, in manifest order; [] while hidden. One query."""
        entry = self.entry
        if self.hidden or self.notice:
            return []
        if entry.local_id is not None:
            local = getattr(entry, "local", None)
            if local is not None and "attachments" in getattr(local, "_prefetched_objects_cache", {}):
                rows = local.attachments.all()  # prefetched with their blobs for a whole conversation
            else:
                rows = MessageAttachment.objects.filter(message_id=entry.local_id).select_related("blob")
            return [
                ReadableAttachment(
                    index=index,
                    name=row.name,
                    content_type=row.content_type,
                    size=row.size,
                    digest=row.blob.digest,
                    blob=row.blob,  # the sender's own upload
                )
                for index, row in enumerate(sorted(rows, key=lambda row: row.position))
            ]
        remote = entry.remote
        if remote is None:
            return []
        manifest = [item for item in remote.attachments or [] if isinstance(item, dict)]
        if not manifest:
            return []
        fetched = {
            row.position: row.blob
            for row in ReceivedAttachment.objects.verified().filter(remote=remote).select_related("blob")
            if row.blob is not None
        }
        items = []
        for index, item in enumerate(manifest):
            digest = str(item.get("digest") or "")
            size = int(item.get("size") or 0)
            blob = fetched.get(index)
            if blob is not None and (blob.digest != digest or blob.size != size):
                blob = None  # not the bytes this manifest announces: fetch them from the sender
            # The sender's name is cleaned as an upload's would be, whatever it announced.
            name = clean_filename(item.get("name"))
            items.append(
                ReadableAttachment(
                    index=index,
                    name=name,
                    content_type=str(item.get("type") or "application/octet-stream"),
                    size=size,
                    digest=digest,
                    blob=blob,
                    blocked=blocked_extension(name),
                )
            )
        return items

    @cached_property
    def attachment_names(self) -> list[str]:
        """The names of :attr:`attachments`, without looking up any bytes (for the search document)."""
        entry = self.entry
        if self.hidden or self.notice:
            return []
        if entry.local is not None:
            return [row.name for row in entry.local.attachments.all()]  # a prefetch serves this
        if entry.remote is None:
            return []
        manifest = entry.remote.attachments or []
        return [clean_filename(item.get("name")) for item in manifest if isinstance(item, dict)]

    def attachment(self, index: int) -> ReadableAttachment:
        """Attachment ``index``; LookupError when the reader has no such attachment."""
        items = self.attachments
        if not 0 <= index < len(items):
            raise LookupError(index)
        return items[index]


def readable_content_for(*, entry: InboxEntry) -> ReadableContent:
    """What the owner of ``entry`` may read of it (see the module docstring for the rules).

    ``entry`` comes from a user-scoped query with its ``remote`` and ``local``
    rows; nothing is fetched from anywhere here.
    """
    return ReadableContent(entry)
