"""Drafts: made, saved as typed, deleted. Checks happen on Send (outbox/draft_sending.py).

A draft can change only in the ``draft`` state: once scheduled (Send, within the
undo window) or sent it is locked (:class:`DraftLocked`) until Undo.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import IntegrityError, transaction

from accounts.models import User
from pushmail_site.jobs import lock

from .models import Draft, DraftState

SIGNATURE_SEPARATOR = "-- \n"


class DraftLocked(Exception):
    """The draft is queued for sending (or sent): it cannot change until Undo."""


@dataclass
class Prepared:
    """A draft made from another message, and what the user should be told about it."""

    draft: Draft
    notes: list[str] = field(default_factory=list)


def lock_open_draft(draft: Draft) -> Draft:
    """The draft's row, locked for a change; DraftLocked unless it is still being written.

    Only the draft row is locked (no joins): FOR UPDATE would lock the owner and domain rows too.
    """
    current = lock(Draft.objects.filter(pk=draft.pk), skip_locked=False).get()
    if current.state != DraftState.DRAFT:
        raise DraftLocked()
    return current


def with_signature(owner: User, text: str) -> str:
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
        text=with_signature(owner, text) if signature else text,
        in_reply_to=in_reply_to[:400],
        references=references or [],
    )


def unsaved_draft(*, owner: User, to: str = "") -> Draft:
    """What the compose page shows for a new message: a draft not stored until its first save."""
    return Draft(owner=owner, to=to[:10_000], text=with_signature(owner, ""))


def draft_for_key(*, owner: User, key: uuid.UUID, create: bool = True) -> Draft | None:
    """The draft a compose page's saves go to, made by the first one (``create``).

    The page names its draft with a key it was given, so a repeated or
    concurrent first save (autosave racing Send) finds the same draft.
    """
    found = Draft.objects.filter(owner=owner, client_key=key).first()
    if found is not None or not create:
        return found
    draft, _created = Draft.objects.get_or_create(
        owner=owner, client_key=key, defaults={"text": with_signature(owner, "")}
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


def update_draft(*, draft: Draft, to: str, cc: str, bcc: str, subject: str, text: str, markdown: bool) -> Draft:
    """Save what the user typed, as typed: checks happen on Send."""
    with transaction.atomic():
        current = lock_open_draft(draft)
        current.to, current.cc, current.bcc = to[:10_000], cc[:10_000], bcc[:10_000]
        current.subject = subject[:998]
        current.text = text
        current.markdown = markdown
        current.save(update_fields=["to", "cc", "bcc", "subject", "text", "markdown", "updated_at"])
    return current


def delete_draft(*, draft: Draft) -> None:
    """Delete a draft, or a sent one's leftover row; not one within its undo window."""
    with transaction.atomic():
        current = lock(Draft.objects.filter(pk=draft.pk), skip_locked=False).first()
        if current is None:
            return
        if current.state == DraftState.SCHEDULED:
            raise DraftLocked()
        current.delete()
