"""What a dishonest or differently sized peer cannot do: announce one subject and serve
another, or make us send more recipients than it takes in one notification."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from accounts.models import User
from federation import payloads
from mailbox.models import EntryState, FetchState, InboxEntry, RemoteMessage
from mailbox.services import accept_notification, fetch_body, open_entry
from outbox.models import Delivery, Recipient
from outbox.services import deliver_notification, mark_fetched_by_all
from tests.conftest import NOTIFICATIONS, Call, FakeNetwork, FakePeer, FederationClient, json_response
from tests.factories import PeerMessageFactory, SentMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]


def test_body_whose_subject_differs_from_the_notification_is_tampered(alice: User, peer: FakePeer) -> None:
    """The digest pins the bytes; the body must also say what the inbox showed before opening."""
    served = PeerMessageFactory(subject="Your invoice")
    announced = dataclasses.replace(served.notification(), subject="Lunch on Friday?")
    peer.bodies[str(served.global_id)] = served.content()
    accept_notification(origin=peer.domain, notification=announced)
    entry = InboxEntry.objects.get(owner=alice, remote__global_id=served.global_id)
    assert entry.subject == "Lunch on Friday?"

    open_entry(entry=entry)
    fetch_body(entry.remote_id)

    remote = RemoteMessage.objects.get(pk=entry.remote_id)
    assert remote.state == FetchState.TAMPERED
    assert remote.content is None
    assert "subject differs" in remote.last_error
    entry.refresh_from_db()
    assert entry.state == EntryState.TAMPERED


def test_a_domain_with_more_recipients_than_its_limit_gets_several_notifications(alice: User, peer: FakePeer) -> None:
    peer.document_override = {**peer.document(), "limits": {"max_notification_bytes": 262144, "max_recipients": 2}}

    def answer(call: Call):  # type: ignore[no-untyped-def]
        sent = call.json()
        assert len(sent["recipients"]) <= 2
        return json_response(200, {"results": [{"address": a, "status": "accepted"} for a in sent["recipients"]]})

    peer.routes[("POST", NOTIFICATIONS)] = answer
    addresses = [f"user{i}@peer.test" for i in range(5)]
    message = SentMessageFactory(sender=alice, to=addresses)

    deliver_notification(Delivery.objects.get(message=message, domain="peer.test").pk)

    posts = peer.calls_to("POST", NOTIFICATIONS)
    assert [len(c.json()["recipients"]) for c in posts] == [2, 2, 1]
    assert {c.json()["id"] for c in posts} == {str(message.id)}
    assert set(Recipient.objects.filter(message=message).values_list("status", flat=True)) == {"accepted"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("digest", "sha-256:" + "0x" + "a" * 62),
        ("digest", "sha-256:" + "A" * 64),
        ("date", "2026-1-5T10:00:00Z"),
        ("expires", "2026-11-26 10:00:00"),
    ],
)
def test_loosely_formed_digest_or_time_is_refused(field: str, value: str) -> None:
    data = PeerMessageFactory().notification().to_json()
    data[field] = value
    with pytest.raises(payloads.PayloadError, match=field):
        payloads.parse_notification(data, max_recipients=10)


def test_a_retired_key_past_its_expiry_no_longer_verifies(
    alice: User, peer: FakePeer, federation: FederationClient
) -> None:
    old_key = Ed25519PrivateKey.generate()
    peer.extra_keys = [
        {**peer.key_entry("peer.test#old", old_key), "expires": "2026-01-02T00:00:00Z"},
        {**peer.key_entry("peer.test#grace", old_key), "expires": "2999-01-01T00:00:00Z"},
    ]
    body = json.dumps(PeerMessageFactory().payload()).encode()

    expired = federation.send("POST", NOTIFICATIONS, body, signer=peer, key_id="peer.test#old", private_key=old_key)
    assert expired.status_code == 401 and expired.json()["error"] == "unknown_key"

    body = json.dumps(PeerMessageFactory().payload()).encode()
    in_grace = federation.send("POST", NOTIFICATIONS, body, signer=peer, key_id="peer.test#grace", private_key=old_key)
    assert in_grace.status_code == 200


def test_a_legacy_domain_does_not_keep_a_fetched_body_alive(
    alice: User, peer: FakePeer, net: FakeNetwork, federation: FederationClient
) -> None:
    message = SentMessageFactory(sender=alice, to=["carol@peer.test", "x@legacy.invalid"])
    for delivery in Delivery.objects.filter(message=message):
        deliver_notification(delivery.pk)
    assert Recipient.objects.get(message=message, address="x@legacy.invalid").reason == "legacy domain"

    assert federation.fetch(peer, message.pk).status_code == 200
    assert mark_fetched_by_all() == 1  # every domain that can fetch has fetched
    assert federation.fetch(peer, message.pk).status_code == 410


def test_expired_nonces_are_pruned_from_the_database_cache() -> None:
    from django.core.cache import caches

    from federation.tasks import prune_expired_cache

    cache = caches["default"]
    cache.add("pm-nonce:old", 1, timeout=1)
    cache.add("pm-nonce:live", 1, timeout=600)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE pushmail_cache SET expires = %s WHERE cache_key LIKE %s", ["2000-01-01", "%pm-nonce:old"]
        )

    assert prune_expired_cache() == 1
    assert cache.get("pm-nonce:live") == 1
    assert not cache.add("pm-nonce:live", 1, timeout=600)  # still a replay


def test_a_new_notification_is_stored_in_a_handful_of_queries(
    alice: User, peer: FakePeer, federation: FederationClient, django_assert_max_num_queries, settings: Any
) -> None:
    """Ingest speed: the hot path reads mailboxes once, finds the message's campaign (one indexed
    lookup, reputation.campaigns) and its sender's standing (one, reputation.scores), asks whether a
    recipient has filters or a vacation reply (one, mailsettings.arrivals), and writes three rows:
    the message, its campaign membership, the entry (a new campaign is one more).

    The shared cache (nonces, rate counters) is Redis in production; here it is
    kept out of the database so that only the application's own queries count.
    """
    settings.CACHES = {
        **settings.CACHES,
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "ingest-count"},
    }
    assert federation.notify(peer, PeerMessageFactory().payload()).status_code == 200  # warms the caches
    with django_assert_max_num_queries(10):
        response = federation.notify(peer, PeerMessageFactory().payload())
    assert response.status_code == 200
    assert response.json()["results"] == [{"address": "alice@alpha.test", "status": "accepted"}]
