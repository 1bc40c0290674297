"""Drafts: write, save, attach, reply, forward, and send with undo.

A draft becomes a Message only in the ``send_draft`` task, after the undo
delay: the Send button checks everything first and sets ``send_at``; Undo
clears it; the task (and the sweep that backs it up) sends a draft whose
``send_at`` has passed, exactly once, under a row lock.
"""

from __future__ import annotations

import inspect
import logging
import mimetypes
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import markdown
import nh3
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import User
from accounts.validators import normalize_address
from attachments.filenames import clean_filename
from attachments.services import check_new_files, store_upload, storing_atomically
from pushmail_site.jobs import enqueue, lock, overdue_before
from pushmail_site.states import transition

from .models import Draft, DraftAttachment, DraftState, Message
from .states import DRAFT

log = logging.getLogger(__name__)

SIGNATURE_SEPARATOR = "-- \n"
# Drafts already sent are kept this long so the page that sent them can say "Sent".
SENT_DRAFT_KEEP = timedelta(hours=1)

# --- Markdown --------------------------------------------------------------------

# A conservative allowlist: text structure and links only. No images (remote
# content), no style, no forms, no frames; nh3 drops everything else.
MARKDOWN_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6",
    "hr", "i", "li", "ol", "p", "pre", "strong", "sub", "sup", "table", "tbody", "td", "th", "thead",
    "tr", "ul",
}  # fmt: skip
MARKDOWN_ATTRIBUTES = {"a": {"href", "title"}, "abbr": {"title"}, "td": {"align"}, "th": {"align"}}


def render_markdown(text: str) -> str:
    """Markdown to HTML, then sanitized: no script, handler, style or remote resource survives."""
    html = markdown.markdown(text, extensions=["extra", "sane_lists"], output_format="html")
    return nh3.clean(
        html,
        tags=MARKDOWN_TAGS,
        attributes=MARKDOWN_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )


# --- Addresses and subjects ----------------------------------------------------------

FIELD_LABELS = {"to": "To", "cc": "Cc", "bcc": "Bcc"}


def split_addresses(value: str) -> list[str]:
    """The items of a comma- (or semicolon-) separated field; ``Name <a@b>`` gives ``a@b``."""
    items = []
    for raw in re.split(r"[,;]", value or ""):
        item = raw.strip(" \t")
        if not item.strip():
            continue
        match = re.fullmatch(r"[^<>]*<([^<>]*)>\s*", item)
        items.append(match.group(1) if match else item)
    return items


def parse_addresses(value: str, field_name: str) -> list[str]:
    """Normalized addresses of one field; ValidationError naming the field and the bad item."""
    label = FIELD_LABELS[field_name]
    if "\r" in (value or "") or "\n" in (value or ""):
        raise ValidationError(
            {field_name: [f"{label} contains a line break (CR or LF); addresses must be on one line."]}
        )
    addresses = []
    errors = []
    for item in split_addresses(value):
        try:
            addresses.append(normalize_address(item))
        except ValidationError:
            errors.append(f"{label}: {item!r} is not a valid address (expected name@domain).")
    if errors:
        raise ValidationError({field_name: errors})
    return list(dict.fromkeys(addresses))


def max_recipients() -> int:
    """The same bound outbox.services.send_message applies."""
    return settings.PUSHMAIL_MAX_RECIPIENTS * 10


def check_subject(subject: str) -> None:
    if "\r" in subject or "\n" in subject:
        raise ValidationError(
            {"subject": ["The subject contains a line break (CR or LF), which is not allowed in a mail header."]}
        )
    if len(subject) > 998:
        raise ValidationError({"subject": ["The subject is longer than 998 characters."]})


# --- Creating and saving -----------------------------------------------------------------


def _with_signature(owner: User, text: str) -> str:
    signature = (owner.signature or "").strip("\n")
    if not signature:
        return text
    return f"{text}\n\n{SIGNATURE_SEPARATOR}{signature}\n"


def create_draft(
    *,
    owner: User,
    to: str = "",
    cc: str = "",
    bcc: str = "",
    subject: str = "",
    text: str = "",
    in_reply_to: str = "",
    references: list[str] | None = None,
    signature: bool = True,
) -> Draft:
    """A new draft; a new message (``signature=True``) ends with the owner's signature."""
    return Draft.objects.create(
        owner=owner,
        to=to,
        cc=cc,
        bcc=bcc,
        subject=subject[:998],
        text=_with_signature(owner, text) if signature else text,
        in_reply_to=in_reply_to[:400],
        references=references or [],
    )


