"""Filters: the user's rules for new mail, checked, saved and ordered."""

from __future__ import annotations

from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max, QuerySet

from accounts.models import User
from accounts.validators import domain_of, normalize_address
from federation import discovery
from mailbox.models import Label

from .models import Filter, FilterFolder

_MAX_FILTERS = 200


@dataclass(frozen=True)
class FilterInput:
    """What the Settings form (or any caller) asks a filter to be."""

    name: str = ""
    from_contains: str = ""
    to_contains: str = ""
    subject_contains: str = ""
    list_id_contains: str = ""
    label_id: int | None = None
    mark_read: bool = False
    star: bool = False
    move_to: str = ""
    forward_to: str = ""


def filters_for(*, user: User) -> QuerySet[Filter]:
    return Filter.objects.filter(owner=user).select_related("label").order_by("position", "pk")


def filter_for(*, user: User, filter_id: int) -> Filter:
    """The user's filter; Filter.DoesNotExist for anyone else's."""
    return Filter.objects.get(owner=user, pk=filter_id)


def _clean(user: User, data: FilterInput, *, editing: Filter | None) -> dict[str, object]:
    errors: dict[str, list[str]] = {}
    conditions = {
        "from_contains": " ".join(data.from_contains.split()),
        "to_contains": " ".join(data.to_contains.split()),
        "subject_contains": " ".join(data.subject_contains.split()),
        "list_id_contains": " ".join(data.list_id_contains.split()).strip("<>"),
    }
    if not any(conditions.values()):
        errors.setdefault("__all__", []).append(
            "Give at least one condition (from, to, subject or list): a filter on every message is not a filter."
        )
    if data.move_to and data.move_to not in FilterFolder.values:
        errors.setdefault("move_to", []).append(f"There is no folder called {data.move_to!r} to move mail to.")
    label = None
    if data.label_id is not None:
        label = Label.objects.filter(owner=user, pk=data.label_id).first()
        if label is None:
            errors.setdefault("label", []).append("That label was not found.")
    forward_to = ""
    if data.forward_to.strip():
        try:
            forward_to = _check_forward(user, data.forward_to, editing=editing)
        except ValidationError as exc:
            errors.setdefault("forward_to", []).extend(exc.messages)
    if not (label or data.label_id or data.mark_read or data.star or data.move_to or forward_to or errors):
        errors.setdefault("__all__", []).append(
            "Choose at least one action: a label, mark read, star, move to a folder, or forward."
        )
    if errors:
        raise ValidationError(errors)
    return {
        **conditions,
        "name": " ".join(data.name.split())[:100],
        "label": label,
        "mark_read": data.mark_read,
        "star": data.star,
        "move_to": data.move_to,
        "forward_to": forward_to,
    }


def _check_forward(user: User, value: str, *, editing: Filter | None) -> str:
    try:
        address = normalize_address(value.strip())
    except ValidationError as exc:
        raise ValidationError(f"“{value.strip()[:100]}” is not an email address: {'; '.join(exc.messages)}") from None
    if address == user.email.lower():
        raise ValidationError("That is your own address: forwarding your mail to yourself would go round in a loop.")
    if domain_of(address) in discovery.local_domain_names():
        if not User.objects.filter(email=address, is_active=True).exists():
            raise ValidationError(f"There is no mailbox {address} here to forward to.")
        chain = _forward_chain(address, back_to=user.email.lower(), skip=editing)
        if chain:
            raise ValidationError(
                "That would forward mail in a loop: "
                + " → ".join([user.email, *chain])
                + ". Change one of the filters."
            )
    return address


def _forward_chain(start: str, *, back_to: str, skip: Filter | None) -> list[str]:
    """The addresses mail forwarded to ``start`` would go through by the forwarding filters of this
    instance's mailboxes until it came back to ``back_to``; [] when it never does."""
    seen = [start]
    frontier = [start]
    parents: dict[str, str] = {}
    while frontier:
        rows = Filter.objects.filter(owner__email__in=frontier).exclude(forward_to="")
        if skip is not None:
            rows = rows.exclude(pk=skip.pk)
        next_frontier = []
        for owner_email, target in rows.values_list("owner__email", "forward_to"):
            if target == back_to:
                path = [target]
                node = owner_email
                while node != start:
                    path.insert(0, node)
                    node = parents[node]
                return [start, *path]
            if target not in seen:
                seen.append(target)
                parents[target] = owner_email
                next_frontier.append(target)
        frontier = next_frontier[:50]
    return []


@transaction.atomic
def create_filter(*, user: User, data: FilterInput) -> Filter:
    """Add a filter after the user's others. Raises ValidationError naming the field at fault."""
    fields = _clean(user, data, editing=None)
    existing = Filter.objects.filter(owner=user)
    if existing.count() >= _MAX_FILTERS:
        raise ValidationError(f"You have {_MAX_FILTERS} filters already; delete some first.")
    last = existing.aggregate(last=Max("position"))["last"]
    return Filter.objects.create(owner=user, position=0 if last is None else last + 1, **fields)


@transaction.atomic
def update_filter(*, user: User, filter_id: int, data: FilterInput) -> Filter:
    rule = filter_for(user=user, filter_id=filter_id)
    fields = _clean(user, data, editing=rule)
    for name, value in fields.items():
        setattr(rule, name, value)
    rule.save(update_fields=list(fields))
    return rule


def delete_filter(*, user: User, filter_id: int) -> None:
    filter_for(user=user, filter_id=filter_id).delete()


@transaction.atomic
def move_filter(*, user: User, filter_id: int, up: bool) -> None:
    """Swap a filter with the one before (``up``) or after it: filters run in this order."""
    rules = list(Filter.objects.filter(owner=user).select_for_update().order_by("position", "pk"))
    index = next((i for i, rule in enumerate(rules) if rule.pk == filter_id), None)
    if index is None:
        raise Filter.DoesNotExist("no such filter")
    other = index - 1 if up else index + 1
    if 0 <= other < len(rules):
        rules[index], rules[other] = rules[other], rules[index]
    for position, rule in enumerate(rules):
        if rule.position != position:
            rule.position = position
            rule.save(update_fields=["position"])
