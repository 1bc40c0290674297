"""What every webmail page's shell (sidebar, title) needs, computed only when a page uses it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from accounts.models import User
from mailbox import selectors
from webmail import undo
from webmail.templatetags.webmail_lists import unread_badge


@dataclass
class MailShell:
    counts: dict[str, int]
    labels: list[Any]

    @property
    def inbox_unread(self) -> str:
        """As shown in the title: "" when nothing is unread, "999+" past the cap."""
        count = self.counts.get("inbox", 0)
        return unread_badge(count) if count else ""


def _shell(user: User) -> MailShell:
    # Three queries: unread counts grouped by folder, the labels, and their unread counts.
    return MailShell(counts=selectors.unread_counts(user=user), labels=selectors.labels_with_unread(user=user))


def mail_shell(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {"mail_shell": SimpleLazyObject(lambda: _shell(user))}


def undo_notice(request: HttpRequest) -> dict[str, Any]:
    """The Undo notice of the user's last send or change, while its window lasts (webmail.undo)."""
    user = getattr(request, "user", None)
    session = getattr(request, "session", None)
    if user is None or session is None or not user.is_authenticated:
        return {}
    return {"undo_notice": undo.current(session)}
