"""How many job rows are in each state, and how long the oldest due one has waited.

Each kind of job row (a delivery, a body fetch, …) is a :class:`JobTable`: its model, its
state graph, the states in which a row waits for a worker and the field saying when it is
due. :func:`census` reads one table in one grouped query, whatever its size; the
``/metrics`` page and the admin's queue page (pushmail_site.metrics) show the result.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import models
from django.db.models import Count, Min, Q
from django.utils import timezone

from .states import StateGraph


@dataclass(frozen=True)
class JobTable:
    """One kind of job row: ``name`` is what the metrics and the admin page call it."""

    name: str
    model: type[models.Model]
    graph: StateGraph
    #: The states in which a row waits for a worker once its ``due_field`` has passed.
    due_states: Collection[str]
    due_field: str = "next_attempt_at"


@dataclass(frozen=True)
class Census:
    """A table's rows by state (every state of its graph, zero included) and its queue."""

    table: JobTable
    counts: dict[str, int]
    #: Rows in a due state whose due time has passed (claimed rows are due later, so not counted).
    due: int
    #: When the oldest of those was due, or None when none is.
    oldest_due_at: datetime | None
    taken_at: datetime

    @property
    def oldest_due_age(self) -> timedelta:
        """How long the oldest due row has waited past its due time (zero when none waits)."""
        if self.oldest_due_at is None:
            return timedelta(0)
        return max(timedelta(0), self.taken_at - self.oldest_due_at)

    @property
    def oldest_due_seconds(self) -> int:
        return int(self.oldest_due_age.total_seconds())


def census(table: JobTable, *, now: datetime | None = None) -> Census:
    """One query: ``GROUP BY state`` with the count, the due count and the oldest due time."""
    now = now or timezone.now()
    state, due_field = table.graph.field_name, table.due_field
    waiting = Q(**{f"{state}__in": list(table.due_states), f"{due_field}__lte": now})
    rows = (
        table.model._default_manager.order_by()
        .values(state)
        .annotate(rows=Count("pk"), due=Count("pk", filter=waiting), oldest=Min(due_field, filter=waiting))
    )
    counts = dict.fromkeys(table.graph.values, 0)
    due, oldest = 0, None
    for row in rows:
        counts[str(row[state])] = row["rows"]
        due += row["due"]
        if row["oldest"] is not None and (oldest is None or row["oldest"] < oldest):
            oldest = row["oldest"]
    return Census(table=table, counts=counts, due=due, oldest_due_at=oldest, taken_at=now)
