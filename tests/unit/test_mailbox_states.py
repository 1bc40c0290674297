"""The recipient side's declared state graphs (mailbox.states) against docs/protocol.md §8.1,
and in use: an undeclared move is refused, entries follow their message with their own rules,
and no module writes a fetch or entry state but through the one transition function."""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.test import Client

from accounts.models import Domain, User
from accounts.services import create_mailbox
from mailbox import states
from mailbox.models import EntryState, FetchState, InboxEntry, RemoteMessage
from mailbox.selectors import body_at_sender
from mailbox.services import accept_notification, fetch_body, open_entry, post_notice
from outbox.models import Message
from outbox.services import send_message, withdraw_message
from pushmail_site.states import IllegalTransition, transition, transition_rows
from tests.conftest import FakePeer, FederationClient
from tests.factories import MailboxFactory, PeerMessage, PeerMessageFactory

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"


# --- docs/protocol.md §8.1 ------------------------------------------------------------------


def _table(marker: str) -> list[list[str]]:
    """The body rows (cells stripped) of the table right after ``<!-- MARKER -->``."""
    doc = DOC.read_text(encoding="utf-8")
    tag = f"<!-- {marker} -->\n"
    assert doc.count(tag) == 1, f"no single table marked {marker!r}"
    lines = []
    for line in doc.split(tag, 1)[1].splitlines():
        if not line.startswith("|"):
            break
        lines.append(line)
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines[2:]]
    assert rows, f"table {marker} is empty"
    return rows


def _state(cell: str) -> str:
    match = re.fullmatch(r"`([a-z]+)`", cell)
    assert match, f"{cell!r} is not one `state`"
    return match.group(1)


def _doc_fetch_moves() -> list[tuple[str, str]]:
    moves = []
    for row in _table("pushmail-transitions: fetch"):
        assert len(row) == 3 and row[1], f"a transition row is From | Event | To: {row}"
        moves.append((_state(row[0]), _state(row[2])))
    return moves


def test_the_state_table_lists_every_entry_state_and_the_fetch_states_first() -> None:
    documented = [_state(row[0]) for row in _table("pushmail-states: entry")]
    assert documented == list(EntryState.values)
    assert documented[:8] == list(FetchState.values) == [str(v) for v in states.FETCH.values]
    assert [str(v) for v in states.ENTRY.values] == documented


def test_the_fetch_graph_is_exactly_the_documented_transitions() -> None:
    moves = _doc_fetch_moves()
    assert len(moves) == len(set(moves)), "one row per move"
    assert set(moves) == states.FETCH.edge_set()


def test_only_withdrawn_is_final_and_a_withdrawal_reaches_every_other_state() -> None:
    assert [str(s.value) for s in states.FETCH.states if s.terminal] == ["withdrawn"]
    assert states.FETCH.sources_of(FetchState.WITHDRAWN) == set(FetchState.values) - {"withdrawn"}


def test_the_documented_at_sender_states_are_the_declared_ones() -> None:
    doc = DOC.read_text(encoding="utf-8")
    sentence = re.search(r'The body is "still at the sender\'s" in ([^.]+)\.', doc)
    assert sentence is not None
    assert set(re.findall(r"`([a-z]+)`", sentence.group(1))) == states.BODY_AT_SENDER
    # The states a worker claims and the sweep re-queues are the ones with a retry policy.
    assert states.DUE == {"fetching", "unavailable"}


