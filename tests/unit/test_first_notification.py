"""The first notification of a message is what every reader sees (docs/protocol.md §5.4).

A later notification for the same (origin domain, id) may only add recipients: one that
differs in anything else is refused with ``409 conflicting_notification`` and changes
nothing. Once the body is fetched and verified, every reader sees the body's own subject
and sender: in the list, on the message page, in search and in the API.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.models import User
from mailbox.models import EntryState, InboxEntry, RemoteMessage
from mailbox.services import fetch_body, open_entry
from outbox.services import send_message
from tests.conftest import FakePeer, FederationClient, api_as
from tests.factories import PeerMessage, PeerMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]

ORIGINAL = "Quarterly figures"
CHANGED = "URGENT: reset your password"
ENTRY = {"name": "a.txt", "type": "text/plain", "size": 3, "digest": "sha-256:" + "a" * 64}


def _signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _first(peer: FakePeer, federation: FederationClient, message: PeerMessage, recipients: list[str]) -> None:
    peer.bodies[str(message.global_id)] = message.content()
    response = federation.notify(peer, message.payload(recipients=recipients))
    assert response.status_code == 200
    assert {r["status"] for r in response.json()["results"]} == {"accepted"}


def _fetch_for(user: User, message: PeerMessage) -> InboxEntry:
    entry = InboxEntry.objects.select_related("remote").get(owner=user, remote__global_id=message.global_id)
    open_entry(entry=entry)
    fetch_body(entry.remote_id)
    return InboxEntry.objects.select_related("remote").get(pk=entry.pk)


def _seen_by(user: User, entry: InboxEntry) -> dict[str, Any]:
    """What the reader is shown as this message's subject and sender, everywhere."""
    client = _signed_in(user)
    listing = client.get(reverse("webmail:folder", args=["inbox"])).content.decode()
    page = client.get(reverse("webmail:entry", args=[entry.pk])).content.decode()
    found = client.get(reverse("webmail:search"), {"q": "quarterly"}).content.decode()
    api = api_as(user)
    detail = api.get(f"/api/v1/inbox/{entry.pk}/").json()
    listed = api.get("/api/v1/inbox/").json()["results"]
    return {"list": listing, "page": page, "search": found, "detail": detail, "listed": listed}


def test_a_later_notification_with_another_subject_and_recipient_is_refused(
    alice: User, bob: User, peer: FakePeer, federation: FederationClient
) -> None:
    message = PeerMessageFactory(subject=ORIGINAL, to=["alice@alpha.test", "bob@alpha.test"])
    _first(peer, federation, message, ["alice@alpha.test"])

    # Same id and digest (so the same body), another subject, another recipient.
    response = federation.notify(peer, message.payload(subject=CHANGED, recipients=["bob@alpha.test"]))

    assert response.status_code == 409
    data = response.json()
    assert data["error"] == "conflicting_notification"
    assert data["detail"].startswith("subject: ")
    assert not InboxEntry.objects.filter(owner=bob).exists()
    assert RemoteMessage.objects.get().subject == ORIGINAL

    entry = _fetch_for(alice, message)
    assert entry.state == EntryState.FETCHED
    seen = _seen_by(alice, entry)
    for where in ("list", "page", "search"):
        assert ORIGINAL in seen[where] and CHANGED not in seen[where], where
    assert seen["detail"]["subject"] == ORIGINAL and seen["detail"]["body"]["subject"] == ORIGINAL
    assert [r["subject"] for r in seen["listed"]] == [ORIGINAL]


CONFLICTS: list[tuple[str, Any]] = [
    ("message_id", "<other@peer.test>"),
    ("sender", "dave@peer.test"),
    ("subject", CHANGED),
    ("subject", ""),
    ("size", "+1"),
    ("digest", "sha-256:" + "0" * 64),
    ("date", "+1s"),
    ("in_reply_to", "<parent@peer.test>"),
    ("references", ["<root@peer.test>"]),
    ("attachments", [ENTRY]),
]


