"""Recipient side state transitions: notified → fetching → fetched, unavailable, gone, tampered,
withdrawn, expired, prefetch. The sender's instance is a fake peer behind the outbound client."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from accounts.models import User
from federation import http, payloads
from federation.discovery import WELL_KNOWN_PATH
from mailbox import fetching
from mailbox.models import EntryState, FetchState, InboxEntry, RemoteMessage
from mailbox.services import (
    accept_notification,
    accept_withdrawal,
    expire_unfetched,
    fetch_body,
    open_entry,
    prefetch_from_correspondents,
    requeue_due,
    retry_fetch_now,
)
from reputation.services import readers_of
from tests.conftest import (
    PEER_BASE,
    Call,
    FakePeer,
    FederationClient,
    Queued,
    body_path,
    broker_lost,
    json_response,
)
from tests.factories import PeerMessage, PeerMessageFactory, SentMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]


def _receive(peer: FakePeer, message: PeerMessage, recipients: list[str] | None = None) -> RemoteMessage:
    """The peer notified us, and will serve the body on request."""
    peer.bodies[str(message.global_id)] = message.content()
    results = accept_notification(origin=peer.domain, notification=message.notification(recipients))
    assert any(r.status == "accepted" for r in results), results
    return RemoteMessage.objects.get(global_id=message.global_id)


def _entry(user: User, remote: RemoteMessage) -> InboxEntry:
    return InboxEntry.objects.select_related("remote").get(owner=user, remote=remote)


def _open(user: User, remote: RemoteMessage) -> InboxEntry:
    open_entry(entry=_entry(user, remote))
    return _entry(user, remote)


def _fetch(remote: RemoteMessage) -> RemoteMessage:
    fetch_body(remote.pk)
    remote.refresh_from_db()
    return remote


def _make_due(remote: RemoteMessage, seconds_ago: float = 1) -> None:
    RemoteMessage.objects.filter(pk=remote.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=seconds_ago))


def _body_gets(peer: FakePeer, message: PeerMessage) -> list[Call]:
    return peer.calls_to("GET", body_path(message.global_id))


def _states(remote: RemoteMessage) -> dict[str, str]:
    return {e.owner.email: e.state for e in InboxEntry.objects.filter(remote=remote).select_related("owner")}


def test_notified_entry_is_fetched_once_on_open(
    alice: User,
    bob: User,
    peer: FakePeer,
    queued: list[Queued],
    django_capture_on_commit_callbacks: Any,
) -> None:
    message = PeerMessageFactory(to=["alice@alpha.test", "bob@alpha.test"])
    remote = _receive(peer, message)
    assert remote.state == FetchState.NOTIFIED and remote.content is None
    assert _states(remote) == {"alice@alpha.test": "notified", "bob@alpha.test": "notified"}

    with django_capture_on_commit_callbacks(execute=True):
        alice_entry = _open(alice, remote)
        _open(bob, remote)  # a colleague opens at the same moment

    assert alice_entry.read and alice_entry.opened_at is None  # not seen yet: the body is not here
    assert [(q.name, q.args) for q in queued] == [("mailbox.fetch_body", (remote.pk,))]
    assert _states(remote) == {"alice@alpha.test": "fetching", "bob@alpha.test": "fetching"}

    remote = _fetch(remote)
    fetch_body(remote.pk)  # the duplicate broker message does nothing

    assert remote.state == FetchState.FETCHED and bytes(remote.content) == message.content()
    assert remote.fetched_at is not None and remote.attempts == 1
    assert _states(remote) == {"alice@alpha.test": "fetched", "bob@alpha.test": "fetched"}
    (get,) = _body_gets(peer, message)
    assert get.url == f"{PEER_BASE}/federation/v1/messages/{message.global_id}/body"
    assert 'keyid="alpha.test#' in get.headers["Signature-Input"]

    assert _open(alice, remote).opened_at is not None
    assert _open(bob, remote).opened_at is not None
    assert len(_body_gets(peer, message)) == 1  # once per domain, however many readers
    assert readers_of(remote) == 2


def test_notification_answers_each_recipient(alice: User, peer: FakePeer, federation: FederationClient) -> None:
    message = PeerMessageFactory(to=["alice@alpha.test", "nobody@alpha.test", "someone@elsewhere.test"])

    response = federation.notify(peer, message.payload())

    assert response.status_code == 200
    assert response.json() == {
        "id": str(message.global_id),
        "results": [
            {"address": "alice@alpha.test", "status": "accepted"},
            {"address": "nobody@alpha.test", "status": "rejected", "reason": "unknown mailbox"},
            {"address": "someone@elsewhere.test", "status": "rejected", "reason": "domain not served by this instance"},
        ],
    }
    assert list(InboxEntry.objects.values_list("owner__email", flat=True)) == ["alice@alpha.test"]


def test_accepting_the_same_notification_twice_creates_nothing_twice(
    alice: User, bob: User, peer: FakePeer, federation: FederationClient
) -> None:
    message = PeerMessageFactory(to=["alice@alpha.test", "bob@alpha.test"])

    first = federation.notify(peer, message.payload())
    second = federation.notify(peer, message.payload())  # a retry by the sender, freshly signed

    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert RemoteMessage.objects.count() == 1
    assert InboxEntry.objects.filter(owner=alice).count() == 1
    assert InboxEntry.objects.filter(owner=bob).count() == 1


def test_same_id_with_other_content_is_refused_and_changes_nothing(
    alice: User, peer: FakePeer, federation: FederationClient
) -> None:
    message = PeerMessageFactory()
    federation.notify(peer, message.payload())

    response = federation.notify(peer, message.payload(digest="sha-256:" + "0" * 64, subject="Changed"))

    assert response.status_code == 409
    assert response.json()["error"] == "conflicting_notification"
    remote = RemoteMessage.objects.get()
    assert (remote.subject, remote.digest) == (message.subject, message.notification().digest)
    assert InboxEntry.objects.count() == 1


def test_unreachable_sender_makes_the_entry_unavailable_with_backoff_then_it_recovers(
    alice: User,
    peer: FakePeer,
    settings: Any,
    queued: list[Queued],
    django_capture_on_commit_callbacks: Any,
) -> None:
    settings.PUSHMAIL_RETRY_BASE_SECONDS = 2
    settings.PUSHMAIL_RETRY_CAP_SECONDS = 10
    message = PeerMessageFactory()
    remote = _receive(peer, message)
    _open(alice, remote)
    peer.go_down()

    delays = []
    for attempt in range(1, 6):
        before = timezone.now()
        with django_capture_on_commit_callbacks(execute=True):
            remote = _fetch(remote)
        after = timezone.now()
        assert remote.state == FetchState.UNAVAILABLE and remote.attempts == attempt
        assert _entry(alice, remote).state == EntryState.UNAVAILABLE
        assert "refused" in remote.last_error
        assert remote.next_attempt_at is not None
        step = min(10.0, 2.0 * 2 ** (attempt - 1))
        low = (remote.next_attempt_at - after).total_seconds()
        high = (remote.next_attempt_at - before).total_seconds()
        assert step / 2 - 0.5 <= low and high <= step + 0.5, (attempt, low, high)
        assert queued[-1].name == "mailbox.fetch_body" and 0 < (queued[-1].countdown or 0) <= 10
        delays.append(low)
        _make_due(remote)
    assert delays[0] <= 2.5  # the first retries come within seconds
    assert max(delays) <= 10.5  # and grow only to the cap

    # The sender comes back; the sweep finds the due row and the fetch completes with no user action.
    peer.come_back()
    _make_due(remote, seconds_ago=settings.PUSHMAIL_SWEEP_GRACE_SECONDS + 1)
    broker_lost(queued)
    with django_capture_on_commit_callbacks(execute=True):
        assert requeue_due() == 1
    assert [(q.name, q.args) for q in queued] == [("mailbox.fetch_body", (remote.pk,))]
    remote = _fetch(remote)
    assert remote.state == FetchState.FETCHED and remote.last_error == ""
    assert _entry(alice, remote).state == EntryState.FETCHED


def test_a_worker_killed_after_storing_the_body_leaves_the_copies_to_the_sweep(
    alice: User,
    bob: User,
    peer: FakePeer,
    settings: Any,
    queued: list[Queued],
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    """The body is committed first and the copies follow after: a worker that dies in between must
    not leave bob's copy "at the sender's" and unsearchable for good."""
    message = PeerMessageFactory(to=["alice@alpha.test", "bob@alpha.test"], text="quarterly figures attached")
    remote = _receive(peer, message)
    _open(alice, remote)

    def killed(remote_id: int, **kwargs: Any) -> None:
        raise SystemExit("worker killed")

    finish = fetching.finish_fetched
    monkeypatch.setattr(fetching, "finish_fetched", killed)
    with pytest.raises(SystemExit):
        fetch_body(remote.pk)
    monkeypatch.setattr(fetching, "finish_fetched", finish)
    remote.refresh_from_db()
    assert remote.state == FetchState.FETCHED and _entry(bob, remote).state == EntryState.NOTIFIED

    _make_due(remote, seconds_ago=settings.PUSHMAIL_SWEEP_GRACE_SECONDS + 1)
    broker_lost(queued)
    with django_capture_on_commit_callbacks(execute=True):
        assert requeue_due() == 1
    assert [(q.name, q.args) for q in queued] == [("mailbox.finish_fetched", (remote.pk,))]
    fetching.finish_fetched(remote.pk)

    remote.refresh_from_db()
    assert remote.next_attempt_at is None
    assert _states(remote) == {"alice@alpha.test": "fetched", "bob@alpha.test": "fetched"}
    assert "quarterly figures" in _entry(bob, remote).search_document
    with django_capture_on_commit_callbacks(execute=True):
        assert requeue_due() == 0  # finished: nothing due any more


