"""Filters for mail lists: short dates and human sizes."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

from django import template
from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe

from mailbox.selectors import UNREAD_CAP
from pushmail_site.sizes import human_size
from webmail.rows import person_html, render_rows

if TYPE_CHECKING:
    from webmail.rows import EntryRow

register = template.Library()


@register.filter
def maildate(value: datetime | None) -> str:
    """Today: "14:05"; this year: "3 Nov"; older: "3 Nov 2025" (local time)."""
    if value is None:
        return ""
    local = timezone.localtime(value)
    now = timezone.localtime()
    if local.date() == now.date():
        return local.strftime("%H:%M")
    if local.year == now.year:
        return f"{local.day} {local.strftime('%b')}"
    return f"{local.day} {local.strftime('%b %Y')}"


@register.filter
def mailsize(value: int | None) -> str:
    """12 KiB, 1.4 MiB, 820 bytes (pushmail_site.sizes), with a no-break space so it never wraps apart."""
    return human_size(int(value or 0)).replace(" ", "\xa0")


@register.simple_tag
def mail_rows(entries: Iterable[EntryRow]) -> SafeString:
    """The rows of a mail list (see webmail.rows)."""
    return render_rows(entries)


@register.filter
def unread_badge(count: int) -> str:
    """An unread count as shown: counts stop at the cap, shown as "999+"."""
    return f"{UNREAD_CAP - 1}+" if count >= UNREAD_CAP else str(count)


@register.simple_tag
def person(address: str, name: str = "", brackets: bool = False) -> SafeString:
    """A sender's display name with the address beside it (webmail.rows.person_html)."""
    return mark_safe(person_html(address, name, brackets=brackets))  # noqa: S308 - escaped there


@register.filter
def as_person(value: object) -> SafeString:
    """A ``webmail.reading.Person`` as "Name <address>", the name and the address each marked up."""
    address, name = getattr(value, "address", str(value)), getattr(value, "name", "")
    return mark_safe(person_html(address, name, brackets=True))  # noqa: S308 - escaped there
