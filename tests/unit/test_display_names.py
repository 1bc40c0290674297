"""Display names: carried in the notification and the body, shown with the address beside them,
in the .eml From, and refused with a clear 400 when a peer sends one that breaks the rules."""

from __future__ import annotations

import email
import email.policy
import json
from typing import Any

import pytest
from django.test import Client

from accounts.models import RemoteContentPolicy, User
from federation import payloads
from mailbox.fetching import fetch_body
from mailbox.models import EntryState, InboxEntry, RemoteMessage
from mailbox.services import open_entry
from outbox.models import Delivery
from outbox.services import deliver_notification
from tests.conftest import NOTIFICATIONS, FakePeer, FederationClient
from tests.factories import PeerMessageFactory, SentMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]


def _page(user: User, url: str) -> str:
    client = Client()
    client.force_login(user)
    response = client.get(url)
    assert response.status_code == 200
    return response.content.decode()


def _eml_from(user: User, url: str) -> Any:
    client = Client()
    client.force_login(user)
    response = client.get(url)
    assert response.status_code == 200
    raw = b"".join(response.streaming_content) if response.streaming else response.content  # type: ignore[attr-defined]
    head = raw.partition(b"\r\n\r\n")[0]
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    return head, parsed["From"].addresses[0]


# --- sending ---------------------------------------------------------------------------------


def test_the_senders_name_travels_in_the_notification_and_the_body(
    alice: User, peer: FakePeer, federation: FederationClient
) -> None:
    User.objects.filter(pk=alice.pk).update(display_name="  Alice   Liddell ")
    alice.refresh_from_db()
    peer.reply("POST", NOTIFICATIONS, 200, {"results": [{"address": "carol@peer.test", "status": "accepted"}]})
    message = SentMessageFactory(sender=alice, to=["carol@peer.test"])
    deliver_notification(Delivery.objects.get(message=message).pk)

    (call,) = peer.calls_to("POST", NOTIFICATIONS)
    assert call.json()["sender_name"] == "Alice Liddell"  # trimmed, one space
    # A later change of name changes neither the body nor its digest.
    User.objects.filter(pk=alice.pk).update(display_name="Someone Else")
    response = federation.fetch(peer, message.id)
    assert response.status_code == 200
    body = payloads.check_body(response.content)
    assert body["from_name"] == "Alice Liddell" and body["from"] == "alice@alpha.test"
    assert payloads.digest(response.content) == call.json()["digest"]


def test_a_sender_without_a_name_sends_neither_member(
    alice: User, peer: FakePeer, federation: FederationClient
) -> None:
    peer.reply("POST", NOTIFICATIONS, 200, {"results": [{"address": "carol@peer.test", "status": "accepted"}]})
    message = SentMessageFactory(sender=alice, to=["carol@peer.test"])
    deliver_notification(Delivery.objects.get(message=message).pk)

    (call,) = peer.calls_to("POST", NOTIFICATIONS)
    assert "sender_name" not in call.json()
    assert "from_name" not in json.loads(federation.fetch(peer, message.id).content)


def test_the_sent_eml_has_the_name_encoded_for_non_ascii(alice: User, peer: FakePeer) -> None:
    User.objects.filter(pk=alice.pk).update(display_name="Zoë Müller")
    alice.refresh_from_db()
    message = SentMessageFactory(sender=alice, to=["carol@peer.test"])

    head, sender = _eml_from(alice, f"/mail/sent/{message.id}/eml/")

    assert b"From: =?utf-8?q?Zo=C3=AB_M=C3=BCller?= <alice@alpha.test>" in head
    assert (sender.display_name, sender.addr_spec) == ("Zoë Müller", "alice@alpha.test")


# --- receiving -------------------------------------------------------------------------------


def test_a_named_sender_shows_with_the_address_in_the_list_the_message_and_the_eml(
    alice: User, peer: FakePeer, federation: FederationClient
) -> None:
    message = PeerMessageFactory(sender="carol@peer.test", sender_name="Carol <b>Danvers</b>")
    peer.bodies[str(message.global_id)] = message.content()
    assert federation.notify(peer, message.payload()).status_code == 200
    entry = InboxEntry.objects.get(owner=alice)
    assert entry.sender_name == "Carol <b>Danvers</b>"

    inbox = _page(alice, "/mail/inbox/")
    # The name, escaped, and the address beside it.
    assert (
        '<span class="person-name">Carol &lt;b&gt;Danvers&lt;/b&gt;</span> '
        '<span class="person-address">carol@peer.test</span>' in inbox
    )
    assert "<b>Danvers</b>" not in inbox

    open_entry(entry=entry)
    fetch_body(entry.remote_id)
    entry.refresh_from_db()
    assert entry.state == EntryState.FETCHED
    page = _page(alice, f"/mail/entry/{entry.pk}/")
    assert (
        '<span class="person-name">Carol &lt;b&gt;Danvers&lt;/b&gt;</span> '
        '<span class="person-address">&lt;carol@peer.test&gt;</span>' in page
    )
    assert "<b>Danvers</b>" not in page

    head, sender = _eml_from(alice, f"/mail/entry/{entry.pk}/eml/")
    assert (sender.display_name, sender.addr_spec) == ("Carol <b>Danvers</b>", "carol@peer.test")
    assert b'From: "Carol <b>Danvers</b>" <carol@peer.test>' in head


