"""A reader opening their copy the moment its body arrives, while the fetch finishes: no deadlock.

The reader's open holds the message row shared and then writes their copy (mailbox.fetching
``_current_verdicts``, then ``_open_entries``); the fetch's last step writes the copies and the
message. Taken in the other order, each waits for the other: PostgreSQL kills one, and when that
is the reader, the reader gets a 500 (seen in the spam-run benchmark's scenario b). Two real
connections, the reader paused between its two steps until the fetch waits on a lock.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.db import connection, connections

from accounts.models import User
from mailbox import fetching
from mailbox.models import EntryState, FetchState, InboxEntry, RemoteMessage
from mailbox.services import accept_notification, open_entry
from pushmail_site.jobs import claim_until
from tests.conftest import FakePeer
from tests.factories import PeerMessageFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("net")]


def _someone_waits_on_a_lock(timeout: float = 20) -> bool:
    """Another session of this database is blocked on a lock (polled, not timed)."""
    deadline = time.monotonic() + timeout
    with connections["default"].cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute("SELECT pg_stat_clear_snapshot()")  # read afresh inside a transaction
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0]:
                return True
            time.sleep(0.02)
    return False


def test_a_reader_opening_as_the_body_arrives_and_the_fetch_finishing_both_succeed(
    alice: User, peer: FakePeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("row locks: PostgreSQL only")
    message = PeerMessageFactory(text="Your parcel could not be delivered")
    peer.bodies[str(message.global_id)] = message.content()
    accept_notification(origin=peer.domain, notification=message.notification([alice.email]))
    remote = RemoteMessage.objects.get(global_id=message.global_id)
    assert open_entry(entry=InboxEntry.objects.get(remote=remote)).state == EntryState.FETCHING
    # The fetch has stored the body (mailbox.fetching._store); its last step is still to come.
    RemoteMessage.objects.filter(pk=remote.pk).update(
        content=message.content(), state=FetchState.FETCHED, next_attempt_at=claim_until()
    )
    # The reader's page polls: their copy as loaded just before the body came.
    polled = InboxEntry.objects.select_related("remote", "local").get(remote=remote)

    verdicts_read = threading.Event()
    real_current_verdicts = fetching._current_verdicts

    def reader_pauses(entries: Any) -> None:
        real_current_verdicts(entries)  # holds the message row shared until the open commits
        verdicts_read.set()
        _someone_waits_on_a_lock()  # the fetch's last step is now blocked on something

    monkeypatch.setattr(fetching, "_current_verdicts", reader_pauses)
    errors: list[Exception] = []

    def run(target: Any) -> None:
        try:
            target()
        except Exception as exc:  # reported by the test
            errors.append(exc)
        finally:
            connections.close_all()

    reader = threading.Thread(target=run, args=(lambda: open_entry(entry=polled),))
    reader.start()
    assert verdicts_read.wait(20)
    worker = threading.Thread(target=run, args=(lambda: fetching.finish_fetched(remote.pk),))
    worker.start()
    reader.join(60)
    worker.join(60)

    assert errors == []
    entry = InboxEntry.objects.get(pk=polled.pk)
    assert entry.opened_at is not None and entry.state == EntryState.FETCHED
    assert RemoteMessage.objects.get(pk=remote.pk).next_attempt_at is None  # the fetch finished