def unsaved_draft(*, owner: User, to: str = "") -> Draft:
    """What the compose page shows for a new message: a draft not stored until its first save."""
    return Draft(owner=owner, to=to[:10_000], text=_with_signature(owner, ""))


def draft_for_key(*, owner: User, key: uuid.UUID, create: bool = True) -> Draft | None:
    """The draft a compose page's saves go to, made by the first one (``create``).

    The page names its draft with a key it was given, so a repeated or
    concurrent first save (autosave racing Send) finds the same draft.
    """
    found = Draft.objects.filter(owner=owner, client_key=key).first()
    if found is not None or not create:
        return found
    draft, _created = Draft.objects.get_or_create(
        owner=owner, client_key=key, defaults={"text": _with_signature(owner, "")}
    )
    return draft


def open_once(*, owner: User, key: uuid.UUID | None, prepare: Callable[[], Prepared]) -> Prepared:
    """The draft ``prepare`` makes (a reply, a forward), made once per ``key``: the same request
    repeated (a double click, a resubmitted form) opens the draft the first one made."""
    if key is None:
        return prepare()
    found = draft_for_key(owner=owner, key=key, create=False)
    if found is not None:
        return Prepared(found)
    try:
        with transaction.atomic():
            prepared = prepare()
            Draft.objects.filter(pk=prepared.draft.pk).update(client_key=key)
    except IntegrityError:
        return Prepared(Draft.objects.get(owner=owner, client_key=key))
    return prepared


class DraftLocked(Exception):
    """The draft is queued for sending (or sent): it cannot change until Undo."""


def update_draft(*, draft: Draft, to: str, cc: str, bcc: str, subject: str, text: str, markdown: bool) -> Draft:
    """Save what the user typed, as typed: checks happen on Send."""
    with transaction.atomic():
        current = lock(Draft.objects.filter(pk=draft.pk), skip_locked=False).get()
        if current.state != DraftState.DRAFT:
            raise DraftLocked()
        current.to, current.cc, current.bcc = to[:10_000], cc[:10_000], bcc[:10_000]
        current.subject = subject[:998]
        current.text = text
        current.markdown = markdown
        current.save(update_fields=["to", "cc", "bcc", "subject", "text", "markdown", "updated_at"])
    return current


def delete_draft(*, draft: Draft) -> None:
    with transaction.atomic():
        current = lock(Draft.objects.filter(pk=draft.pk), skip_locked=False).first()
        if current is None:
            return
        if current.state == DraftState.SCHEDULED:
            raise DraftLocked()
        current.delete()


# --- Reply and forward ---------------------------------------------------------------------

_RE = re.compile(r"^\s*(re|aw|sv)\s*:\s*", re.IGNORECASE)
_FWD = re.compile(r"^\s*(fwd?|fw)\s*:\s*", re.IGNORECASE)


def reply_subject(subject: str) -> str:
    return subject if _RE.match(subject or "") else f"Re: {subject or ''}".rstrip()


def forward_subject(subject: str) -> str:
    return subject if _FWD.match(subject or "") else f"Fwd: {subject or ''}".rstrip()


def quote(text: str) -> str:
    return "\n".join(f"> {line}".rstrip() for line in (text or "").rstrip("\n").split("\n"))


def format_date(value: datetime) -> str:
    return timezone.localtime(value).strftime("%a, %d %b %Y at %H:%M %Z").strip()


def _body_text(body: dict[str, Any]) -> str:
    text = body.get("text") or ""
    if not text and body.get("html"):
        # An HTML-only message: quote its text content.
        text = nh3.clean(body["html"], tags=set())
        text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text


@dataclass
class Prepared:
    """A draft made from another message, and what the user should be told about it."""

    draft: Draft
    notes: list[str] = field(default_factory=list)


def _entry_parent(entry: Any) -> tuple[str, list[str], datetime]:
    """(message id, references, date) of an inbox entry's message; notices have none."""
    if entry.local is not None:
        return entry.local.message_id, list(entry.local.references or []), entry.local.date
    if entry.remote is not None:
        return entry.remote.message_id, list(entry.remote.references or []), entry.remote.date
    return "", [], entry.received_at


def _references(message_id: str, references: list[str]) -> list[str]:
    if not message_id:
        return []
    chain = [*references, message_id]
    return chain[:1] + chain[-19:] if len(chain) > 20 else chain


