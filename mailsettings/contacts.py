"""Contacts: the address book, built from the people the user wrote or replied to, named and edited by them.

A correspondent is in the book without a row of its own; a ``Contact`` row adds
someone, names them, or hides a correspondent the user removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import transaction

from accounts.models import User
from accounts.validators import normalize_address
from mailbox import selectors as mailbox_selectors
from outbox import selectors as outbox_selectors

from .models import Contact

_MAX_NAME = 100


@dataclass(frozen=True)
class ContactRow:
    address: str
    name: str
    #: When the user last wrote to them, or None for someone only added by hand.
    last_written: datetime | None


def contacts_for(*, user: User, query: str = "") -> list[ContactRow]:
    """The user's address book, by name then address (unnamed ones by address), matching ``query``."""
    query = query.strip().lower()
    rows = {c.address: c for c in Contact.objects.filter(owner=user)}
    written = dict(outbox_selectors.written_to(user=user))
    own = user.email.lower()
    book: list[ContactRow] = []
    for address in {*written, *rows}:
        row = rows.get(address)
        if address == own or (row is not None and row.hidden):
            continue
        name = row.name if row is not None else ""
        if query and query not in address and query not in name.lower():
            continue
        book.append(ContactRow(address=address, name=name, last_written=written.get(address)))
    book.sort(key=lambda c: (not c.name, c.name.lower(), c.address))
    return book


def _clean(address: str, name: str) -> tuple[str, str]:
    errors: dict[str, str] = {}
    try:
        address = normalize_address((address or "").strip())
    except ValidationError as exc:
        errors["address"] = f"“{(address or '').strip()[:100]}” is not an email address: {'; '.join(exc.messages)}"
    name = " ".join((name or "").split())
    if len(name) > _MAX_NAME:
        errors["name"] = f"A name can be at most {_MAX_NAME} characters."
    if any(c in name for c in '<>"@,;'):
        errors["name"] = 'A name cannot hold < > " @ , or ; (they would read as part of an address).'
    if errors:
        raise ValidationError(errors)
    return address, name


@transaction.atomic
def save_contact(*, user: User, address: str, name: str, previous: str = "") -> Contact:
    """Add or rename a contact (``previous``: the address it had, when it changes). ValidationError names the field."""
    address, name = _clean(address, name)
    if address == user.email.lower():
        raise ValidationError({"address": "That is your own address."})
    if previous and previous != address:
        delete_contact(user=user, address=previous)
    contact, _ = Contact.objects.update_or_create(owner=user, address=address, defaults={"name": name, "hidden": False})
    return contact


def delete_contact(*, user: User, address: str) -> None:
    """Remove someone from the address book; a correspondent stays hidden (not suggested) until added again."""
    address = address.strip().lower()
    if any(a == address for a, _ in outbox_selectors.written_to(user=user)):
        Contact.objects.update_or_create(owner=user, address=address, defaults={"name": "", "hidden": True})
    else:
        Contact.objects.filter(owner=user, address=address).delete()


@dataclass(frozen=True)
class Suggestion:
    address: str
    name: str

    def __str__(self) -> str:
        return f"{self.name} <{self.address}>" if self.name else self.address


def suggestions_for(*, user: User, query: str, limit: int = 8) -> list[Suggestion]:
    """Compose suggestions: contacts whose name or address matches first, then other recent correspondents."""
    query = query.strip().lower()
    if not query:
        return []
    rows = list(Contact.objects.filter(owner=user))
    hidden = {c.address for c in rows if c.hidden}
    names = {c.address: c.name for c in rows if not c.hidden}
    found: list[Suggestion] = []
    for contact in sorted(rows, key=lambda c: (c.name.lower(), c.address)):
        if contact.hidden or not (query in contact.address or query in contact.name.lower()):
            continue
        found.append(Suggestion(contact.address, contact.name))
    known = {s.address for s in found}
    # Then correspondents, named as the user named them, else as they name themselves.
    for address, name in mailbox_selectors.correspondents_named(user=user, query=query, limit=limit):
        if address not in known and address not in hidden:
            found.append(Suggestion(address, names.get(address) or name))
            known.add(address)
    # Names or addresses that start with the query come first.
    found.sort(key=lambda s: not (s.address.startswith(query) or s.name.lower().startswith(query)))
    return found[:limit]
