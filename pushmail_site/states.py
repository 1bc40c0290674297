"""Declared state graphs for job rows, and the one function that moves a row.

Every job row (a delivery, a withdrawal, a body fetch, an attachment fetch, a
draft being sent) has a state field whose values and allowed moves are declared
as data, in one ``states.py`` per app::

    DELIVERY = StateGraph(
        "delivery",
        states=[
            State("pending", retry=RetryPolicy(window=...)),
            State("notified", terminal=True),
            ...
        ],
        edges={"pending": ["notified", "retrying", "failed"], ...},
    )

:func:`transition` is the only writer of a state field: it refuses a move the
graph does not declare, saves with ``update_fields``, runs the handlers that
keep dependent rows in step (inside the same transaction), and queues
follow-up work after commit. :func:`transition_rows` does the same for a bulk
update. A test reads the graphs against the transition tables of
docs/protocol.md §8, so the document and the code cannot drift.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db import models, transaction

from .jobs import backoff, lock

M = TypeVar("M", bound=models.Model)

# A handler gets the primary keys of the rows that just entered a state (one or many).
Handler = Callable[[list[Any]], None]


class IllegalTransition(Exception):
    """A move that the row's state graph does not declare."""

    def __init__(self, graph: str, source: str, target: str) -> None:
        super().__init__(f"{graph}: {source} -> {target} is not a declared transition")
        self.graph, self.source, self.target = graph, source, target


@dataclass(frozen=True)
class RetryPolicy:
    """How a state that waits for another attempt is retried.

    ``base`` and ``cap`` name the settings of the exponential backoff
    (``pushmail_site.jobs.backoff``); ``window`` names the setting (seconds or a
    timedelta) after which the job stops retrying, or is None for "until its
    own deadline" (a fetch stops when the message expires).
    """

    base: str = "PUSHMAIL_RETRY_BASE_SECONDS"
    cap: str = "PUSHMAIL_RETRY_CAP_SECONDS"
    window: str | None = None


@dataclass(frozen=True)
class State:
    """One state of a graph. ``terminal`` states have no way out."""

    value: str
    terminal: bool = False
    #: For a state that is due for work: how it is retried.
    retry: RetryPolicy | None = None
    #: A row left in this state longer than this is due again (a claim that a killed worker left).
    timeout: timedelta | None = None
    doc: str = ""


@dataclass
class StateGraph:
    """The states of one kind of job row and the moves between them."""

    name: str
    states: Sequence[State]
    edges: Mapping[str, Iterable[str]]
    field_name: str = "state"
    _on_enter: dict[str, list[Handler]] = field(default_factory=lambda: defaultdict(list), repr=False)

    def __post_init__(self) -> None:
        self.by_value = {state.value: state for state in self.states}
        self.moves: dict[str, frozenset[str]] = {value: frozenset() for value in self.by_value}
        for source, targets in self.edges.items():
            targets = frozenset(targets)
            unknown = ({source} | targets) - set(self.by_value)
            if unknown:
                raise ValueError(f"{self.name}: undeclared states {sorted(unknown)}")
            if self.by_value[source].terminal and targets:
                raise ValueError(f"{self.name}: terminal state {source} has moves")
            self.moves[source] = targets

    @property
    def values(self) -> list[str]:
        return [state.value for state in self.states]

    def allows(self, source: str, target: str) -> bool:
        return target in self.moves.get(source, frozenset())

    def check(self, source: str, target: str) -> None:
        if not self.allows(source, target):
            raise IllegalTransition(self.name, source, target)

    def sources_of(self, target: str) -> frozenset[str]:
        """Every state that may move to ``target``."""
        return frozenset(source for source, targets in self.moves.items() if target in targets)

    def edge_set(self) -> set[tuple[str, str]]:
        return {(source, target) for source, targets in self.moves.items() for target in targets}

    def on_enter(self, state: str) -> Callable[[Handler], Handler]:
        """Register a handler run (in the transaction) whenever rows enter ``state``."""
        if state not in self.by_value:
            raise ValueError(f"{self.name}: no state {state}")

        def register(handler: Handler) -> Handler:
            self._on_enter[state].append(handler)
            return handler

        return register

    def entered(self, state: str, pks: list[Any]) -> None:
        if pks:
            for handler in self._on_enter.get(state, ()):
                handler(pks)


def transition(
    row: M,
    graph: StateGraph,
    target: str,
    *,
    fields: Mapping[str, Any] | None = None,
    after_commit: Callable[[], None] | None = None,
) -> M:
    """Move ``row`` (locked by the caller where it matters) to ``target``.

    Refuses an undeclared move with :class:`IllegalTransition`. Sets ``fields``
    with the state, saves only those columns, runs the graph's handlers for
    ``target`` (dependent rows), and calls ``after_commit`` once the
    transaction commits (queue the follow-up task there).
    """
    source = getattr(row, graph.field_name)
    graph.check(source, target)
    changes = dict(fields or {})
    changes[graph.field_name] = target
    for name, value in changes.items():
        setattr(row, name, value)
    with transaction.atomic():
        row.save(update_fields=list(changes))
        graph.entered(target, [row.pk])
    if after_commit is not None:
        transaction.on_commit(after_commit)
    return row


def transition_rows(
    queryset: models.QuerySet[M],
    graph: StateGraph,
    target: str,
    *,
    fields: Mapping[str, Any] | None = None,
) -> list[Any]:
    """Move every row of ``queryset`` that may move to ``target``; returns their primary keys.

    Rows in a state with no declared move to ``target`` are left as they are
    (a bulk action over a mixed selection), so the caller can say how many moved.
    """
    sources = graph.sources_of(target)
    with transaction.atomic():
        # Locked, so a row a worker settles meanwhile is either moved from its new state or not at all.
        candidates = lock(queryset.filter(**{f"{graph.field_name}__in": sources}), skip_locked=False)
        pks = list(candidates.values_list("pk", flat=True))
        if pks:
            queryset.model._default_manager.filter(pk__in=pks).update(**{graph.field_name: target, **(fields or {})})
            graph.entered(target, pks)
    return pks


def retry_window(graph: StateGraph, state: str) -> timedelta:
    """How long after its start a job in ``state`` is retried (the setting its retry policy names)."""
    policy = graph.by_value[state].retry
    if policy is None or policy.window is None:
        raise ValueError(f"{graph.name}: {state} has no retry window")
    window = getattr(settings, policy.window)
    return window if isinstance(window, timedelta) else timedelta(seconds=window)


def retry_delay(graph: StateGraph, state: str, *, attempts: int, retry_after: float | None = None) -> timedelta:
    """The wait before the next attempt: the peer's ``Retry-After`` if it gave one, else the backoff."""
    if retry_after:
        return timedelta(seconds=retry_after)
    policy = graph.by_value[state].retry
    if policy is None:
        raise ValueError(f"{graph.name}: {state} is not retried")
    return backoff(attempts, base=getattr(settings, policy.base), cap=getattr(settings, policy.cap))