def test_a_name_is_found_by_search(alice: User, peer: FakePeer, federation: FederationClient) -> None:
    message = PeerMessageFactory(sender="carol@peer.test", sender_name="Carol Danvers")
    assert federation.notify(peer, message.payload()).status_code == 200

    page = _page(alice, "/search/?q=danvers")

    assert 'data-testid="message-row"' in page and '<span class="person-name">Carol Danvers</span>' in page


def test_an_instance_that_sends_no_name_interoperates(
    alice: User, peer: FakePeer, federation: FederationClient
) -> None:
    message = PeerMessageFactory(sender="carol@peer.test")
    peer.bodies[str(message.global_id)] = message.content()
    for payload in (message.payload(), message.payload(sender_name=None)):
        assert federation.notify(peer, payload).status_code == 200
    entry = InboxEntry.objects.get(owner=alice)
    open_entry(entry=entry)
    fetch_body(entry.remote_id)
    entry.refresh_from_db()

    assert entry.state == EntryState.FETCHED and entry.sender_name == ""
    assert '<span class="person-address">carol@peer.test</span>' in _page(alice, "/mail/inbox/")


@pytest.mark.parametrize(
    ("name", "detail"),
    [
        ("x" * 101, "sender_name: longer than 100 characters"),
        ("Carol\x1b[31m", "sender_name: contains a control character (U+001B)"),
        ("Carol\r\nBcc: all@example.org", "sender_name: contains a line break (CR or LF)"),
        ("moc.lapyap\u202e", "sender_name: contains a bidirectional control character (U+202E)"),
        (" Carol", "sender_name: must not start or end with white space"),
        (42, "sender_name: expected a string"),
    ],
)
def test_a_bad_name_from_a_peer_gets_a_400_naming_the_field_and_nothing_is_stored(
    alice: User, peer: FakePeer, federation: FederationClient, name: Any, detail: str
) -> None:
    message = PeerMessageFactory(sender="carol@peer.test")

    response = federation.notify(peer, message.payload(sender_name=name))

    assert response.status_code == 400
    data = response.json()
    assert (data["error"], data["field"]) == ("invalid_payload", "sender_name")
    assert data["detail"].startswith(detail)
    assert not RemoteMessage.objects.exists() and not InboxEntry.objects.exists()


def test_a_repeat_with_another_name_is_a_conflict(alice: User, peer: FakePeer, federation: FederationClient) -> None:
    message = PeerMessageFactory(sender="carol@peer.test", sender_name="Carol")
    assert federation.notify(peer, message.payload()).status_code == 200

    response = federation.notify(peer, message.payload(sender_name="The Bank"))

    assert response.status_code == 409
    assert response.json()["detail"].startswith("sender_name")
    assert InboxEntry.objects.get(owner=alice).sender_name == "Carol"


def test_a_body_whose_name_differs_from_the_notification_is_tampered(
    alice: User, peer: FakePeer, federation: FederationClient
) -> None:
    notified = PeerMessageFactory(sender="carol@peer.test", sender_name="Carol")
    served = PeerMessageFactory(
        global_id=notified.global_id,
        sender="carol@peer.test",
        sender_name="The Bank",
        subject=notified.subject,
        text=notified.text,
        date=notified.date,
        expires=notified.expires,
    )
    content = served.content()
    payload = notified.payload(size=len(content), digest=payloads.digest(content))
    peer.bodies[str(notified.global_id)] = content
    assert federation.notify(peer, payload).status_code == 200
    entry = InboxEntry.objects.get(owner=alice)

    open_entry(entry=entry)
    fetch_body(entry.remote_id)

    entry.refresh_from_db()
    assert entry.state == EntryState.TAMPERED
    assert "from_name" in RemoteMessage.objects.get().last_error


def test_a_body_with_a_bad_name_is_malformed() -> None:
    message = PeerMessageFactory(sender="carol@peer.test")
    body = json.loads(message.content())
    body["from_name"] = "Carol\x07"
    with pytest.raises(payloads.PayloadError) as caught:
        payloads.check_body(payloads.canonical_json(body))
    assert caught.value.field == "from_name"


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Alice\u202eecilA", "bidirectional control character (U+202E)"),
        ("Alice\x1b", "control character (U+001B)"),
    ],
)
def test_settings_refuse_a_name_peers_would_refuse(alice: User, name: str, message: str) -> None:
    client = Client()
    client.force_login(alice)
    response = client.post(
        "/settings/",
        {
            "display_name": name,
            "signature": "",
            "fetch_policy": "",
            "remote_content": RemoteContentPolicy.ALWAYS,
            "recovery_address": "",
        },
    )
    assert message in response.content.decode()
    alice.refresh_from_db()
    assert alice.display_name == ""


# --- suggestions -----------------------------------------------------------------------------


def test_suggestions_match_a_name_and_show_it_beside_the_address(
    alice: User, bob: User, peer: FakePeer, federation: FederationClient
) -> None:
    assert federation.notify(peer, PeerMessageFactory(sender="carol@peer.test", sender_name="Carol Danvers").payload())
    User.objects.filter(pk=bob.pk).update(display_name="Bob Builder")
    SentMessageFactory(sender=alice, to=["bob@alpha.test"])
    client = Client()
    client.force_login(alice)

    by_name = client.get("/compose/contacts/", {"to": "dan@x.test, danv"}, headers={"HX-Request": "true"})
    assert (
        by_name.content.decode().strip()
        == '<option value="dan@x.test, carol@peer.test" label="Carol Danvers &lt;carol@peer.test&gt;"></option>'
    )
    data = client.get("/compose/contacts/", {"q": "b"}).json()
    assert data["contacts"] == ["bob@alpha.test"] and data["names"] == {"bob@alpha.test": "Bob Builder"}
