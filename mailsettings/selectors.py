"""Mail settings: reads, always scoped to the user."""

from __future__ import annotations

from .contacts import ContactRow, Suggestion, contacts_for, suggestions_for
from .filters import filter_for, filters_for
from .vacation import vacation_for

__all__ = ["ContactRow", "Suggestion", "contacts_for", "filter_for", "filters_for", "suggestions_for", "vacation_for"]