def _others(addresses: list[str], exclude: set[str]) -> list[str]:
    result = []
    for value in addresses:
        try:
            address = normalize_address(value)
        except ValidationError:
            continue
        if address not in exclude and address not in result:
            result.append(address)
    return result


def _why_no_body(entry: Any) -> str:
    from mailbox.models import EntryState

    return {
        EntryState.WITHDRAWN: "The message was withdrawn by the sender",
        EntryState.EXPIRED: "The message expired at the sender's server before it was fetched",
        EntryState.TAMPERED: "The message's body did not match what was announced and was refused",
        EntryState.MALFORMED: "The message's body was malformed and was refused",
    }.get(entry.state, "The message is still at the sender's server")


def reply_to_entry(*, owner: User, entry: Any, reply_all: bool = False) -> Prepared:
    """A draft answering an inbox entry, quoting it when its body is here."""
    from mailbox.content import readable_content_for

    body = readable_content_for(entry=entry).body
    message_id, references, date = _entry_parent(entry)
    own = {owner.email.lower()}
    to = _others([entry.sender], own)
    cc: list[str] = []
    notes = []
    if reply_all:
        if body is not None:
            to = _others([entry.sender, *(body.get("to") or [])], own)
            cc = _others(body.get("cc") or [], own | set(to))
        else:
            notes.append(
                f"{_why_no_body(entry)}, so only the sender is addressed: the other recipients are listed in its body."
            )
    if body is not None and _body_text(body):
        text = f"\n\nOn {format_date(date)}, {entry.sender} wrote:\n{quote(_body_text(body))}\n"
    else:
        text = ""
        if body is None:
            notes.append(f"{_why_no_body(entry)}, so the reply does not quote it.")
    draft = create_draft(
        owner=owner,
        to=", ".join(to),
        cc=", ".join(cc),
        subject=reply_subject(entry.subject),
        text=text,
        in_reply_to=message_id,
        references=_references(message_id, references),
        signature=False,
    )
    return Prepared(draft, notes)


def reply_to_sent(*, owner: User, message: Message, reply_all: bool = False) -> Prepared:
    """A follow-up to the user's own sent message: to its recipients, quoting it."""
    own = {owner.email.lower()}
    to = _others(list(message.to or []), own)
    cc = _others(list(message.cc or []), own | set(to)) if reply_all else []
    if not to and not cc:
        to = [owner.email]
    notes: list[str] = []
    # The sender's copy keeps its body for as long as it is in their mailbox.
    body_text = _body_text({"text": message.text, "html": message.html})
    text = f"\n\nOn {format_date(message.date)}, {message.sender_address} wrote:\n{quote(body_text)}\n"
    draft = create_draft(
        owner=owner,
        to=", ".join(to),
        cc=", ".join(cc),
        subject=reply_subject(message.subject),
        text=text,
        in_reply_to=message.message_id,
        references=_references(message.message_id, list(message.references or [])),
        signature=False,
    )
    return Prepared(draft, notes)


def _forward_header(*, sender: str, date: datetime, subject: str, to: list[str], cc: list[str]) -> str:
    lines = [
        "---------- Forwarded message ----------",
        f"From: {sender}",
        f"Date: {format_date(date)}",
        f"Subject: {subject}",
    ]
    if to:
        lines.append("To: " + ", ".join(to))
    if cc:
        lines.append("Cc: " + ", ".join(cc))
    return "\n".join(lines)


def forward_entry(*, owner: User, entry: Any) -> Prepared:
    """A draft forwarding an inbox entry with the attachments its reader already has.

    What the reader may read (``mailbox.content``) is all a forward carries: a
    message withdrawn before it was opened, or refused, forwards no text and no
    file, and a received file is attached only once this message's own fetch
    brought it from its sender.
    """
    from mailbox.content import readable_content_for

    content = readable_content_for(entry=entry)
    body = content.body
    _message_id, _references_, date = _entry_parent(entry)
    notes = []
    header = _forward_header(
        sender=entry.sender,
        date=date,
        subject=entry.subject,
        to=list((body or {}).get("to") or []),
        cc=list((body or {}).get("cc") or []),
    )
    if body is None:
        text = f"\n\n{header}\n\n"
        notes.append(f"{_why_no_body(entry)}, so its text is not included.")
    else:
        text = f"\n\n{header}\n\n{_body_text(body)}\n"

    refused = [item.name for item in content.attachments if item.blocked]
    carried = [item for item in content.attachments if not item.blocked]
    left = [item.name for item in carried if item.blob is None]

    with transaction.atomic():
        draft = create_draft(owner=owner, subject=forward_subject(entry.subject), text=text, signature=False)
        DraftAttachment.objects.bulk_create(
            DraftAttachment(
                draft=draft, blob=item.blob, name=item.name, content_type=item.content_type, size=item.blob.size
            )
            for item in carried
            if item.blob is not None
        )
    if refused:
        notes.append("Not attached, because files of their type could run as programs: " + ", ".join(refused) + ".")
    if left:
        notes.append(
            "Not attached, because they have not been downloaded to this server yet: "
            + ", ".join(left)
            + ". Open them in the original message first, then forward again."
        )
    return Prepared(draft, notes)


