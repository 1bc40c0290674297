"""Fetch policy: "fetch when I open" (default) or "fetch as soon as notified", per user or domain default.

Either way there is one fetch per message for the whole instance, never one per reader.
"""

from __future__ import annotations

from typing import Any

import pytest

from accounts.models import FetchPolicy, User
from mailbox.models import EntryState, FetchState, InboxEntry, RemoteMessage
from mailbox.services import accept_notification
from tests.conftest import FakePeer, Queued
from tests.factories import PeerMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]


def _notify(peer: FakePeer, to: list[str], capture: Any) -> RemoteMessage:
    message = PeerMessageFactory(to=to)
    with capture(execute=True):
        accept_notification(origin=peer.domain, notification=message.notification())
    return RemoteMessage.objects.get(global_id=message.global_id)


def _fetches(queued: list[Queued]) -> list[Queued]:
    return [q for q in queued if q.name.endswith("fetch_body")]


def test_on_open_default_waits_for_the_reader(
    alice: User, peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    remote = _notify(peer, [alice.email], django_capture_on_commit_callbacks)
    assert remote.state == FetchState.NOTIFIED
    assert InboxEntry.objects.get(owner=alice).state == EntryState.NOTIFIED
    assert _fetches(queued) == []


def test_on_notify_user_fetches_at_once(
    alice: User, peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    User.objects.filter(pk=alice.pk).update(fetch_policy=FetchPolicy.ON_NOTIFY)
    remote = _notify(peer, [alice.email], django_capture_on_commit_callbacks)
    assert remote.state == FetchState.FETCHING
    assert InboxEntry.objects.get(owner=alice).state == EntryState.FETCHING
    assert [q.args for q in _fetches(queued)] == [(remote.pk,)]


def test_domain_default_on_notify_applies_to_users_without_a_choice(
    alice: User, bob: User, peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    alice.domain.default_fetch_policy = FetchPolicy.ON_NOTIFY
    alice.domain.save(update_fields=["default_fetch_policy"])
    User.objects.filter(pk=bob.pk).update(fetch_policy=FetchPolicy.ON_OPEN)
    # Bob chose "on open" but Alice (domain default) wants it at once: still exactly one fetch.
    remote = _notify(peer, [alice.email, bob.email], django_capture_on_commit_callbacks)
    assert remote.state == FetchState.FETCHING
    assert len(_fetches(queued)) == 1


def test_user_on_open_overrides_domain_on_notify(
    alice: User, peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    alice.domain.default_fetch_policy = FetchPolicy.ON_NOTIFY
    alice.domain.save(update_fields=["default_fetch_policy"])
    User.objects.filter(pk=alice.pk).update(fetch_policy=FetchPolicy.ON_OPEN)
    remote = _notify(peer, [alice.email], django_capture_on_commit_callbacks)
    assert remote.state == FetchState.NOTIFIED
    assert _fetches(queued) == []


def test_repeated_notification_queues_no_second_fetch(
    alice: User, peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    User.objects.filter(pk=alice.pk).update(fetch_policy=FetchPolicy.ON_NOTIFY)
    message = PeerMessageFactory(to=[alice.email])
    for _ in range(2):
        with django_capture_on_commit_callbacks(execute=True):
            accept_notification(origin=peer.domain, notification=message.notification())
    assert len(_fetches(queued)) == 1
