"""The user API (/api/v1/...): auth, validation, scoping, inbox, open/fetch, retry, withdraw."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import User
from mailbox.models import EntryState, FetchState, InboxEntry, RemoteMessage
from mailbox.services import accept_notification, fetch_body, post_notice
from outbox.models import Delivery, Message, Withdrawal, WithdrawalState
from outbox.services import deliver_notification
from tests.conftest import FakePeer, Queued, api_as
from tests.factories import InboxEntryFactory, PeerMessageFactory, SentMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]

MESSAGES = "/api/v1/messages/"
INBOX = "/api/v1/inbox/"


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    data = response.json()
    assert data["error"] and data["detail"]
    return data


def _receive(peer: FakePeer, **kwargs: Any) -> InboxEntry:
    message = PeerMessageFactory(**kwargs)
    peer.bodies[str(message.global_id)] = message.content()
    accept_notification(origin="peer.test", notification=message.notification())
    return InboxEntry.objects.get(remote__global_id=message.global_id, owner__email=message.to[0])


# --- authentication ------------------------------------------------------------------------------------


def test_bearer_token_authenticates(api: APIClient, alice: User) -> None:
    response = api.get(INBOX)
    assert response.status_code == 200
    assert response.json()["count"] == 0


def test_session_authenticates(alice: User) -> None:
    client = APIClient()
    client.force_login(alice)
    assert client.get(INBOX).status_code == 200


def test_session_post_needs_the_csrf_token(alice: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = client.post(MESSAGES, {"to": ["bob@alpha.test"], "subject": "s", "text": "t"}, "application/json")
    assert "csrf" in _error(response, 403)["detail"].lower()
    assert not Message.objects.exists()


@pytest.mark.parametrize("path", [INBOX, MESSAGES, f"{INBOX}1/"])
def test_unauthenticated_is_refused_with_json(db: None, path: str) -> None:
    response = APIClient().get(path) if path != MESSAGES else APIClient().post(path, {}, format="json")
    data = _error(response, 401)
    assert "credentials" in data["detail"].lower()
    assert response["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("header", ["Bearer pm_not-a-real-token", "Bearer ", "Bearer"])
def test_bad_token_is_refused_with_json(alice: User, header: str) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    _error(client.get(INBOX), 401)


def test_token_of_a_deactivated_user_is_refused(api: APIClient, alice: User) -> None:
    alice.is_active = False
    alice.save(update_fields=["is_active"])
    _error(api.get(INBOX), 401)


# --- sending ----------------------------------------------------------------------------------------------


def test_send_answers_201_with_the_message_and_its_deliveries(api: APIClient, alice: User, bob: User) -> None:
    response = api.post(
        MESSAGES,
        {
            "to": ["carol@peer.test", "bob@alpha.test"],
            "cc": ["nobody@alpha.test"],
            "bcc": ["hidden@other.test"],
            "subject": "Grüße",
            "text": "Hello ✓",
            "html": "<p>Hello</p>",
        },
        format="json",
    )

    assert response.status_code == 201, response.content
    data = response.json()
    message = Message.objects.get(pk=data["id"])
    assert data["sender_address"] == "alice@alpha.test"
    assert (data["subject"], data["text"], data["size"], data["digest"]) == (
        "Grüße",
        "Hello ✓",
        message.size,
        message.digest,
    )
    rows = {row["domain"]: row for row in data["deliveries"]}
    assert set(rows) == {"alpha.test", "other.test", "peer.test"}
    assert rows["peer.test"]["state"] == "pending" and not rows["peer.test"]["local"]
    assert rows["alpha.test"]["state"] == "notified" and rows["alpha.test"]["local"]
    local_answers = {r["address"]: (r["status"], r["reason"]) for r in rows["alpha.test"]["recipients"]}
    assert local_answers == {"bob@alpha.test": ("accepted", ""), "nobody@alpha.test": ("rejected", "unknown mailbox")}
    assert rows["other.test"]["recipients"] == [
        {"address": "hidden@other.test", "kind": "bcc", "status": "pending", "reason": ""}
    ]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"to": ["not-an-address"]}, "to"),
        ({"to": ["bob@alpha.test"], "cc": ["a@@b"]}, "cc"),
        ({"to": ["bob@alpha.test"], "bcc": ["x@-bad-.test"]}, "bcc"),
        ({"to": ["bob@alpha.test\r\n"]}, "to"),
        ({"to": ["bob@alpha.test\nBcc: eve@evil.test"]}, "to"),
        ({"to": "bob@alpha.test"}, "to"),
        ({"to": []}, "to"),
        ({"to": ["bob@alpha.test"], "subject": "Hi\r\nBcc: eve@evil.test"}, "subject"),
        ({"to": ["bob@alpha.test"], "subject": "Hi\nthere"}, "subject"),
        ({"to": ["bob@alpha.test"], "subject": "x" * 999}, "subject"),
        ({"to": ["bob@alpha.test"], "in_reply_to": "<a@b>\r\nX: y"}, "in_reply_to"),
        ({"to": ["bob@alpha.test"], "subject": None}, "subject"),
    ],
)
def test_send_validation_names_the_field(
    api: APIClient, alice: User, bob: User, payload: dict[str, Any], field: str | None
) -> None:
    body = {"subject": "s", "text": "t", **payload}
    data = _error(api.post(MESSAGES, body, format="json"), 400)
    if field:
        assert field in data["fields"], data
    assert not Message.objects.exists()


def test_send_requires_subject_and_text(api: APIClient, alice: User) -> None:
    data = _error(api.post(MESSAGES, {"to": ["bob@alpha.test"]}, format="json"), 400)
    assert {"subject", "text"} <= set(data["fields"])


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[]", b'"x"'])
def test_send_with_malformed_json_is_400(api: APIClient, alice: User, raw: bytes) -> None:
    response = api.generic("POST", MESSAGES, raw, content_type="application/json")
    _error(response, 400)


def test_send_with_form_encoding_is_415(api: APIClient, alice: User) -> None:
    response = api.post(MESSAGES, {"to": "bob@alpha.test", "subject": "s", "text": "t"})
    _error(response, 415)


def test_unknown_and_legacy_recipients_are_not_a_400(api: APIClient, alice: User, peer: FakePeer) -> None:
    response = api.post(
        MESSAGES,
        {"to": ["nobody@alpha.test", "someone@legacy.example"], "subject": "s", "text": "t"},
        format="json",
    )
    assert response.status_code == 201
    message_id = response.json()["id"]
    for delivery in Delivery.objects.filter(message_id=message_id, local=False):
        deliver_notification(delivery.pk)

    rows = {r["domain"]: r for r in api.get(f"{MESSAGES}{message_id}/").json()["deliveries"]}
    assert rows["legacy.example"]["recipients"][0]["reason"] == "legacy domain"
    assert rows["legacy.example"]["recipients"][0]["status"] == "rejected"
    assert rows["alpha.test"]["recipients"][0]["reason"] == "unknown mailbox"


def test_sent_message_detail_shows_delivery_answers_and_fetches(api: APIClient, alice: User, peer: FakePeer) -> None:
    message = SentMessageFactory(sender=alice, to=["carol@peer.test"])
    deliver_notification(Delivery.objects.get(message=message).pk)

    data = api.get(f"{MESSAGES}{message.pk}/").json()

    (row,) = data["deliveries"]
    assert row["state"] == "notified" and row["attempts"] == 1 and row["notified_at"]
    assert row["recipients"] == [{"address": "carol@peer.test", "kind": "to", "status": "accepted", "reason": ""}]
    assert (row["fetch_status"], row["fetch_count"], row["withdrawal"]) == ("not fetched", 0, "none")


# --- a user sees only their own mail -------------------------------------------------------------------


def test_another_users_mail_is_404(alice: User, bob: User, peer: FakePeer) -> None:
    bobs_message = SentMessageFactory(sender=bob, to=["carol@peer.test"])
    bobs_entry = _receive(peer, to=["bob@alpha.test"])
    alice_api = api_as(alice)

    for response in (
        alice_api.get(f"{MESSAGES}{bobs_message.pk}/"),
        alice_api.post(f"{MESSAGES}{bobs_message.pk}/withdraw/"),
        alice_api.get(f"{INBOX}{bobs_entry.pk}/"),
        alice_api.post(f"{INBOX}{bobs_entry.pk}/retry/"),
        alice_api.get(f"{MESSAGES}00000000-0000-0000-0000-000000000000/"),
        alice_api.get(f"{INBOX}999999/"),
    ):
        assert _error(response, 404)["error"] == "not_found"
    assert alice_api.get(INBOX).json()["count"] == 0
    bobs_message.refresh_from_db()
    bobs_entry.refresh_from_db()
    assert bobs_message.withdrawn_at is None
    assert (bobs_entry.read, bobs_entry.state) == (False, EntryState.NOTIFIED)


# --- the inbox ---------------------------------------------------------------------------------------------


def test_inbox_is_paginated_newest_first_with_the_documented_fields(api: APIClient, alice: User) -> None:
    entries = InboxEntryFactory.create_batch(60, owner=alice)

    first = api.get(INBOX).json()
    second = api.get(first["next"]).json()

    assert first["count"] == 60 and len(first["results"]) == 50 and first["previous"] is None
    assert len(second["results"]) == 10 and second["next"] is None
    ids = [e["id"] for e in first["results"] + second["results"]]
    assert ids == [e.pk for e in reversed(entries)]
    item = first["results"][0]
    assert {"id", "sender", "subject", "received_at", "state", "read"} <= set(item)
    newest = entries[-1]
    assert (item["sender"], item["subject"], item["state"], item["read"]) == (
        newest.sender,
        newest.subject,
        "notified",
        False,
    )


def test_inbox_query_count_does_not_grow_with_the_entries(
    api: APIClient, alice: User, bob: User, django_assert_num_queries: Any
) -> None:
    InboxEntryFactory.create_batch(3, owner=alice)
    SentMessageFactory(sender=bob, to=["alice@alpha.test"])  # a local message
    post_notice(owner=alice, subject="Undelivered", text="...")
    api.get(INBOX)  # the first request also records when the token was used

    with django_assert_num_queries(3):
        assert len(api.get(INBOX).json()["results"]) == 5

    InboxEntryFactory.create_batch(55, owner=alice)
    with django_assert_num_queries(3):
        assert api.get(INBOX).json()["count"] == 60


# --- opening: pull on read ---------------------------------------------------------------------------------


def test_opening_before_the_fetch_answers_202_and_queues_one_fetch(
    api: APIClient,
    alice: User,
    peer: FakePeer,
    queued: list[Queued],
    django_capture_on_commit_callbacks: Any,
) -> None:
    entry = _receive(peer, subject="Pull me", text="Body token 42")

    with django_capture_on_commit_callbacks(execute=True):
        first = api.get(f"{INBOX}{entry.pk}/")
        again = api.get(f"{INBOX}{entry.pk}/")  # the client polls

    assert first.status_code == again.status_code == 202
    data = first.json()
    assert data["state"] == "fetching" and data["body"] is None and data["read"] is True
    assert [(q.name, q.args) for q in queued] == [("mailbox.fetch_body", (entry.remote_id,))]

    fetch_body(entry.remote_id)
    opened = api.get(f"{INBOX}{entry.pk}/")

    assert opened.status_code == 200
    data = opened.json()
    assert data["state"] == "fetched" and data["read"] is True
    assert data["body"]["text"] == "Body token 42" and data["body"]["to"] == ["alice@alpha.test"]
    assert data["digest"] == RemoteMessage.objects.get(pk=entry.remote_id).digest
    listed = api.get(INBOX).json()["results"][0]
    assert (listed["state"], listed["read"]) == ("fetched", True)


def test_retry_endpoint_retries_an_unavailable_fetch_at_once(
    api: APIClient,
    alice: User,
    peer: FakePeer,
    queued: list[Queued],
    django_capture_on_commit_callbacks: Any,
) -> None:
    entry = _receive(peer)
    api.get(f"{INBOX}{entry.pk}/")
    peer.go_down()
    fetch_body(entry.remote_id)
    assert api.get(f"{INBOX}{entry.pk}/").json()["state"] == "unavailable"
    peer.come_back()

    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(f"{INBOX}{entry.pk}/retry/")

    assert response.status_code == 202
    assert response.json()["state"] == "unavailable" and "refused" in response.json()["last_error"]
    assert [(q.name, q.args) for q in queued] == [("mailbox.fetch_body", (entry.remote_id,))]
    fetch_body(entry.remote_id)
    assert api.get(f"{INBOX}{entry.pk}/").json()["state"] == "fetched"


def test_withdraw_endpoint(
    api: APIClient,
    alice: User,
    bob: User,
    peer: FakePeer,
    queued: list[Queued],
    django_capture_on_commit_callbacks: Any,
) -> None:
    message = SentMessageFactory(sender=alice, to=["carol@peer.test", "bob@alpha.test"])
    delivery = Delivery.objects.get(message=message, domain="peer.test")
    deliver_notification(delivery.pk)

    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(f"{MESSAGES}{message.pk}/withdraw/")

    assert response.status_code == 200
    data = response.json()
    assert data["withdrawn_at"] and data["offer_ended"]["reason"] == "withdrawn"
    rows = {r["domain"]: r for r in data["deliveries"]}
    assert rows["peer.test"]["withdrawal"] == WithdrawalState.PENDING
    withdrawal = Withdrawal.objects.get(message=message, domain="peer.test")
    assert ("outbox.send_withdrawal", (withdrawal.pk,)) in [(q.name, q.args) for q in queued]
    assert InboxEntry.objects.get(owner=bob).state == EntryState.WITHDRAWN
    assert api.post(f"{MESSAGES}{message.pk}/withdraw/").status_code == 200  # idempotent


def test_withdrawn_entry_is_shown_as_such(api: APIClient, alice: User, peer: FakePeer) -> None:
    entry = _receive(peer)
    RemoteMessage.objects.filter(pk=entry.remote_id).update(state=FetchState.WITHDRAWN)
    InboxEntry.objects.filter(pk=entry.pk).update(state=EntryState.WITHDRAWN)

    response = api.get(f"{INBOX}{entry.pk}/")

    assert response.status_code == 200
    assert response.json()["state"] == "withdrawn" and response.json()["body"] is None


@pytest.mark.parametrize(
    ("method", "path"),
    [("delete", INBOX), ("put", MESSAGES), ("get", MESSAGES), ("post", INBOX), ("get", f"{INBOX}1/retry/")],
)
def test_wrong_methods_are_405_json(api: APIClient, alice: User, method: str, path: str) -> None:
    response = getattr(api, method)(path)
    assert _error(response, 405)["error"] == "method_not_allowed"


def test_unknown_api_path_is_404_json(api: APIClient, alice: User) -> None:
    _error(api.get("/api/v1/nothing-here/"), 404)


def test_schema_documents_bearer_and_session_auth(db: None) -> None:
    response = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    schemes = schema["components"]["securitySchemes"]
    assert {"type": "http", "scheme": "bearer"}.items() <= schemes["bearerAuth"].items()
    assert "cookieAuth" in schemes
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert {"bearerAuth": []} in operation["security"], (method, path)