# --- Attachments --------------------------------------------------------------------------


def add_attachments(*, draft: Draft, files: list[UploadedFile]) -> list[DraftAttachment]:
    """Store uploads (deduplicated by SHA-256) on a draft: all of them, or none with a reason.

    Every limit is checked before a byte is stored, and the files are stored
    with their draft rows or not at all.
    """
    files = [f for f in files if f is not None]
    if not files:
        return []
    with storing_atomically():
        current = lock(Draft.objects.filter(pk=draft.pk), skip_locked=False).get()
        if current.state != DraftState.DRAFT:
            raise DraftLocked()
        check_new_files(
            user=draft.owner,
            files=[(upload.name or "", upload.size or 0) for upload in files],
            attached=[a.size for a in current.attachments.all()],
        )
        added = []
        for upload in files:
            name = clean_filename(upload.name)
            content_type = (upload.content_type or "").split(";")[0].strip().lower()
            if not re.fullmatch(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*", content_type) or (
                content_type == "application/octet-stream"
            ):
                content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
            blob = store_upload(file=upload)
            added.append(
                DraftAttachment.objects.create(
                    draft=current, blob=blob, name=name, content_type=content_type[:127], size=blob.size
                )
            )
        Draft.objects.filter(pk=current.pk).update(updated_at=timezone.now())
    return added


def remove_attachment(*, draft: Draft, attachment_id: int) -> None:
    with transaction.atomic():
        current = lock(Draft.objects.filter(pk=draft.pk), skip_locked=False).get()
        if current.state != DraftState.DRAFT:
            raise DraftLocked()
        DraftAttachment.objects.filter(draft=current, pk=attachment_id).delete()


# --- Send with undo --------------------------------------------------------------------------


@dataclass
class Outgoing:
    """A draft's fields as send_message takes them, all checked."""

    to: list[str]
    cc: list[str]
    bcc: list[str]
    subject: str
    text: str
    html: str | None


def check_draft(draft: Draft) -> Outgoing:
    """Everything Send needs, checked at once; ValidationError lists every problem by field."""
    errors: dict[str, list[str]] = {}
    parsed: dict[str, list[str]] = {}
    for name in ("to", "cc", "bcc"):
        try:
            parsed[name] = parse_addresses(getattr(draft, name), name)
        except ValidationError as exc:
            errors.update(exc.message_dict)
            parsed[name] = []
    try:
        check_subject(draft.subject)
    except ValidationError as exc:
        errors.update(exc.message_dict)
    if not errors:
        count = len(set(parsed["to"]) | set(parsed["cc"]) | set(parsed["bcc"]))
        if count == 0:
            errors["to"] = ["Add at least one recipient in To, Cc or Bcc."]
        elif count > max_recipients():
            errors["to"] = [f"Too many recipients: {count}; a message can have at most {max_recipients()}."]
    try:
        # The files are already counted in the mailbox's usage: only an overfull mailbox stops the send.
        check_new_files(user=draft.owner, files=[(a.name, a.size) for a in draft.attachments.all()], quota_extra=0)
    except ValidationError as exc:
        errors.update(exc.message_dict)
    if errors:
        raise ValidationError(errors)
    return Outgoing(
        to=parsed["to"],
        cc=parsed["cc"],
        bcc=parsed["bcc"],
        subject=draft.subject,
        text=draft.text,
        html=render_markdown(draft.text) if draft.markdown else None,
    )