def test_sender_answering_404_is_retried_not_final(alice: User, peer: FakePeer) -> None:
    message = PeerMessageFactory()
    remote = _receive(peer, message)
    del peer.bodies[str(message.global_id)]
    _open(alice, remote)

    remote = _fetch(remote)

    assert remote.state == FetchState.UNAVAILABLE
    assert "404" in remote.last_error


def test_try_again_now_skips_the_backoff(
    alice: User, peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    remote = _receive(peer, PeerMessageFactory())
    _open(alice, remote)
    peer.go_down()
    remote = _fetch(remote)
    RemoteMessage.objects.filter(pk=remote.pk).update(next_attempt_at=timezone.now() + timedelta(minutes=10))
    peer.come_back()
    fetch_body(remote.pk)
    assert RemoteMessage.objects.get(pk=remote.pk).state == FetchState.UNAVAILABLE  # not due yet

    with django_capture_on_commit_callbacks(execute=True):
        entry = retry_fetch_now(entry=_entry(alice, remote))

    assert [(q.name, q.args) for q in queued] == [("mailbox.fetch_body", (remote.pk,))]
    assert entry.state == EntryState.UNAVAILABLE
    assert _fetch(remote).state == FetchState.FETCHED


@pytest.mark.parametrize("reason", ["withdrawn", "expired"])
def test_410_from_the_sender_says_withdrawn_or_expired(alice: User, peer: FakePeer, reason: str) -> None:
    message = PeerMessageFactory()
    remote = _receive(peer, message)
    peer.reply("GET", body_path(message.global_id), 410, {"error": "gone", "reason": reason, "detail": reason})
    _open(alice, remote)

    remote = _fetch(remote)

    assert remote.state == reason and remote.content is None and remote.next_attempt_at is None
    assert _entry(alice, remote).state == reason


def test_body_that_does_not_match_the_digest_is_refused_as_tampered(alice: User, peer: FakePeer) -> None:
    message = PeerMessageFactory(text="What was promised")
    remote = _receive(peer, message)
    tampered = PeerMessage(**{**message.__dict__, "text": "Something else entirely"}).content()
    peer.bodies[str(message.global_id)] = tampered
    _open(alice, remote)

    remote = _fetch(remote)

    assert remote.state == FetchState.TAMPERED
    assert remote.content is None  # the changed body is not stored
    assert payloads.digest(tampered) in remote.last_error
    assert _entry(alice, remote).state == EntryState.TAMPERED
    fetch_body(remote.pk)
    assert len(_body_gets(peer, message)) == 1  # and not fetched again


# --- withdrawal -----------------------------------------------------------------------------------------


def test_withdrawal_before_any_fetch_withdraws_every_entry(
    alice: User, bob: User, peer: FakePeer, federation: FederationClient
) -> None:
    message = PeerMessageFactory(to=["alice@alpha.test", "bob@alpha.test"])
    remote = _receive(peer, message)

    response = federation.withdraw(peer, message.global_id, message.sender)

    assert response.status_code == 200
    assert response.json() == {"id": str(message.global_id), "status": "withdrawn", "fetched_before": False}
    assert _states(remote) == {"alice@alpha.test": "withdrawn", "bob@alpha.test": "withdrawn"}
    _open(alice, remote)
    fetch_body(remote.pk)
    assert _body_gets(peer, message) == []  # nothing is fetched for a withdrawn message


def test_withdrawal_after_a_colleagues_fetch_keeps_the_body_for_the_reader_only(
    alice: User, bob: User, peer: FakePeer, federation: FederationClient
) -> None:
    message = PeerMessageFactory(to=["alice@alpha.test", "bob@alpha.test"])
    remote = _receive(peer, message)
    _open(alice, remote)
    _fetch(remote)
    assert _open(alice, remote).opened_at is not None  # alice has read it

    response = federation.withdraw(peer, message.global_id, message.sender)

    assert response.json()["fetched_before"] is True
    assert _states(remote) == {"alice@alpha.test": "fetched", "bob@alpha.test": "withdrawn"}
    remote.refresh_from_db()
    assert remote.state == FetchState.WITHDRAWN and bytes(remote.content) == message.content()
    # Bob, who never saw it, cannot open it now; alice still can.
    bob_view = _open(bob, remote)
    assert bob_view.state == EntryState.WITHDRAWN and bob_view.opened_at is None


def test_withdrawal_deletes_a_cached_body_nobody_opened(
    alice: User, bob: User, peer: FakePeer, federation: FederationClient
) -> None:
    message = PeerMessageFactory(to=["alice@alpha.test", "bob@alpha.test"])
    remote = _receive(peer, message)
    _open(alice, remote)  # alice asked; the body arrived, but she has not seen it yet
    assert _fetch(remote).content is not None

    federation.withdraw(peer, message.global_id, message.sender)

    remote.refresh_from_db()
    assert remote.content is None
    assert _states(remote) == {"alice@alpha.test": "withdrawn", "bob@alpha.test": "withdrawn"}


def test_withdrawal_arriving_during_a_fetch_wins(alice: User, peer: FakePeer) -> None:
    message = PeerMessageFactory()
    remote = _receive(peer, message)
    _open(alice, remote)

    def body(call: Call) -> http.Response:
        # The sender withdraws while its answer is on the way.
        accept_withdrawal(origin="peer.test", withdrawal=payloads.Withdrawal(message.global_id, message.sender))
        return http.Response(status=200, headers={}, content=message.content(), url=call.url)

    peer.on("GET", body_path(message.global_id), body)
    remote = _fetch(remote)

    assert remote.state == FetchState.WITHDRAWN and remote.content is None
    assert _entry(alice, remote).state == EntryState.WITHDRAWN


def test_withdrawal_of_an_unknown_message_is_404(alice: User, peer: FakePeer, federation: FederationClient) -> None:
    response = federation.withdraw(peer, PeerMessageFactory().global_id, "carol@peer.test")
    assert response.status_code == 404 and response.json()["error"] == "unknown_message"


def test_withdrawal_by_another_domain_is_refused(
    alice: User, peer: FakePeer, other_peer: FakePeer, federation: FederationClient
) -> None:
    message = PeerMessageFactory()
    remote = _receive(peer, message)

    forged_sender = federation.withdraw(other_peer, message.global_id, message.sender)
    own_sender = federation.withdraw(other_peer, message.global_id, "someone@other.test")

    assert forged_sender.status_code == 403 and forged_sender.json()["error"] == "wrong_domain"
    assert own_sender.status_code == 404  # other.test never notified this id
    assert _states(remote) == {"alice@alpha.test": "notified"}


# --- expiry and prefetch -------------------------------------------------------------------------------


def test_expiry_sweep_marks_unfetched_messages_expired(alice: User, bob: User, peer: FakePeer) -> None:
    now = timezone.now().replace(microsecond=0)
    gone = _receive(peer, PeerMessageFactory(date=now - timedelta(days=31), expires=now - timedelta(seconds=1)))
    live = _receive(peer, PeerMessageFactory(expires=now + timedelta(days=1)))
    read_then_expired = _receive(peer, PeerMessageFactory(expires=now + timedelta(days=1)))
    _open(alice, read_then_expired)
    _fetch(read_then_expired)
    RemoteMessage.objects.filter(pk=read_then_expired.pk).update(expires_at=now - timedelta(seconds=1))

    assert expire_unfetched() == 1

    assert _states(gone) == {"alice@alpha.test": "expired"}
    assert _states(live) == {"alice@alpha.test": "notified"}
    assert _states(read_then_expired) == {"alice@alpha.test": "fetched"}


def test_fetch_failing_after_expiry_gives_expired(alice: User, peer: FakePeer) -> None:
    remote = _receive(peer, PeerMessageFactory())
    _open(alice, remote)
    RemoteMessage.objects.filter(pk=remote.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    peer.go_down()

    assert _fetch(remote).state == FetchState.EXPIRED
    assert _entry(alice, remote).state == EntryState.EXPIRED


def test_prefetch_only_from_known_correspondents(
    alice: User, bob: User, peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    SentMessageFactory(sender=alice, to=["carol@peer.test"])  # alice has written to carol
    soon = timezone.now().replace(microsecond=0) + timedelta(days=1)
    from_carol = _receive(peer, PeerMessageFactory(sender="carol@peer.test", expires=soon))
    from_stranger = _receive(peer, PeerMessageFactory(sender="stranger@peer.test", expires=soon))
    carol_to_bob = _receive(peer, PeerMessageFactory(sender="carol@peer.test", to=["bob@alpha.test"], expires=soon))
    carol_later = _receive(
        peer, PeerMessageFactory(sender="carol@peer.test", expires=timezone.now() + timedelta(days=20))
    )

    with django_capture_on_commit_callbacks(execute=True):
        assert prefetch_from_correspondents() == 1

    assert [(q.name, q.args) for q in queued] == [("mailbox.fetch_body", (from_carol.pk,))]
    assert _fetch(from_carol).state == FetchState.FETCHED
    assert _states(from_carol) == {"alice@alpha.test": "fetched"}
    assert _entry(alice, from_carol).opened_at is None and not _entry(alice, from_carol).read
    for untouched in (from_stranger, carol_to_bob, carol_later):
        untouched.refresh_from_db()
        assert untouched.state == FetchState.NOTIFIED and untouched.content is None
    assert len(peer.calls_to("GET", body_path(from_stranger.global_id))) == 0


def test_discovery_is_used_for_the_fetch_url_not_the_notification(alice: User, peer: FakePeer) -> None:
    # The notification carries no URL; the fetch goes to the sender domain's discovered API base.
    peer.document_override = {**peer.document(), "api": "http://peer.test:9000/v9/"}
    remote = _receive(peer, PeerMessageFactory())
    _open(alice, remote)
    peer.on("GET", r"/v9/messages/(.+)/body", lambda call: json_response(410, {"reason": "expired"}))

    assert _fetch(remote).state == FetchState.EXPIRED
    assert [c.path for c in peer.calls if c.path != WELL_KNOWN_PATH] == [f"/v9/messages/{remote.global_id}/body"]
