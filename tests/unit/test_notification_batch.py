"""Notification batches (docs/protocol.md §5.4.1): one signed request, one answer per notification.

The receiving endpoint with a fake peer signing; the sending side with a fake peer answering.
"""

from __future__ import annotations

import json
import types
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import User
from federation import discovery, http
from mailbox.models import Folder, InboxEntry, RemoteMessage
from mailsettings import services
from mailsettings.services import FilterInput
from outbox.models import Delivery, DeliveryState, Message, Recipient
from outbox.services import deliver_notification
from reputation.campaigns import campaign_id_of
from reputation.models import OriginPolicy, SenderReputation
from tests.conftest import NOTIFICATIONS, Call, FakePeer, FederationClient, json_response
from tests.factories import PeerMessageFactory, SentMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]

BATCH = "/federation/v1/notifications/batch"


def _batch(*payloads: dict[str, Any]) -> bytes:
    return json.dumps({"type": "notification_batch", "version": 1, "notifications": list(payloads)}).encode()


def _post(federation: FederationClient, peer: FakePeer, body: bytes, **kwargs: Any) -> Any:
    return federation.send("POST", BATCH, body, signer=peer, **kwargs)


def _answers(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.content
    answers = response.json()["answers"]
    assert isinstance(answers, list)
    return answers


def _entries(owner: User) -> list[str]:
    return sorted(str(g) for g in InboxEntry.objects.filter(owner=owner).values_list("remote__global_id", flat=True))


# --- the receiving endpoint ---------------------------------------------------------------


def test_a_batch_is_stored_and_each_notification_answered_in_order(
    federation: FederationClient, peer: FakePeer, alice: User, bob: User
) -> None:
    first, second, third = PeerMessageFactory(), PeerMessageFactory(to=["bob@alpha.test"]), PeerMessageFactory()
    third_payload = third.payload(recipients=["alice@alpha.test", "nobody@alpha.test"])

    answers = _answers(_post(federation, peer, _batch(first.payload(), second.payload(), third_payload)))

    assert [a["id"] for a in answers] == [str(first.global_id), str(second.global_id), str(third.global_id)]
    assert [a["status"] for a in answers] == [200, 200, 200]
    assert answers[0]["results"] == [{"address": "alice@alpha.test", "status": "accepted"}]
    assert answers[2]["results"] == [
        {"address": "alice@alpha.test", "status": "accepted"},
        {"address": "nobody@alpha.test", "status": "rejected", "reason": "unknown mailbox"},
    ]
    assert _entries(alice) == sorted([str(first.global_id), str(third.global_id)])
    assert _entries(bob) == [str(second.global_id)]


def test_one_bad_notification_gets_its_own_400_and_the_others_are_stored(
    federation: FederationClient, peer: FakePeer, alice: User
) -> None:
    good, bad, wrong, later = PeerMessageFactory(), PeerMessageFactory(), PeerMessageFactory(), PeerMessageFactory()
    body = _batch(
        good.payload(),
        bad.payload(subject="x" * 1000),
        PeerMessageFactory(sender="mallory@other.test", global_id=wrong.global_id).payload(),
        later.payload(),
    )

    answers = _answers(_post(federation, peer, body))

    assert [a["status"] for a in answers] == [200, 400, 403, 200]
    assert answers[1]["error"] == "invalid_payload" and answers[1]["field"] == "subject"
    assert answers[1]["detail"].startswith("subject")
    assert answers[2]["error"] == "wrong_domain" and answers[2]["id"] == str(wrong.global_id)
    assert _entries(alice) == sorted([str(good.global_id), str(later.global_id)])
    assert not RemoteMessage.objects.filter(global_id__in=[bad.global_id, wrong.global_id]).exists()


def test_an_oversize_batch_is_413_and_too_many_notifications_400(
    federation: FederationClient, peer: FakePeer, alice: User, settings: Any
) -> None:
    settings.PUSHMAIL_MAX_BATCH_BYTES = 3000
    big = _batch(*(PeerMessageFactory().payload() for _ in range(10)))
    assert len(big) > 3000
    response = _post(federation, peer, big)
    assert response.status_code == 413 and response.json()["error"] == "too_large"

    settings.PUSHMAIL_MAX_BATCH_BYTES = 1 << 20
    settings.PUSHMAIL_MAX_BATCH_NOTIFICATIONS = 3
    response = _post(federation, peer, _batch(*(PeerMessageFactory().payload() for _ in range(4))))
    assert response.status_code == 400
    assert response.json()["field"] == "notifications"
    assert "4 exceeds the limit of 3" in response.json()["detail"]

    response = _post(federation, peer, _batch())
    assert response.status_code == 400 and response.json()["field"] == "notifications"
    assert not RemoteMessage.objects.exists()


def test_a_notification_known_already_gets_the_same_answer_and_no_second_copy(
    federation: FederationClient, peer: FakePeer, alice: User
) -> None:
    known, new, conflicting = PeerMessageFactory(), PeerMessageFactory(), PeerMessageFactory()
    assert federation.notify(peer, known.payload()).status_code == 200
    assert federation.notify(peer, conflicting.payload()).status_code == 200

    body = _batch(known.payload(), new.payload(), conflicting.payload(subject="Changed"))
    answers = _answers(_post(federation, peer, body))

    assert [a["status"] for a in answers] == [200, 200, 409]
    assert answers[0]["results"] == [{"address": "alice@alpha.test", "status": "accepted"}]
    assert answers[2]["error"] == "conflicting_notification" and answers[2]["detail"].startswith("subject")
    assert InboxEntry.objects.filter(owner=alice).count() == 3  # known, conflicting (first), new: once each
    assert RemoteMessage.objects.get(global_id=conflicting.global_id).subject != "Changed"


def test_the_signature_covers_the_whole_batch_and_a_replay_is_refused(
    federation: FederationClient, peer: FakePeer, alice: User
) -> None:
    body = _batch(PeerMessageFactory().payload(), PeerMessageFactory().payload())
    headers = peer.sign("POST", BATCH, body)
    changed = body.replace(b"alice@", b"bob@", 1)

    response = federation.send("POST", BATCH, changed, signer=None, headers=headers)
    assert response.status_code == 401 and response.json()["error"] == "digest_mismatch"
    assert not RemoteMessage.objects.exists()

    assert len(_answers(federation.send("POST", BATCH, body, signer=None, headers=headers))) == 2
    response = federation.send("POST", BATCH, body, signer=None, headers=headers)
    assert response.status_code == 401 and response.json()["error"] == "replayed"
    assert InboxEntry.objects.filter(owner=alice).count() == 2


@pytest.fixture
def frozen_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    import reputation.services

    monkeypatch.setattr(reputation.services, "time", types.SimpleNamespace(time=lambda: 1_800_000_000.0 + 20))
    monkeypatch.setattr("federation.views.time", types.SimpleNamespace(time=lambda: 1_800_000_000.0 + 20))


@pytest.mark.usefixtures("frozen_minute")
def test_the_rate_counts_each_notification_of_a_batch(
    federation: FederationClient, peer: FakePeer, alice: User
) -> None:
    OriginPolicy.objects.create(domain="peer.test", rate_per_minute=2)
    within, also, over = PeerMessageFactory(), PeerMessageFactory(), PeerMessageFactory()

    answers = _answers(_post(federation, peer, _batch(within.payload(), also.payload(), over.payload())))

    assert [a["status"] for a in answers] == [200, 200, 429]
    assert answers[2]["error"] == "rate_limited" and answers[2]["retry_after"] == 41
    assert not RemoteMessage.objects.filter(global_id=over.global_id).exists()
    response = _post(federation, peer, _batch(PeerMessageFactory().payload()))
    assert response.status_code == 429 and response["Retry-After"] == "41"


def test_a_blocked_origin_is_refused_whole(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    OriginPolicy.objects.create(domain="peer.test", blocked=True)
    response = _post(federation, peer, _batch(PeerMessageFactory().payload()))
    assert response.status_code == 403 and response.json()["error"] == "blocked"
    assert not RemoteMessage.objects.exists()


def test_an_instance_without_batches_says_so_in_discovery_and_answers_404(
    federation: FederationClient, peer: FakePeer, alice: User, settings: Any
) -> None:
    assert discovery.own_document()["limits"]["max_batch_notifications"] == 100
    settings.PUSHMAIL_MAX_BATCH_NOTIFICATIONS = 0
    assert "max_batch_notifications" not in discovery.own_document()["limits"]
    response = _post(federation, peer, _batch(PeerMessageFactory().payload()))
    assert response.status_code == 404 and response.json()["error"] == "not_found"
    assert not RemoteMessage.objects.exists()


def test_a_batch_runs_fewer_than_half_the_statements_of_its_notifications_sent_alone(
    federation: FederationClient, peer: FakePeer, alice: User, bob: User
) -> None:
    def payloads(count: int) -> list[dict[str, Any]]:
        return [PeerMessageFactory(to=["alice@alpha.test", "bob@alpha.test"]).payload() for _ in range(count)]

    _post(federation, peer, _batch(*payloads(1)))  # warm the per-process caches (hosted domains, origin policy)
    with CaptureQueriesContext(connection) as batched:
        assert [a["status"] for a in _answers(_post(federation, peer, _batch(*payloads(20))))] == [200] * 20
    with CaptureQueriesContext(connection) as alone:
        for payload in payloads(20):
            assert federation.notify(peer, payload).status_code == 200

    assert len(batched) < len(alone) / 2
    assert InboxEntry.objects.count() == 2 * (1 + 20 + 20)


def test_a_batch_costs_the_same_statements_whatever_its_size(
    federation: FederationClient, peer: FakePeer, alice: User, bob: User
) -> None:
    def statements(count: int) -> int:
        payloads = [PeerMessageFactory(to=["alice@alpha.test", "bob@alpha.test"]).payload() for _ in range(count)]
        with CaptureQueriesContext(connection) as queries:
            assert [a["status"] for a in _answers(_post(federation, peer, _batch(*payloads)))] == [200] * count
        return len(queries)

    statements(1)  # warm the per-process caches (hosted domains, origin policy); the campaign is opened
    assert statements(20) == statements(2)
    assert InboxEntry.objects.count() == 2 * (1 + 20 + 2)


def test_a_batch_files_each_message_as_if_it_came_alone(
    federation: FederationClient, peer: FakePeer, alice: User
) -> None:
    SenderReputation.objects.create(address="mallory@peer.test", domain="peer.test", spam_filed=True)
    services.create_filter(user=alice, data=FilterInput(subject_contains="urgent", star=True))
    plain, poor, urgent = (
        PeerMessageFactory(subject="Weekly notes"),
        PeerMessageFactory(sender="mallory@peer.test", subject="Cheap pills"),
        PeerMessageFactory(subject="URGENT: call me"),
    )

    _answers(_post(federation, peer, _batch(plain.payload(), poor.payload(), urgent.payload())))

    entry = {e.remote.global_id: e for e in InboxEntry.objects.filter(owner=alice).select_related("remote")}
    assert (entry[plain.global_id].folder, entry[plain.global_id].starred) == (Folder.INBOX, False)
    assert entry[poor.global_id].folder == Folder.SPAM
    assert "mallory@peer.test is often reported" in entry[poor.global_id].remote.spam_verdict
    assert (entry[urgent.global_id].folder, entry[urgent.global_id].starred) == (Folder.INBOX, True)
    assert campaign_id_of(entry[plain.global_id].remote) != campaign_id_of(entry[poor.global_id].remote)


# --- the sending side -----------------------------------------------------------------------


def _batching(peer: FakePeer, limit: int = 100) -> list[Call]:
    """The peer takes batches of up to ``limit`` and accepts everyone; the batch requests it gets."""
    document = peer.document()
    document["limits"] |= {"max_batch_notifications": limit, "max_batch_bytes": 1 << 20}
    peer.document_override = document
    batches: list[Call] = []

    def answer(call: Call) -> Any:
        batches.append(call)
        answers = [
            {
                "status": 200,
                "id": n["id"],
                "results": [{"address": a, "status": "accepted"} for a in n["recipients"]],
            }
            for n in call.json()["notifications"]
        ]
        return json_response(200, {"answers": answers}, url=call.url)

    peer.on("POST", BATCH, answer)
    return batches


def _due(*messages: Message) -> list[Delivery]:
    deliveries = list(Delivery.objects.filter(message__in=messages, domain="peer.test").order_by("pk"))
    Delivery.objects.filter(pk__in=[d.pk for d in deliveries]).update(next_attempt_at=timezone.now())
    return deliveries


def test_deliveries_due_for_one_domain_go_in_one_batch(alice: User, peer: FakePeer) -> None:
    batches = _batching(peer)
    messages = [SentMessageFactory(sender=alice, to=[f"u{i}@peer.test"]) for i in range(5)]
    deliveries = _due(*messages)

    deliver_notification(deliveries[0].pk)

    assert len(batches) == 1 and not peer.calls_to("POST", NOTIFICATIONS)
    assert [n["id"] for n in batches[0].json()["notifications"]] == [str(m.id) for m in messages]
    assert set(Delivery.objects.filter(pk__in=[d.pk for d in deliveries]).values_list("state", flat=True)) == {
        DeliveryState.NOTIFIED
    }
    assert set(Recipient.objects.filter(message__in=messages).values_list("status", flat=True)) == {"accepted"}
    # The other tasks find their rows done and send nothing.
    for delivery in deliveries[1:]:
        deliver_notification(delivery.pk)
    assert len(peer.calls) == len(batches) + peer.discovery_calls


def test_a_full_batch_to_a_busy_peer_is_waited_for_not_abandoned_and_resent(
    alice: User, peer: FakePeer, settings: Any
) -> None:
    """A receiver storing 50 notifications on a busy machine answers after 15 s, later than a lone
    request's timeout (10 s): the sender waits for it, instead of giving up and sending the whole
    batch again (which a busy receiver then stores again, as slowly)."""
    settings.PUSHMAIL_HTTP_TIMEOUT = 10
    batches = _batching(peer)
    answer = peer.routes[("POST", BATCH)]

    def busy(call: Call) -> Any:
        if (call.timeout or settings.PUSHMAIL_HTTP_TIMEOUT) < 15:
            raise http.OutboundError(f"timed out after {call.timeout:g}s contacting peer.test")
        return answer(call)

    peer.on("POST", BATCH, busy)
    deliveries = _due(*(SentMessageFactory(sender=alice, to=[f"u{i}@peer.test"]) for i in range(50)))

    deliver_notification(deliveries[0].pk)

    assert len(batches) == 1
    assert set(Delivery.objects.filter(pk__in=[d.pk for d in deliveries]).values_list("state", flat=True)) == {
        DeliveryState.NOTIFIED
    }


def test_a_lone_notification_goes_alone_at_once(alice: User, peer: FakePeer) -> None:
    batches = _batching(peer)
    (delivery,) = _due(SentMessageFactory(sender=alice, to=["carol@peer.test"]))

    deliver_notification(delivery.pk)

    assert not batches and len(peer.calls_to("POST", NOTIFICATIONS)) == 1
    delivery.refresh_from_db()
    assert delivery.state == DeliveryState.NOTIFIED


def test_a_peer_without_batches_gets_one_notification_per_request(alice: User, peer: FakePeer) -> None:
    messages = [SentMessageFactory(sender=alice, to=[f"u{i}@peer.test"]) for i in range(3)]
    deliveries = _due(*messages)

    for delivery in deliveries:
        deliver_notification(delivery.pk)

    assert not peer.calls_to("POST", BATCH)
    assert len(peer.calls_to("POST", NOTIFICATIONS)) == 3
    assert set(Delivery.objects.filter(pk__in=[d.pk for d in deliveries]).values_list("state", flat=True)) == {
        DeliveryState.NOTIFIED
    }


def test_each_answer_of_a_batch_moves_its_own_delivery(alice: User, peer: FakePeer) -> None:
    _batching(peer)
    messages = [SentMessageFactory(sender=alice, to=[f"u{i}@peer.test"]) for i in range(3)]
    deliveries = _due(*messages)

    def answer(call: Call) -> Any:
        ids = [n["id"] for n in call.json()["notifications"]]
        return json_response(
            200,
            {
                "answers": [
                    {"status": 200, "id": ids[0], "results": [{"address": "u0@peer.test", "status": "accepted"}]},
                    {"status": 409, "id": ids[1], "error": "conflicting_notification", "detail": "subject: differs"},
                    {"status": 429, "id": ids[2], "error": "rate_limited", "detail": "over", "retry_after": 30},
                ]
            },
        )

    peer.on("POST", BATCH, answer)
    deliver_notification(deliveries[0].pk)

    states = {d.pk: d for d in Delivery.objects.filter(pk__in=[d.pk for d in deliveries])}
    assert states[deliveries[0].pk].state == DeliveryState.NOTIFIED
    assert states[deliveries[1].pk].state == DeliveryState.FAILED
    assert "subject: differs" in states[deliveries[1].pk].last_error
    retrying = states[deliveries[2].pk]
    assert retrying.state == DeliveryState.RETRYING and retrying.next_attempt_at is not None
    assert 25 <= (retrying.next_attempt_at - timezone.now()).total_seconds() <= 31


def test_a_batch_that_fails_whole_retries_every_delivery_in_it(alice: User, peer: FakePeer) -> None:
    _batching(peer)
    deliveries = _due(*(SentMessageFactory(sender=alice, to=[f"u{i}@peer.test"]) for i in range(3)))
    peer.fail("POST", BATCH)

    deliver_notification(deliveries[0].pk)

    assert set(Delivery.objects.filter(pk__in=[d.pk for d in deliveries]).values_list("state", flat=True)) == {
        DeliveryState.RETRYING
    }


@pytest.mark.parametrize("status", [400, 404, 413])
def test_a_batch_the_peer_will_not_take_is_sent_one_by_one(alice: User, peer: FakePeer, status: int) -> None:
    _batching(peer)
    peer.reply("POST", BATCH, status, {"error": "too_large", "detail": "no"})
    deliveries = _due(*(SentMessageFactory(sender=alice, to=[f"u{i}@peer.test"]) for i in range(3)))

    deliver_notification(deliveries[0].pk)

    assert len(peer.calls_to("POST", BATCH)) == 1
    assert len(peer.calls_to("POST", NOTIFICATIONS)) == 3
    assert set(Delivery.objects.filter(pk__in=[d.pk for d in deliveries]).values_list("state", flat=True)) == {
        DeliveryState.NOTIFIED
    }


def test_batches_are_cut_to_the_peers_byte_limit_and_are_the_documented_json(alice: User, peer: FakePeer) -> None:
    from federation import payloads
    from outbox import delivery as outbox_delivery

    deliveries = _due(*(SentMessageFactory(sender=alice, to=[f"u{i}@peer.test"]) for i in range(5)))
    members = [(d, outbox_delivery.notification_for(d)) for d in deliveries]
    one = len(json.dumps(payloads.notification_batch([members[0][1]]), separators=(",", ":")))

    packed = outbox_delivery._packed(members, 2 * one + 100)

    assert [len(batch) for batch, _body in packed] == [2, 2, 1]
    for batch, body in packed:
        assert body is not None and len(body) <= 2 * one + 100
        expected = json.dumps(payloads.notification_batch([n for _, n in batch]), separators=(",", ":")).encode()
        assert body == expected
    assert outbox_delivery._packed(members[:1], one - 1) == [([members[0]], None)]