def queue_send(*, draft: Draft) -> Draft:
    """Check the draft, then send it after the undo delay (``send_at``)."""
    from .tasks import send_draft

    with transaction.atomic():
        # Only the draft row is locked (no joins): FOR UPDATE would lock the owner and domain rows too.
        current = lock(Draft.objects.filter(pk=draft.pk), skip_locked=False).get()
        if current.state == DraftState.SENT:
            raise ValidationError({"__all__": ["This message has already been sent."]})
        if current.state == DraftState.SCHEDULED:
            return current
        check_draft(current)
        delay = settings.PUSHMAIL_UNDO_SEND_SECONDS
        send_at = timezone.now() + timedelta(seconds=delay)
        transition(current, DRAFT, DraftState.SCHEDULED, fields={"send_at": send_at, "updated_at": timezone.now()})
        enqueue(send_draft, current.pk, countdown=delay)
    return current


def undo_send(*, draft: Draft) -> bool:
    """Stop a queued send; False when the message has already gone out."""
    with transaction.atomic():
        current = lock(Draft.objects.filter(pk=draft.pk), skip_locked=False).first()
        if current is None or current.state == DraftState.SENT:
            return False
        if current.state == DraftState.SCHEDULED:
            transition(current, DRAFT, DraftState.DRAFT, fields={"send_at": None, "updated_at": timezone.now()})
        return True


def _attachment_inputs(rows: list[DraftAttachment]) -> list[Any]:
    """The draft's files in the form send_message takes (attachments.services.AttachmentInput)."""
    from .services import send_message

    if "attachments" not in inspect.signature(send_message).parameters:
        raise ValidationError({"attachments": ["Sending attachments is not available on this server yet."]})
    from attachments.services import AttachmentInput

    return [AttachmentInput(blob=row.blob, name=row.name, content_type=row.content_type) for row in rows]


def send_draft(draft_id: int) -> Message | None:
    """Turn a due draft into a sent message, once: the task body, safe to repeat."""
    from .services import send_message

    with transaction.atomic():
        draft = (
            # No select_related: FOR UPDATE would also lock the joined owner and domain rows, and
            # skip_locked would then skip this draft while another of the domain's drafts is sending.
            lock(Draft.objects.all())
            .filter(pk=draft_id, state=DraftState.SCHEDULED, send_at__lte=timezone.now())
            .first()
        )
        if draft is None:
            return None
        try:
            outgoing = check_draft(draft)
        except ValidationError as exc:
            # Something changed since Send (a limit, the quota): reopen the draft rather than send half.
            _reopen(draft, exc)
            return None
        kwargs: dict[str, Any] = {}
        attachments = list(draft.attachments.select_related("blob"))
        try:
            with transaction.atomic():
                if attachments:
                    kwargs["attachments"] = _attachment_inputs(attachments)
                    # From here the files count against the quota as the message's, not the draft's
                    # (send_message checks the quota with them as extra bytes); undone if it refuses.
                    DraftAttachment.objects.filter(draft=draft).delete()
                message = send_message(
                    sender=draft.owner,
                    to=outgoing.to,
                    cc=outgoing.cc,
                    bcc=outgoing.bcc,
                    subject=outgoing.subject,
                    text=outgoing.text,
                    html=outgoing.html,
                    in_reply_to=draft.in_reply_to,
                    **kwargs,
                )
        except ValidationError as exc:
            _reopen(draft, exc)
            return None
        transition(
            draft,
            DRAFT,
            DraftState.SENT,
            fields={"sent_message": message, "send_at": None, "updated_at": timezone.now()},
        )
    return message


def _reopen(draft: Draft, exc: ValidationError) -> None:
    """Back to Drafts, and a notice in the inbox saying why it was not sent."""
    from mailbox.services import post_notice

    log.warning("draft %s not sent: %s", draft.pk, exc.messages)
    transition(draft, DRAFT, DraftState.DRAFT, fields={"send_at": None, "updated_at": timezone.now()})
    post_notice(
        owner=draft.owner,
        subject=f"Not sent: {draft.subject or '(no subject)'}"[:998],
        text="Your message was not sent and is back in Drafts:\n\n" + "".join(f"  {m}\n" for m in exc.messages),
    )


def send_due_drafts(*, limit: int = 1000) -> int:
    """Queue every draft whose send time has passed (a lost task still sends); drop old sent drafts."""
    from .tasks import send_draft as task

    due = list(
        Draft.objects.filter(state=DraftState.SCHEDULED, send_at__lte=overdue_before())
        .order_by("send_at")
        .values_list("pk", flat=True)[:limit]
    )
    for draft_id in due:
        enqueue(task, draft_id)
    Draft.objects.filter(state=DraftState.SENT, updated_at__lt=timezone.now() - SENT_DRAFT_KEEP).delete()
    return len(due)