def test_entry_rules_match_the_doc() -> None:
    rules = {row[0]: row[2] for row in _table("pushmail-entry-rules")}
    assert rules["new, for mail from another instance"] == "its message's state"
    assert rules["new, for mail between mailboxes of one instance"] == f"`{states.LOCAL_ENTRY_START}`"
    assert rules["new, a system notice"].startswith(f"`{states.NOTICE_ENTRY_START}`")
    assert rules["new, for mail received by SMTP"].startswith(f"`{states.SMTP_MESSAGE_START}`")
    assert states.ENTRY.by_value[EntryState.NOTICE].terminal
    assert rules["not opened by its owner"] == "its message's new state"
    assert rules["opened by its owner (so `fetched`)"].startswith("`fetched`")
    local_withdrawal = "`fetched`, mail between mailboxes of one instance, not opened"
    assert rules[local_withdrawal] == "`withdrawn`" and states.ENTRY.allows("fetched", "withdrawn")
    # An entry has no move of its own beyond its message's, except that a copy nobody asked for
    # skips `fetching`: from `notified` straight to the fetch's outcome.
    assert rules["not asked for by its owner"].startswith("stays `notified`")
    outcomes = rules["`notified`, not opened"]
    assert {s for s in states.SKIPPED_FETCHING if f"`{s}`" in outcomes} == states.SKIPPED_FETCHING
    skips = {(EntryState.NOTIFIED.value, str(s)) for s in states.SKIPPED_FETCHING}
    assert states.ENTRY.edge_set() == states.FETCH.edge_set() | skips


# --- the graphs in use ------------------------------------------------------------------------


def test_every_undeclared_move_is_refused() -> None:
    for source, target in itertools.product(states.ENTRY.values, repeat=2):
        if (source, target) not in states.ENTRY.edge_set():
            with pytest.raises(IllegalTransition):
                states.ENTRY.check(source, target)
        if EntryState.NOTICE not in (source, target) and (source, target) not in states.FETCH.edge_set():
            with pytest.raises(IllegalTransition):
                states.FETCH.check(source, target)


def _receive(peer: FakePeer, message: PeerMessage) -> RemoteMessage:
    peer.bodies[str(message.global_id)] = message.content()
    accept_notification(origin=peer.domain, notification=message.notification())
    return RemoteMessage.objects.get(global_id=message.global_id)


def _entry_states(remote: RemoteMessage) -> dict[str, str]:
    return {e.owner.email: e.state for e in InboxEntry.objects.filter(remote=remote).select_related("owner")}


@pytest.mark.django_db
@pytest.mark.usefixtures("net")
def test_an_undeclared_move_changes_nothing(alice: User, peer: FakePeer) -> None:
    remote = _receive(peer, PeerMessageFactory(to=[alice.email]))

    with pytest.raises(IllegalTransition):
        transition(remote, states.FETCH, FetchState.FETCHED, fields={"content": b"not fetched"})

    remote = RemoteMessage.objects.get(pk=remote.pk)
    assert remote.state == FetchState.NOTIFIED and remote.content is None
    assert _entry_states(remote) == {alice.email: "notified"}
    # A bulk move skips rows with no declared way there.
    assert transition_rows(InboxEntry.objects.filter(remote=remote), states.ENTRY, EntryState.NOTICE) == []
    assert _entry_states(remote) == {alice.email: "notified"}


@pytest.mark.django_db
@pytest.mark.usefixtures("net")
def test_entries_follow_their_message_unless_opened(
    alice: User, bob: User, peer: FakePeer, federation: FederationClient
) -> None:
    message = PeerMessageFactory(to=[alice.email, bob.email])
    remote = _receive(peer, message)
    alice_entry = InboxEntry.objects.select_related("remote").get(owner=alice, remote=remote)
    open_entry(entry=alice_entry)
    assert alice_entry.state == EntryState.FETCHING and body_at_sender(alice_entry)  # current on return
    # Only the copy whose reader asked shows the fetch; bob's stays notified until it has an outcome.
    assert _entry_states(remote) == {alice.email: "fetching", bob.email: "notified"}
    fetch_body(remote.pk)
    assert _entry_states(remote) == {alice.email: "fetched", bob.email: "fetched"}
    open_entry(entry=InboxEntry.objects.select_related("remote").get(owner=alice, remote=remote))

    federation.withdraw(peer, message.global_id, message.sender)

    assert RemoteMessage.objects.get(pk=remote.pk).state == FetchState.WITHDRAWN
    assert _entry_states(remote) == {alice.email: "fetched", bob.email: "withdrawn"}