@pytest.mark.parametrize(("field", "value"), CONFLICTS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(CONFLICTS)])
@pytest.mark.parametrize("to_whom", ["a new recipient", "the same recipient", "no one here"])
def test_a_repeat_that_differs_in_any_field_is_409_and_changes_nothing(
    alice: User, bob: User, peer: FakePeer, federation: FederationClient, field: str, value: Any, to_whom: str
) -> None:
    message = PeerMessageFactory(subject=ORIGINAL)
    _first(peer, federation, message, ["alice@alpha.test"])
    before = RemoteMessage.objects.values().get()
    first = message.payload()
    if value == "+1":
        value = first[field] + 1
    elif value == "+1s":
        value = (message.date + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    recipients = {
        "a new recipient": ["bob@alpha.test"],
        "the same recipient": ["alice@alpha.test"],
        "no one here": ["nobody@alpha.test"],
    }[to_whom]

    response = federation.notify(peer, message.payload(**{field: value, "recipients": recipients}))

    assert response.status_code == 409, response.content
    assert response.json()["error"] == "conflicting_notification"
    assert response.json()["detail"].startswith(f"{field}: ")
    assert RemoteMessage.objects.values().get() == before
    assert list(InboxEntry.objects.values_list("owner__email", "subject")) == [("alice@alpha.test", ORIGINAL)]


def test_a_split_notification_adds_recipients_with_the_first_metadata(
    alice: User, bob: User, peer: FakePeer, federation: FederationClient
) -> None:
    message = PeerMessageFactory(subject=ORIGINAL, to=["alice@alpha.test", "bob@alpha.test"])
    _first(peer, federation, message, ["alice@alpha.test"])
    expires = RemoteMessage.objects.get().expires_at

    later = message.payload(recipients=["bob@alpha.test"], expires="2099-01-01T00:00:00Z")
    response = federation.notify(peer, later)

    assert response.status_code == 200
    assert response.json()["results"] == [{"address": "bob@alpha.test", "status": "accepted"}]
    assert RemoteMessage.objects.get().expires_at == expires  # the first notification's expiry is kept
    bob_entry = InboxEntry.objects.get(owner=bob)
    assert (bob_entry.subject, bob_entry.sender) == (ORIGINAL, "carol@peer.test")
    # The repeat of the first one, freshly signed, is answered the same and creates nothing.
    again = federation.notify(peer, message.payload(recipients=["alice@alpha.test"]))
    assert again.status_code == 200 and again.json()["results"] == [
        {"address": "alice@alpha.test", "status": "accepted"}
    ]
    assert InboxEntry.objects.count() == 2


def test_after_the_fetch_every_reader_sees_the_verified_subject_and_sender(
    alice: User, bob: User, peer: FakePeer, federation: FederationClient
) -> None:
    """An entry that shows another subject than its body (as earlier versions let a second
    notification do) shows the verified body's subject and sender once the body is here."""
    message = PeerMessageFactory(subject=ORIGINAL, to=["alice@alpha.test", "bob@alpha.test"])
    _first(peer, federation, message, ["alice@alpha.test", "bob@alpha.test"])
    InboxEntry.objects.filter(owner=bob).update(subject=CHANGED, sender="security@peer.test")

    _fetch_for(alice, message)  # alice opens it: the body is fetched once for the instance

    entry = InboxEntry.objects.select_related("remote").get(owner=bob)
    assert (entry.subject, entry.sender) == (ORIGINAL, "carol@peer.test")
    seen = _seen_by(bob, entry)
    for where in ("list", "page", "search"):
        assert ORIGINAL in seen[where] and CHANGED not in seen[where], where
        assert "security@peer.test" not in seen[where], where
    assert (seen["detail"]["subject"], seen["detail"]["sender"]) == (ORIGINAL, "carol@peer.test")
    assert seen["detail"]["body"]["subject"] == ORIGINAL
    assert seen["detail"]["body"]["from"] == "carol@peer.test"
    assert [(r["subject"], r["sender"]) for r in seen["listed"]] == [(ORIGINAL, "carol@peer.test")]


def test_the_api_body_has_the_verified_subject_and_sender(
    alice: User, bob: User, peer: FakePeer, federation: FederationClient
) -> None:
    message = PeerMessageFactory(subject=ORIGINAL)
    _first(peer, federation, message, ["alice@alpha.test"])
    remote_entry = _fetch_for(alice, message)
    local = send_message(sender=bob, to=["alice@alpha.test"], subject="From next door", text="Hi")
    local_entry = InboxEntry.objects.get(owner=alice, local=local)
    api = api_as(alice)

    remote_body = api.get(f"/api/v1/inbox/{remote_entry.pk}/").json()["body"]
    local_body = api.get(f"/api/v1/inbox/{local_entry.pk}/").json()["body"]

    assert (remote_body["subject"], remote_body["from"]) == (ORIGINAL, "carol@peer.test")
    assert (local_body["subject"], local_body["from"]) == ("From next door", "bob@alpha.test")


def test_the_openapi_schema_documents_the_body_subject_and_sender(db: None) -> None:
    schema = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    detail = schema["components"]["schemas"]["EntryDetail"]["properties"]["body"]
    ref = detail.get("$ref") or next(
        part["$ref"] for part in detail.get("allOf", detail.get("oneOf", [])) if "$ref" in part
    )
    body = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]

    assert {"subject", "from", "text", "html", "to", "cc"} <= set(body["properties"])


def test_a_sender_told_409_fails_the_delivery_at_once_and_says_why(alice: User, peer: FakePeer) -> None:
    from outbox.models import Delivery, DeliveryState, Recipient
    from outbox.services import deliver_notification
    from tests.conftest import NOTIFICATIONS

    peer.reply(
        "POST",
        NOTIFICATIONS,
        409,
        {"error": "conflicting_notification", "detail": "subject: differs from the first notification"},
    )
    message = send_message(sender=alice, to=["carol@peer.test"], subject="Hello", text="Hi")
    delivery = Delivery.objects.get(message=message, domain="peer.test")

    deliver_notification(delivery.pk)

    delivery.refresh_from_db()
    assert delivery.state == DeliveryState.FAILED and delivery.attempts == 1
    recipient = Recipient.objects.get(message=message, address="carol@peer.test")
    assert (recipient.status, recipient.reason) == (
        "rejected",
        "HTTP 409: subject: differs from the first notification",
    )
