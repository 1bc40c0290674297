"""New mail as it arrives: the owner's filters, in order, then the vacation reply.

The mailbox announces each arrival (``mailbox.signals.mail_arrived``) inside the
transaction that stored it, so a filtered message is never seen unfiltered, and
the replies and forwards it owes are rows committed with it (sent by workers).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from django.db.models import BooleanField, Exists, ExpressionWrapper, Q

from accounts.models import User
from mailbox import folders
from mailbox.models import Folder, InboxEntry

from . import forwarding, vacation
from .facts import Arrival, arrival_of, matches
from .models import Filter, Vacation

_away = Vacation.objects.filter(enabled=True)


def apply_on_arrivals(*, arrivals: Iterable[tuple[int, Iterable[int]]], owners: Iterable[User] | None = None) -> None:
    """apply_on_arrival for several messages that arrived together: one query for all their owners
    (none when ``owners``, their rows, are given)."""
    arrivals = [(remote_id, list(owner_ids)) for remote_id, owner_ids in arrivals]
    everyone = {owner for _remote_id, owner_ids in arrivals for owner in owner_ids}
    active = set(_with_rules(everyone, owners))
    for remote_id, owner_ids in arrivals:
        if active.intersection(owner_ids):
            apply_on_arrival(remote_id=remote_id, local_id=None, owner_ids=owner_ids)


def _with_rules(owner_ids: Iterable[int], owners: Iterable[User] | None = None) -> list[int]:
    """Of these owners, those with filters or an enabled vacation reply (``User.has_mail_rules``).

    ``owners``: their rows, read with the flag, when the caller has them: then no query.
    """
    wanted = set(owner_ids)
    if owners is not None:
        return [owner.pk for owner in owners if owner.pk in wanted and owner.has_mail_rules]
    return list(User.objects.filter(pk__in=wanted, has_mail_rules=True).values_list("pk", flat=True))


def note_rules_changed(*, owner_id: int) -> None:
    """A filter or a vacation reply of this owner was saved or deleted: keep ``User.has_mail_rules``
    (filters, or a vacation reply turned on) true to the rows, in the same transaction."""
    has_rules = Q(Exists(Filter.objects.filter(owner_id=owner_id))) | Q(Exists(_away.filter(owner_id=owner_id)))
    User.objects.filter(pk=owner_id).update(has_mail_rules=ExpressionWrapper(has_rules, output_field=BooleanField()))


def apply_on_arrival(
    *, remote_id: int | None, local_id: object | None, owner_ids: Iterable[int], owners: Iterable[User] | None = None
) -> None:
    """Run the filters and the vacation reply of these owners on their new copies of one message.

    ``owners``: the owners' rows with ``has_mail_rules`` read, when the caller has them (saves a query).
    """
    # The hot path of ingest: the owners' flag says whether any of them has filters or is away.
    active = _with_rules(owner_ids, owners)
    if not active:
        return
    rules: dict[int, list[Filter]] = defaultdict(list)
    for rule in Filter.objects.filter(owner_id__in=active).order_by("position", "pk"):
        rules[rule.owner_id].append(rule)
    away = {v.owner_id: v for v in _away.filter(owner_id__in=active)}
    which = Q(remote_id=remote_id) if remote_id is not None else Q(local_id=local_id)
    entries = (
        InboxEntry.objects.filter(which, owner_id__in=set(rules) | set(away))
        .select_related("owner__domain", "remote", "local")
        .order_by("pk")
    )
    for entry in entries:
        if entry.folder == Folder.SPAM:
            continue  # spam is neither filed, forwarded nor answered
        arrival = arrival_of(entry)
        run_filters(entry=entry, arrival=arrival, rules=rules.get(entry.owner_id, []))
        if entry.owner_id in away:
            vacation.owe_reply(vacation=away[entry.owner_id], entry=entry, arrival=arrival)


def run_filters(*, entry: InboxEntry, arrival: Arrival, rules: list[Filter]) -> list[Filter]:
    """Apply each matching rule's actions to the entry, in order; returns the rules that matched."""
    user: User = entry.owner
    matched = [rule for rule in rules if matches(rule, arrival)]
    for rule in matched:
        if rule.label_id is not None:
            folders.apply_label(user=user, entry_ids=[entry.pk], label_id=rule.label_id)
        if rule.mark_read:
            folders.mark_read(user=user, entry_ids=[entry.pk])
        if rule.star:
            folders.star(user=user, entry_ids=[entry.pk])
        if rule.move_to:
            folders.move_entries(user=user, entry_ids=[entry.pk], folder=rule.move_to)
        if rule.forward_to and not arrival.automated.lower().endswith("auto-forwarded"):
            # A message some program forwarded already is not forwarded again: no loops between rules.
            forwarding.owe_forward(entry=entry, to=rule.forward_to)
    return matched