@pytest.mark.django_db
@pytest.mark.usefixtures("net")
def test_a_fetched_body_reaches_every_unopened_copy_batch_by_batch(
    alice: User, peer: FakePeer, local_domain: Domain, monkeypatch: pytest.MonkeyPatch
) -> None:
    others = [MailboxFactory(domain=local_domain, local_part=f"colleague{n}") for n in range(5)]
    remote = _receive(peer, PeerMessageFactory(to=[alice.email, *(u.email for u in others)]))
    monkeypatch.setattr(states, "FOLLOW_BATCH", 2)
    open_entry(entry=InboxEntry.objects.select_related("remote").get(owner=alice, remote=remote))
    assert set(_entry_states(remote).values()) == {"fetching", "notified"}

    fetch_body(remote.pk)

    assert set(_entry_states(remote).values()) == {"fetched"}


@pytest.mark.django_db
@pytest.mark.usefixtures("net")
def test_a_withdrawal_still_reaches_a_refused_message(
    alice: User, bob: User, peer: FakePeer, federation: FederationClient
) -> None:
    message = PeerMessageFactory(to=[alice.email])
    remote = _receive(peer, message)
    peer.bodies[str(message.global_id)] = PeerMessage(**{**message.__dict__, "text": "Other"}).content()
    open_entry(entry=InboxEntry.objects.select_related("remote").get(owner=alice, remote=remote))
    fetch_body(remote.pk)
    assert _entry_states(remote) == {alice.email: "tampered"}

    federation.withdraw(peer, message.global_id, message.sender)

    assert RemoteMessage.objects.get(pk=remote.pk).state == FetchState.WITHDRAWN
    assert _entry_states(remote) == {alice.email: "withdrawn"}
    # A recipient notified after the withdrawal starts where the message is.
    accept_notification(origin=peer.domain, notification=message.notification([bob.email]))
    assert _entry_states(remote) == {alice.email: "withdrawn", bob.email: "withdrawn"}


@pytest.mark.django_db
@pytest.mark.usefixtures("net")
def test_local_mail_starts_fetched_and_only_unopened_entries_are_withdrawn(
    alice: User, bob: User, local_domain: Domain
) -> None:
    sent = send_message(sender=bob, to=[alice.email], subject="Lunch", text="At noon")
    carol = MailboxFactory(domain=local_domain, local_part="carol")
    again = send_message(sender=bob, to=[alice.email, carol.email], subject="Dinner", text="At eight")
    assert set(InboxEntry.objects.filter(local__in=[sent, again]).values_list("state", flat=True)) == {"fetched"}
    open_entry(entry=InboxEntry.objects.get(owner=alice, local=again))
    notice = post_notice(owner=alice, subject="Notice", text="Delivery failed")
    assert notice.state == EntryState.NOTICE

    withdraw_message(message=Message.objects.get(pk=again.pk))

    by_owner = dict(InboxEntry.objects.filter(local=again).values_list("owner__email", "state"))
    assert by_owner == {alice.email: "fetched", carol.email: "withdrawn"}
    assert InboxEntry.objects.get(owner=alice, local=sent).state == EntryState.FETCHED
    assert InboxEntry.objects.get(pk=notice.pk).state == EntryState.NOTICE


@pytest.mark.django_db
@pytest.mark.usefixtures("net")
def test_the_admin_moves_a_fetch_only_by_its_action(alice: User, peer: FakePeer, local_domain: Domain) -> None:
    create_mailbox(address=f"root@{local_domain.name}", password="an admin password 1", is_staff=True)
    User.objects.filter(email=f"root@{local_domain.name}").update(is_superuser=True)
    admin = Client()
    admin.force_login(User.objects.get(email=f"root@{local_domain.name}"))
    remote = _receive(peer, PeerMessageFactory(to=[alice.email]))
    entry = InboxEntry.objects.get(remote=remote)

    for url in (f"/admin/mailbox/remotemessage/{remote.pk}/change/", f"/admin/mailbox/inboxentry/{entry.pk}/change/"):
        page = admin.get(url).content.decode()
        assert 'name="state"' not in page  # shown, not editable
    assert admin.get("/admin/mailbox/remotemessage/add/").status_code == 403
    assert admin.get("/admin/mailbox/inboxentry/add/").status_code == 403

    response = admin.post(
        "/admin/mailbox/remotemessage/", {"action": "fetch_now", "_selected_action": [str(remote.pk)]}
    )
    assert response.status_code == 302
    assert RemoteMessage.objects.get(pk=remote.pk).state == FetchState.FETCHING
    assert _entry_states(remote) == {alice.email: "fetching"}


