"""Undo notices: after a send or a change to a selection, the next pages say what happened with an Undo button.

One notice at a time, kept in the user's session until its window ends (the send's undo
delay, or ``PUSHMAIL_UNDO_SECONDS`` for other actions) or until it is used. What it holds
is enough to reverse the action: the draft whose send is pending, or each entry's folder
and labels before the change. Undo is a POST naming the notice's token, so an old page's
button cannot reverse a later action.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.models import User
from mailbox import folders
from mailbox.models import Folder
from reputation import services as reputation

SESSION_KEY = "pushmail_undo"
SEND = "send"
ENTRIES = "entries"
# What Undo reverses: a move (archive, delete, spam, move to a folder) or a label change.
MOVES = frozenset({"archive", "delete", "report_spam", "not_spam", "inbox", "spam", "trash"})


@dataclass(frozen=True)
class Notice:
    token: str
    kind: str
    text: str
    until: datetime
    data: dict[str, Any]

    @property
    def seconds(self) -> int:
        return max(0, round((self.until - timezone.now()).total_seconds()))


def offer(session: SessionBase, *, kind: str, text: str, data: dict[str, Any], until: datetime | None = None) -> Notice:
    """Show ``text`` with an Undo button on the next pages, until ``until`` (default: the undo window)."""
    if until is None:
        until = timezone.now() + timedelta(seconds=settings.PUSHMAIL_UNDO_SECONDS)
    notice = Notice(token=secrets.token_urlsafe(12), kind=kind, text=text, until=until, data=data)
    session[SESSION_KEY] = {
        "token": notice.token,
        "kind": kind,
        "text": text,
        "until": until.isoformat(),
        "data": data,
    }
    return notice


def current(session: SessionBase) -> Notice | None:
    """The notice still within its window; an expired one is forgotten."""
    stored = session.get(SESSION_KEY)
    if not stored:
        return None
    until = parse_datetime(str(stored.get("until", "")))
    if until is None or until <= timezone.now():
        del session[SESSION_KEY]
        return None
    return Notice(token=stored["token"], kind=stored["kind"], text=stored["text"], until=until, data=stored["data"])


def take(session: SessionBase, token: str) -> Notice | None:
    """The notice this token names, if still within its window; it is used up."""
    notice = current(session)
    if notice is None or not secrets.compare_digest(notice.token, token):
        return None
    del session[SESSION_KEY]
    return notice


def snapshot(*, user: User, action: str, entry_ids: list[str]) -> dict[str, Any] | None:
    """What the entries were before ``action``, enough to put them back; None when Undo has nothing to offer.

    Moves keep each entry's folder and Trash date; a label change keeps which entries it
    changes. Delete in Trash deletes forever: that has no undo.
    """
    verb, _, arg = action.partition(":")
    ids = [int(i) for i in entry_ids if str(i).isdigit() and len(str(i)) < 19]
    if not ids:
        return None
    if verb in ("label", "unlabel") and arg.isdigit() and len(arg) < 19:
        had = folders.labelled(user=user, entry_ids=ids, label_id=int(arg))
        changed = [pk for pk in ids if (pk in had) == (verb == "unlabel")]
        return {"action": verb, "label": int(arg), "ids": changed} if changed else None
    if action not in MOVES:
        return None
    before = folders.folders_of(user=user, entry_ids=ids)
    if action == "delete" and any(folder == Folder.TRASH for _, folder, _ in before):
        return None
    return {"action": action, "before": [[pk, folder, at.isoformat() if at else None] for pk, folder, at in before]}


def reverse(*, user: User, data: dict[str, Any]) -> int:
    """Undo what ``snapshot`` recorded; returns how many entries were put back.

    Undo of Report spam tells this instance the message is not spam (the report is
    replaced, as "Not spam" does), then puts each copy back where it was.
    """
    action = data.get("action")
    if action in ("label", "unlabel"):
        ids, label_id = [int(pk) for pk in data.get("ids", [])], int(data["label"])
        if action == "label":
            return folders.remove_label(user=user, entry_ids=ids, label_id=label_id)
        return folders.apply_label(user=user, entry_ids=ids, label_id=label_id)
    before = [(int(pk), str(folder), parse_datetime(at) if at else None) for pk, folder, at in data.get("before", [])]
    if action in ("report_spam", "not_spam"):
        reputation.report_entries(user=user, entry_ids=[pk for pk, _, _ in before], spam=action == "not_spam")
    return folders.restore_folders(user=user, before=before)
