"""The sender side's declared state graphs: the same as docs/protocol.md §8.2, enforced, and the only writers.

- The delivery and withdrawal graphs in outbox/states.py have exactly the states
  and transitions listed in §8.2 (so the document and the code cannot drift).
- A move that a graph does not declare is refused, one row or in bulk.
- No module writes those state fields except through the one transition function.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone

from accounts.models import User
from outbox.models import Delivery, DeliveryState, Draft, DraftState, Withdrawal, WithdrawalState
from outbox.services import withdraw_message
from outbox.states import DELIVERY, DRAFT, WITHDRAWAL
from pushmail_site.states import IllegalTransition, StateGraph, transition, transition_rows
from tests.conftest import FakePeer
from tests.factories import MailboxFactory, SentMessageFactory

ROOT = Path(settings.BASE_DIR)
PROTOCOL = ROOT / "docs" / "protocol.md"
TRANSITION = re.compile(r"(?P<source>[a-z_]+) +--(?P<event>[^-].*?)-*> +(?P<target>[a-z_]+)(?: +\((?P<note>[^()]+)\))?")


def _section_8_2() -> str:
    text = PROTOCOL.read_text()
    start = text.index("### 8.2 ")
    return text[start : text.index("### 8.3 ", start)]


def _after(section: str, heading: str) -> str:
    return section[section.index(heading) + len(heading) :]


def documented_transitions(heading: str) -> set[tuple[str, str]]:
    """The ``from --event--> to`` lines of the first code block after ``heading``; every line must be one."""
    block = re.search(r"```\n(.*?)\n```", _after(_section_8_2(), heading), re.S)
    assert block, f"no transition block after {heading!r}"
    edges = set()
    for line in block.group(1).splitlines():
        match = TRANSITION.fullmatch(line.strip())
        assert match, f"§8.2: not a transition line (from --event--> to): {line!r}"
        edges.add((match["source"], match["target"]))
    return edges


def documented_states(heading: str) -> list[str]:
    """The states in the first table after ``heading`` (its first column, in backquotes)."""
    rest = _after(_section_8_2(), heading)
    table = re.search(r"\| State \| Meaning \|\n\|---\|---\|\n((?:\|.*\|\n)+)", rest)
    assert table, f"no state table after {heading!r}"
    return re.findall(r"^\| `([a-z_]+)` \|", table.group(1), re.M)


@pytest.mark.parametrize(
    ("graph", "table_heading", "transitions_heading"),
    [
        (DELIVERY, "A **delivery**", "Transitions of a delivery"),
        (WITHDRAWAL, "**withdrawal**", "Transitions of a withdrawal"),
    ],
    ids=["delivery", "withdrawal"],
)
def test_declared_graph_is_the_one_in_the_protocol(
    graph: StateGraph, table_heading: str, transitions_heading: str
) -> None:
    assert documented_states(table_heading) == graph.values
    assert documented_transitions(transitions_heading) == graph.edge_set()


def test_graphs_cover_the_model_choices() -> None:
    assert set(DELIVERY.values) == set(DeliveryState.values)
    assert set(WITHDRAWAL.values) == set(WithdrawalState.values)
    assert set(DRAFT.values) == set(DraftState.values)


def test_admin_retry_now_is_declared_and_documented() -> None:
    assert DELIVERY.allows(DeliveryState.FAILED, DeliveryState.RETRYING)
    assert (DeliveryState.FAILED, DeliveryState.RETRYING) in documented_transitions("Transitions of a delivery")


def test_a_malformed_transition_line_is_not_read_as_one() -> None:
    assert TRANSITION.fullmatch("pending  --2xx with results-----> notified")
    assert TRANSITION.fullmatch("retrying --x--> failed      (failure notice to the sender)")
    assert not TRANSITION.fullmatch("unavailable --410 / withdrawal--> withdrawn / expired")
    assert not TRANSITION.fullmatch("unavailable --retry succeeds--> fetched, tampered")
    assert not TRANSITION.fullmatch("pending --> notified")


# --- undeclared moves are refused -----------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.usefixtures("net")
def test_undeclared_moves_are_refused_and_change_nothing(alice: User, peer: FakePeer) -> None:
    message = SentMessageFactory(sender=alice, to=["bob@alpha.test", "carol@peer.test"])
    local = Delivery.objects.get(message=message, domain="alpha.test")
    assert local.state == DeliveryState.NOTIFIED

    with pytest.raises(IllegalTransition):
        transition(local, DELIVERY, DeliveryState.PENDING)
    with pytest.raises(IllegalTransition):
        transition(local, DELIVERY, "lost")
    local.refresh_from_db()
    assert local.state == DeliveryState.NOTIFIED

    # In bulk, rows with no declared move to the target stay as they are.
    assert transition_rows(Delivery.objects.filter(pk=local.pk), DELIVERY, DeliveryState.RETRYING) == []
    assert Delivery.objects.get(pk=local.pk).state == DeliveryState.NOTIFIED

    withdraw_message(message=message)
    done = Withdrawal.objects.get(message=message, domain="alpha.test")
    assert done.state == WithdrawalState.SENT
    with pytest.raises(IllegalTransition):
        transition(done, WITHDRAWAL, WithdrawalState.PENDING)
    assert Withdrawal.objects.get(pk=done.pk).state == WithdrawalState.SENT


@pytest.mark.django_db
def test_a_draft_cannot_skip_the_undo_window_or_come_back_once_sent(alice: User) -> None:
    draft = Draft.objects.create(owner=alice, to="bob@alpha.test")
    with pytest.raises(IllegalTransition):
        transition(draft, DRAFT, DraftState.SENT)
    transition(draft, DRAFT, DraftState.SCHEDULED, fields={"send_at": timezone.now()})
    transition(draft, DRAFT, DraftState.SENT, fields={"send_at": None})
    with pytest.raises(IllegalTransition):
        transition(draft, DRAFT, DraftState.DRAFT)
    assert Draft.objects.get(pk=draft.pk).state == DraftState.SENT


@pytest.mark.django_db
@pytest.mark.usefixtures("net")
def test_admin_retry_now_moves_only_what_the_graph_allows(alice: User, peer: FakePeer) -> None:
    message = SentMessageFactory(sender=alice, to=["bob@alpha.test", "carol@peer.test"])
    remote = Delivery.objects.get(message=message, domain="peer.test")
    Delivery.objects.filter(pk=remote.pk).update(state=DeliveryState.FAILED, failed_at=timezone.now())
    admin = MailboxFactory(domain=alice.domain, local_part="postmaster")
    User.objects.filter(pk=admin.pk).update(is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(User.objects.get(pk=admin.pk))

    ids = list(Delivery.objects.filter(message=message).values_list("pk", flat=True))
    response = client.post("/admin/outbox/delivery/", {"action": "retry_now", "_selected_action": ids}, follow=True)

    assert "1 deliveries queued." in response.content.decode()
    states = dict(Delivery.objects.filter(message=message).values_list("domain", "state"))
    assert states["alpha.test"] == DeliveryState.NOTIFIED
    assert states["peer.test"] in (DeliveryState.RETRYING, DeliveryState.NOTIFIED)  # queued; may have run at once


# --- the graphs are the only writers ------------------------------------------------------------------

# Every app of the project, including those added later (the SMTP gateway shares the delivery rows).
SCANNED = sorted(
    path.parent.name
    for path in ROOT.glob("*/__init__.py")
    if path.parent.name not in {"tests", "bench", "tools"} and not path.parent.name.startswith(".")
)
ALLOWED = {Path("outbox/states.py"), Path("pushmail_site/states.py")}
OWN_STATE_FIELDS = {"state"}  # Delivery.state, Withdrawal.state, Draft.state
SENDER_JOB_WORDS = re.compile(r"deliver|withdrawal|draft", re.I)


def _keywords(call: ast.Call) -> set[str]:
    return {kw.arg for kw in call.keywords if kw.arg}


def _update_fields(call: ast.Call) -> set[str]:
    for kw in call.keywords:
        if kw.arg == "update_fields" and isinstance(kw.value, (ast.List, ast.Tuple, ast.Set)):
            return {elt.value for elt in kw.value.elts if isinstance(elt, ast.Constant) and isinstance(elt.value, str)}
    return set()


def state_writes(source: str, *, sender_app: bool) -> list[str]:
    """Where ``source`` writes a sender job's state field directly (line: code).

    In the sender app every ``state`` write counts (its only models with a state are
    the job rows); elsewhere, writes whose target names a delivery, withdrawal or draft.
    """
    tree = ast.parse(source)
    found = []

    def concerns(node: ast.AST) -> bool:
        return sender_app or bool(SENDER_JOB_WORDS.search(ast.unparse(node)))

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method, receiver = node.func.attr, node.func.value
            if method in ("update", "bulk_update") and _keywords(node) & OWN_STATE_FIELDS and concerns(receiver):
                found.append(f"{node.lineno}: {ast.unparse(node)[:80]}")
            elif method == "save" and _update_fields(node) & OWN_STATE_FIELDS and concerns(receiver):
                found.append(f"{node.lineno}: {ast.unparse(node)[:80]}")
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Attribute) and target.attr in OWN_STATE_FIELDS and concerns(target.value):
                found.append(f"{node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_the_scanner_finds_direct_writes() -> None:
    assert state_writes("Delivery.objects.filter(pk=1).update(state='failed')", sender_app=False)
    assert state_writes("delivery.state = 'failed'\ndelivery.save(update_fields=['state'])", sender_app=False)
    assert state_writes("queryset.update(state=DeliveryState.RETRYING)", sender_app=True)
    assert state_writes("draft.save(update_fields=['state', 'send_at'])", sender_app=True)
    assert not state_writes("InboxEntry.objects.filter(pk=1).update(state='fetched')", sender_app=False)
    assert not state_writes("Recipient.objects.filter(pk=1).update(status='accepted')", sender_app=True)


def test_no_module_writes_a_sender_job_state_but_the_transition_function() -> None:
    offenders: dict[str, list[str]] = {}
    for package in SCANNED:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative in ALLOWED or "migrations" in relative.parts:
                continue
            writes = state_writes(path.read_text(), sender_app=package == "outbox")
            if writes:
                offenders[str(relative)] = writes
    assert offenders == {}, offenders