# --- nobody writes these states but the transition function -------------------------------

STATE_ENUMS = {"FetchState", "EntryState"}
# Packages with no state field of their own: any write of a "state" there is one of ours.
GUARDED = {"mailbox", "webmail", "federation"}
CREATORS = {"InboxEntry", "RemoteMessage", "create", "get_or_create", "update_or_create"}
SKIPPED = {"tests", "bench", "tools", "migrations", "docs", "static", "templates"}


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
    }


def _declared_start(value: ast.AST) -> bool:
    """A new row's state taken from mailbox.states' declared starts."""
    return any(name.endswith("_START") or name.endswith("entry_start") for name in _names(value))


def state_writes(source: str, *, guarded: bool) -> Iterator[tuple[int, str]]:
    """Lines of ``source`` that write a fetch or entry state other than through mailbox.states."""

    def ours(value: ast.AST | None) -> bool:
        return guarded or (value is not None and bool(_names(value) & STATE_ENUMS))

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and target.attr == "state" and ours(node.value):
                    yield node.lineno, "assigns .state"
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        if name == "setattr" and len(node.args) == 3 and isinstance(node.args[1], ast.Constant):
            if node.args[1].value == "state" and ours(node.args[2]):
                yield node.lineno, "setattr state"
        if name in {"update", "update_or_create"} and "state" in keywords and ours(keywords["state"]):
            yield node.lineno, f"{name}(state=...)"
        if name in CREATORS and "state" in keywords and not _declared_start(keywords["state"]):
            if name in {"InboxEntry", "RemoteMessage"} or ours(keywords["state"]):
                yield node.lineno, f"creates with state={ast.unparse(keywords['state'])}"
        if name in {"save", "bulk_update"} and guarded:
            listed = keywords.get("update_fields") or (node.args[1] if len(node.args) > 1 else None)
            if listed is not None and "state" in {
                c.value for c in ast.walk(listed) if isinstance(c, ast.Constant) and isinstance(c.value, str)
            }:
                yield node.lineno, f"{name} with the state field"


def _project_modules() -> Iterator[Path]:
    for path in sorted(ROOT.glob("*/**/*.py")):
        parts = path.relative_to(ROOT).parts
        if parts[0].startswith(".") or SKIPPED & set(parts):
            continue
        yield path


def test_the_scan_finds_hand_written_state_writes() -> None:
    written = """
entry.state = EntryState.FETCHED
InboxEntry.objects.filter(remote=remote).update(state=state)
remote.save(update_fields=["state", "next_attempt_at"])
InboxEntry(owner=user, remote=remote, state=remote.state)
Delivery.objects.filter(pk=1).update(state=DeliveryState.FAILED)
InboxEntry(owner=user, local=message, state=states.LOCAL_ENTRY_START)
"""
    found = sorted(line for line, _ in state_writes(written, guarded=False))
    assert found == [2, 5]  # elsewhere: what names a fetch or entry state, or makes an entry or message
    found = sorted(line for line, _ in state_writes(written, guarded=True))
    assert found == [2, 3, 4, 5, 6]


def test_no_module_writes_a_fetch_or_entry_state_by_hand() -> None:
    offenders = []
    for path in _project_modules():
        relative = path.relative_to(ROOT)
        guarded = relative.parts[0] in GUARDED
        for line, what in state_writes(path.read_text(encoding="utf-8"), guarded=guarded):
            offenders.append(f"{relative}:{line}: {what}")
    assert offenders == [], "write these states with pushmail_site.states.transition / transition_rows"
