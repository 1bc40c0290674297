"""Mail settings: the writes the webmail calls, by concern.

- filters (rules for new mail): mailsettings.filters; applying them as mail arrives: mailsettings.arrivals
- the vacation reply: mailsettings.vacation
- a filter's forward: mailsettings.forwarding
- contacts: mailsettings.contacts
- import of an mbox or .eml file: mailsettings.importing
"""

from __future__ import annotations

from .contacts import delete_contact, save_contact
from .filters import FilterInput, create_filter, delete_filter, move_filter, update_filter
from .importing import ImportRefused, ImportResult, import_mail
from .vacation import save_vacation

__all__ = [
    "FilterInput",
    "ImportRefused",
    "ImportResult",
    "create_filter",
    "delete_contact",
    "delete_filter",
    "import_mail",
    "move_filter",
    "save_contact",
    "save_vacation",
    "update_filter",
]
