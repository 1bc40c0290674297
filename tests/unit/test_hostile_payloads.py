"""Validly signed but hostile payloads: every field of every payload this instance accepts is
checked for type, range and characters. A notification or withdrawal that breaks a rule gets
``400 invalid_payload`` naming the field, and nothing is stored; a fetched body that breaks the
body schema is refused as ``malformed`` and no page that shows it answers 500."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import User
from federation import discovery, http, payloads
from federation.discovery import WELL_KNOWN_PATH
from mailbox.models import EntryState, FetchState, InboxEntry, RemoteMessage
from mailbox.services import accept_notification, fetch_body, open_entry
from tests.conftest import NOTIFICATIONS, WITHDRAWALS, FakePeer, FederationClient, api_as
from tests.factories import InboxEntryFactory, PeerMessage, PeerMessageFactory, RemoteMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]

DEEP = 50_000  # far past the interpreter's recursion limit, well under the notification size limit


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _raw(payload: dict[str, Any], **raw_members: str) -> bytes:
    """The payload as JSON, with members whose JSON text is given verbatim (not via json.dumps)."""
    text = json.dumps(payload)
    extra = "".join(f', "{name}": {value}' for name, value in raw_members.items())
    return (text[:-1] + extra + "}").encode()


def _refused(response: Any, field: str) -> None:
    """400 invalid_payload naming ``field``, in the documented error shape, and nothing stored."""
    assert response.status_code == 400, (response.status_code, response.content[:300])
    data = response.json()
    assert data["error"] == "invalid_payload", data
    assert data["field"] == field, data
    assert data["detail"].startswith(f"{field}: "), data
    assert len(data["detail"]) < 1000
    assert not RemoteMessage.objects.exists()
    assert not InboxEntry.objects.exists()


ENTRY = {"name": "a.txt", "type": "text/plain", "size": 3, "digest": "sha-256:" + "a" * 64}


def _payload(**overrides: Any) -> dict[str, Any]:
    return PeerMessageFactory().payload(**overrides)


# (case id, the request body, the field the answer must name)
NOTIFICATION_CASES: list[tuple[str, Callable[[], bytes], str]] = [
    # Nesting, numbers and JSON oddities the parser must not crash on.
    ("deep-references", lambda: _raw(_payload(references=...), references=_nested(DEEP)), "body"),
    ("deep-unknown-member", lambda: _raw(_payload(), extension=_nested(DEEP)), "body"),
    ("deep-object", lambda: _raw(_payload(), extension='{"a":' * 30_000 + "1" + "}" * 30_000), "body"),
    ("nesting-past-the-limit", lambda: _raw(_payload(), extension=_nested(40)), "body"),
    ("size-2^64", lambda: json.dumps(_payload(size=2**64)).encode(), "size"),
    ("size-2^63", lambda: json.dumps(_payload(size=2**63)).encode(), "size"),
    ("size-2^31", lambda: json.dumps(_payload(size=2**31)).encode(), "size"),
    ("size-5000-digits", lambda: _raw(_payload(size=...), size="9" * 5000), "body"),
    ("size-float", lambda: json.dumps(_payload(size=12.5)).encode(), "size"),
    ("size-1e400", lambda: _raw(_payload(size=...), size="1e400"), "size"),
    ("size-nan", lambda: _raw(_payload(size=...), size="NaN"), "body"),
    ("size-infinity", lambda: _raw(_payload(size=...), size="-Infinity"), "body"),
    ("version-true", lambda: json.dumps(_payload(version=True)).encode(), "version"),
    ("version-float", lambda: json.dumps(_payload(version=1.0)).encode(), "version"),
    ("duplicate-member", lambda: _raw(_payload(), subject='"Another subject"'), "subject"),
    # NUL and other control characters, and unpaired surrogates, in every string.
    ("subject-nul", lambda: json.dumps(_payload(subject="Hi\x00there")).encode(), "subject"),
    ("subject-escape", lambda: json.dumps(_payload(subject="Hi\x1b[31m")).encode(), "subject"),
    ("subject-del", lambda: json.dumps(_payload(subject="Hi\x7f")).encode(), "subject"),
    ("subject-c1", lambda: json.dumps(_payload(subject="Hi\x85there")).encode(), "subject"),
    ("subject-surrogate", lambda: _raw(_payload(subject=...), subject='"Hi \\ud800"'), "subject"),
    ("message_id-nul", lambda: json.dumps(_payload(message_id="<a\x00b@peer.test>")).encode(), "message_id"),
    ("message_id-surrogate", lambda: _raw(_payload(message_id=...), message_id='"<\\udfff@p>"'), "message_id"),
    ("in_reply_to-nul", lambda: json.dumps(_payload(in_reply_to="<a\x00@peer.test>")).encode(), "in_reply_to"),
    ("in_reply_to-tab", lambda: json.dumps(_payload(in_reply_to="<a\t@peer.test>")).encode(), "in_reply_to"),
    ("references-nul", lambda: json.dumps(_payload(references=["<a\x00@peer.test>"])).encode(), "references[0]"),
    ("references-nested", lambda: json.dumps(_payload(references=[["<a@peer.test>"]])).encode(), "references[0]"),
    ("references-101", lambda: json.dumps(_payload(references=["<a@p>"] * 101)).encode(), "references"),
    ("sender-nul", lambda: json.dumps(_payload(sender="carol\x00@peer.test")).encode(), "sender"),
    ("sender-long", lambda: json.dumps(_payload(sender="c" * 100_000 + "@peer.test")).encode(), "sender"),
    ("recipient-nul", lambda: json.dumps(_payload(recipients=["alice\x00@alpha.test"])).encode(), "recipients[0]"),
    (
        "recipient-surrogate",
        lambda: _raw(_payload(recipients=...), recipients='["alice@alpha.test", "\\ud800@alpha.test"]'),
        "recipients[1]",
    ),
    ("recipient-object", lambda: json.dumps(_payload(recipients=[{}])).encode(), "recipients[0]"),
    ("id-nul", lambda: json.dumps(_payload(id="6f1c2b1e-3d4a-4b5c-8d9e-0a1b2c3d4e5\x00")).encode(), "id"),
    ("id-underscore", lambda: json.dumps(_payload(id="6f1c2b1e3d4a4b5c8d9e0a1b2c3d4e_f")).encode(), "id"),
    ("id-long", lambda: json.dumps(_payload(id="6" * 100_000)).encode(), "id"),
    ("date-nul", lambda: json.dumps(_payload(date="2026-11-26T10:00:00Z\x00")).encode(), "date"),
    ("date-year-1", lambda: json.dumps(_payload(date="0001-01-01T00:00:00Z")).encode(), "date"),
    ("date-year-9999", lambda: json.dumps(_payload(date="9999-12-31T23:59:59Z")).encode(), "date"),
    ("date-feb-30", lambda: json.dumps(_payload(date="2026-02-30T10:00:00Z")).encode(), "date"),
    ("expires-year-9999", lambda: json.dumps(_payload(expires="9999-12-31T23:59:59Z")).encode(), "expires"),
    ("expires-number", lambda: json.dumps(_payload(expires=1e308)).encode(), "expires"),
    ("digest-nul", lambda: json.dumps(_payload(digest="sha-256:" + "a" * 63 + "\x00")).encode(), "digest"),
    ("type-nul", lambda: json.dumps(_payload(type="notification\x00")).encode(), "type"),
    # The attachment manifest.
    (
        "manifest-name-nul",
        lambda: json.dumps(_payload(attachments=[{**ENTRY, "name": "a\x00.txt"}])).encode(),
        "attachments[0].name",
    ),
    (
        "manifest-name-surrogate",
        lambda: _raw(
            _payload(),
            attachments='[{"name": "\\ud800.txt", "type": "text/plain", "size": 3, "digest": "sha-256:'
            + "a" * 64
            + '"}]',
        ),
        "attachments[0].name",
    ),
    (
        "manifest-type-nul",
        lambda: json.dumps(_payload(attachments=[{**ENTRY, "type": "text/plain\x00"}])).encode(),
        "attachments[0].type",
    ),
    (
        "manifest-size-2^63",
        lambda: json.dumps(_payload(attachments=[{**ENTRY, "size": 2**63}])).encode(),
        "attachments[0].size",
    ),
    (
        "manifest-size-2^53",
        lambda: json.dumps(_payload(attachments=[ENTRY, {**ENTRY, "size": 2**53}])).encode(),
        "attachments[1].size",
    ),
    (
        "manifest-size-float",
        lambda: json.dumps(_payload(attachments=[{**ENTRY, "size": 3.0}])).encode(),
        "attachments[0].size",
    ),
    ("manifest-entry-list", lambda: json.dumps(_payload(attachments=[[ENTRY]])).encode(), "attachments[0]"),
    ("manifest-null", lambda: json.dumps(_payload(attachments=None)).encode(), "attachments"),
]


@pytest.mark.parametrize(("body", "field"), [c[1:] for c in NOTIFICATION_CASES], ids=[c[0] for c in NOTIFICATION_CASES])
def test_hostile_notification_is_400_naming_the_field_and_stores_nothing(
    federation: FederationClient, peer: FakePeer, alice: User, body: Callable[[], bytes], field: str
) -> None:
    content = body()
    assert len(content) < 262144  # within the size limit: the signature and schema decide

    response = federation.send("POST", NOTIFICATIONS, content, signer=peer)

    _refused(response, field)


def test_a_tab_in_a_subject_and_the_largest_numbers_are_still_accepted(
    federation: FederationClient, peer: FakePeer, alice: User
) -> None:
    payload = _payload(subject="Quarterly\treport", size=2**31 - 1, attachments=[{**ENTRY, "size": 2**53 - 1}])

    response = federation.notify(peer, payload)

    assert response.status_code == 200, response.content
    assert response.json()["results"] == [{"address": "alice@alpha.test", "status": "accepted"}]
    entry = InboxEntry.objects.get()
    assert (entry.subject, entry.size, entry.attachments_size) == ("Quarterly\treport", 2**31 - 1, 2**53 - 1)


WITHDRAWAL = {
    "type": "withdrawal",
    "version": 1,
    "id": "6f1c2b1e-3d4a-4b5c-8d9e-0a1b2c3d4e5f",
    "sender": "carol@peer.test",
}
WITHDRAWAL_CASES: list[tuple[str, bytes, str]] = [
    ("deep", _raw(WITHDRAWAL, extension=_nested(30_000)), "body"),
    ("id-nul", json.dumps({**WITHDRAWAL, "id": WITHDRAWAL["id"][:-1] + "\x00"}).encode(), "id"),
    ("id-number", json.dumps({**WITHDRAWAL, "id": 2**70}).encode(), "id"),
    ("sender-nul", json.dumps({**WITHDRAWAL, "sender": "carol\x00@peer.test"}).encode(), "sender"),
    ("version-true", json.dumps({**WITHDRAWAL, "version": True}).encode(), "version"),
    ("type-array", json.dumps({**WITHDRAWAL, "type": ["withdrawal"]}).encode(), "type"),
    ("huge-number", _raw(WITHDRAWAL, extension="1" * 5000), "body"),
]


@pytest.mark.parametrize(("body", "field"), [c[1:] for c in WITHDRAWAL_CASES], ids=[c[0] for c in WITHDRAWAL_CASES])
def test_hostile_withdrawal_is_400_naming_the_field(
    federation: FederationClient, peer: FakePeer, alice: User, body: bytes, field: str
) -> None:
    _refused(federation.send("POST", WITHDRAWALS, body, signer=peer), field)


# --- answers and documents this instance reads as a client ---------------------------------------


def _document_answer(content: bytes) -> Callable[[Any], http.Response]:
    return lambda call: http.Response(status=200, headers={"content-type": "application/json"}, content=content, url="")


@pytest.mark.parametrize(
    "content",
    [
        _nested(30_000).encode(),
        b'{"protocol": "pushmail", "x": ' + _nested(30_000).encode() + b"}",
        b'{"protocol": "pushmail", "version": 1, "versions": [1], "domains": ["peer.test"], '
        b'"api": "http://peer.test:9000/federation/v1/", "keys": [], "limits": {"max_recipients": 1e999}}',
        b'{"protocol": "pushmail", "version": 1, "versions": [1], "domains": ["peer.test"], '
        b'"api": "http://peer.test:9000/federation/v1/", "keys": [], "limits": {"max_recipients": 0}}',
    ],
    ids=["deep-array", "deep-member", "limit-infinite", "limit-zero"],
)
def test_a_hostile_discovery_document_is_not_a_crash(peer: FakePeer, content: bytes) -> None:
    peer.on("GET", WELL_KNOWN_PATH, _document_answer(content))

    assert discovery.discover("peer.test") is None  # not a usable instance: treated as not speaking Pushmail


# --- fetched bodies that break the body schema: "malformed" -----------------------------------------


def _body_of(message: PeerMessage, **changes: Any) -> dict[str, Any]:
    body = json.loads(message.content())
    for key, value in changes.items():
        if value is ...:
            body.pop(key)
        else:
            body[key] = value
    return body


def _bytes(body: dict[str, Any]) -> bytes:
    return payloads.canonical_json(body)


MALFORMED_BODIES: list[tuple[str, Callable[[PeerMessage], bytes]]] = [
    ("text-number", lambda m: _bytes(_body_of(m, text=12345))),
    ("text-missing", lambda m: _bytes(_body_of(m, text=...))),
    ("text-nul", lambda m: _bytes(_body_of(m, text="a\x00b"))),
    ("text-surrogate", lambda m: _bytes(_body_of(m, text="TEXT")).replace(b'"TEXT"', b'"\\ud800"')),
    ("html-list", lambda m: _bytes(_body_of(m, html=["<p>", "hi"]))),
    ("html-object", lambda m: _bytes(_body_of(m, html={"a": 1}))),
    ("to-string", lambda m: _bytes(_body_of(m, to="alice@alpha.test"))),
    ("to-object", lambda m: _bytes(_body_of(m, to=[{}]))),
    ("to-not-an-address", lambda m: _bytes(_body_of(m, to=["alice@alpha.test\r\nBcc: x@y.test"]))),
    ("cc-number", lambda m: _bytes(_body_of(m, cc=[1]))),
    ("cc-null", lambda m: _bytes(_body_of(m, cc=None))),
    ("references-string", lambda m: _bytes(_body_of(m, references="<a@b>"))),
    ("references-nul", lambda m: _bytes(_body_of(m, references=["<a\x00@b>"]))),
    ("in_reply_to-list", lambda m: _bytes(_body_of(m, in_reply_to=["<a@b>"]))),
    ("version-string", lambda m: _bytes(_body_of(m, version="1"))),
    (
        "deep-member",
        lambda m: _bytes(_body_of(m)).replace(b'"version":1', b'"version":1,"x":' + _nested(DEEP).encode()),
    ),
    ("not-an-object", lambda m: b"[1, 2, 3]"),
    ("not-json", lambda m: b"<html>hello</html>"),
    ("not-utf8", lambda m: _bytes(_body_of(m, text="TEXT")).replace(b"TEXT", b"\xff\xfe")),
    ("huge-number", lambda m: _bytes(_body_of(m)).replace(b'"version":1', b'"version":1,"x":' + b"9" * 5000)),
    ("duplicate-text", lambda m: _bytes(_body_of(m)).replace(b'"version":1', b'"version":1,"text":"again"')),
]


def _signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _notify_with_body(peer: FakePeer, message: PeerMessage, content: bytes) -> InboxEntry:
    """The peer notified alice of ``content`` (its digest and size are honest) and serves it."""
    peer.bodies[str(message.global_id)] = content
    notification = dataclasses.replace(message.notification(), size=len(content), digest=payloads.digest(content))
    results = accept_notification(origin=peer.domain, notification=notification)
    assert [r.status for r in results] == ["accepted"]
    return InboxEntry.objects.select_related("remote").get(remote__global_id=message.global_id)


def _fetch(entry: InboxEntry) -> InboxEntry:
    open_entry(entry=entry)
    fetch_body(entry.remote_id)
    return InboxEntry.objects.select_related("remote").get(pk=entry.pk)


def _every_view_answers_without_a_server_error(client: Client, entry: InboxEntry, *, shown: str) -> None:
    page = client.get(reverse("webmail:entry", args=[entry.pk]))
    assert page.status_code == 200
    assert shown in page.content.decode()
    for name in ("webmail:entry-text", "webmail:entry-html", "webmail:entry-eml"):
        response = client.get(reverse(name, args=[entry.pk]))
        assert 400 <= response.status_code < 500, (name, response.status_code)
    for name in ("webmail:reply", "webmail:forward"):
        response = client.post(reverse(name, args=[entry.pk]), follow=True)
        assert response.status_code == 200, (name, response.status_code)
    body = client.get(reverse("webmail:entry-body", args=[entry.pk]))
    assert body.status_code == 200 and shown in body.content.decode()
    listing = client.get(reverse("webmail:folder", args=["inbox"]))
    assert listing.status_code == 200
    search = client.get(reverse("webmail:search"), {"q": "Hello"})
    assert search.status_code == 200


@pytest.mark.parametrize("make", [c[1] for c in MALFORMED_BODIES], ids=[c[0] for c in MALFORMED_BODIES])
def test_a_body_that_breaks_the_schema_is_refused_as_malformed_and_every_page_still_answers(
    peer: FakePeer, alice: User, make: Callable[[PeerMessage], bytes]
) -> None:
    message = PeerMessageFactory(text="What the body should say")
    content = make(message)
    entry = _notify_with_body(peer, message, content)
    # A reply to it, already here: the malformed one joins this conversation.
    reply = PeerMessageFactory(in_reply_to=message.message_id, references=[message.message_id], text="Reply text")
    reply_entry = _notify_with_body(peer, reply, reply.content())
    _fetch(reply_entry)

    entry = _fetch(entry)

    assert entry.state == EntryState.MALFORMED
    assert entry.remote.state == FetchState.MALFORMED
    assert entry.remote.content is None  # never stored as renderable
    assert entry.remote.last_error.startswith("body is malformed: ")
    assert entry.remote.next_attempt_at is None
    fetch_body(entry.remote_id)  # a malformed body is not fetched again
    assert len(peer.calls_to("GET", f"/federation/v1/messages/{message.global_id}/body")) == 1

    client = _signed_in(alice)
    _every_view_answers_without_a_server_error(client, entry, shown="Malformed")
    conversation = client.get(reverse("webmail:entry", args=[reply_entry.pk]))
    assert conversation.status_code == 200
    html = conversation.content.decode()
    assert "Reply text" in html and "Malformed" in html

    api = api_as(alice).get(f"/api/v1/inbox/{entry.pk}/")
    assert api.status_code == 200
    assert api.json()["state"] == "malformed" and api.json()["body"] is None
    assert api.json()["last_error"].startswith("body is malformed: ")
    assert api_as(alice).get("/api/v1/inbox/").status_code == 200


def test_the_reader_is_told_plainly_what_malformed_means(peer: FakePeer, alice: User) -> None:
    message = PeerMessageFactory()
    entry = _fetch(_notify_with_body(peer, message, _bytes(_body_of(message, to="alice@alpha.test"))))
    client = _signed_in(alice)

    page = client.get(reverse("webmail:entry", args=[entry.pk])).content.decode()
    listing = client.get(reverse("webmail:folder", args=["inbox"])).content.decode()
    reply = client.post(reverse("webmail:reply", args=[entry.pk]), follow=True).content.decode()

    assert "Malformed — the sender's server sent a body that is not a valid message; not shown" in page
    assert 'data-state="malformed"' in listing and ">Malformed<" in listing
    assert "was malformed" in reply


def test_a_body_stored_before_the_check_existed_is_never_rendered(alice: User) -> None:
    """A malformed body already stored as "fetched" (as earlier versions did): no page answers 500."""
    message = PeerMessageFactory(to=[alice.email])
    content = _bytes(_body_of(message, text=12345, html=["x"], to=[{}]))
    remote = RemoteMessageFactory(
        global_id=message.global_id, subject=message.subject, content=content, state=FetchState.FETCHED
    )
    entry = InboxEntryFactory(owner=alice, remote=remote, state=EntryState.FETCHED, opened_at=remote.date)
    client = _signed_in(alice)

    page = client.get(reverse("webmail:entry", args=[entry.pk]))
    assert page.status_code == 200 and "12345" not in page.content.decode()
    for name in ("webmail:entry-text", "webmail:entry-html", "webmail:entry-eml"):
        assert 400 <= client.get(reverse(name, args=[entry.pk])).status_code < 500
    for name in ("webmail:reply", "webmail:forward"):
        assert client.post(reverse(name, args=[entry.pk]), follow=True).status_code == 200
    api = api_as(alice).get(f"/api/v1/inbox/{entry.pk}/")
    assert api.status_code == 200 and api.json()["body"] is None


# --- what this instance sends: refused at the source, by name -----------------------------------------


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("subject", '"Hi \\u001b[31m"'),
        ("subject", '"Hi \\ud800"'),
        ("in_reply_to", '"<a\\u0000@b>"'),
        ("text", '"broken \\udc00 text"'),
        ("html", '"<p>\\ud83d</p>"'),
    ],
)
def test_the_api_refuses_to_send_what_recipients_would_refuse(alice: User, field: str, raw: str) -> None:
    fields = {"to": '["carol@peer.test"]', "subject": '"s"', "text": '"t"', field: raw}
    content = "{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}"

    response = api_as(alice).generic("POST", "/api/v1/messages/", content, content_type="application/json")

    assert response.status_code == 400, response.content
    assert field in response.json()["fields"]


@pytest.mark.parametrize(
    "answer",
    [
        (200, {"id": "x", "results": [{"address": "carol@peer.test", "status": "rejected", "reason": "no\x00pe"}]}),
        (200, {"id": "x", "results": [{"address": "carol@peer.test", "status": "rejected", "reason": ["x"]}]}),
        (200, {"id": "x", "results": [{"address": ["carol@peer.test"], "status": "accepted"}]}),
        (403, {"error": "blocked", "detail": "go \x00away \ud800"}),
    ],
    ids=["nul-reason", "list-reason", "list-address", "nul-detail"],
)
def test_a_peers_hostile_answer_is_recorded_without_control_characters(
    alice: User, peer: FakePeer, answer: tuple[int, dict[str, Any]]
) -> None:
    from outbox.models import Delivery, Recipient
    from outbox.services import deliver_notification, send_message

    status, data = answer
    content = json.dumps(data).encode()
    peer.on(
        "POST",
        NOTIFICATIONS,
        lambda call: http.Response(
            status=status, headers={"content-type": "application/json"}, content=content, url=""
        ),
    )
    message = send_message(sender=alice, to=["carol@peer.test"], subject="Hello", text="Hi")

    deliver_notification(Delivery.objects.get(message=message).pk)  # no database error, no crash

    recipient = Recipient.objects.get(message=message)
    assert recipient.status == "rejected"
    assert "\x00" not in recipient.reason and "\ud800" not in recipient.reason
    assert all("\x00" not in text for text in InboxEntry.objects.values_list("notice_text", flat=True))


def test_the_bodies_this_instance_serves_pass_the_body_check(alice: User) -> None:
    from pathlib import Path

    from outbox.services import canonical_content, send_message

    data = Path(__file__).resolve().parents[1] / "data"
    for name in ("body.json", "body_with_attachment.json"):
        payloads.check_body((data / name).read_bytes().strip())
    message = send_message(
        sender=alice,
        to=["Carol@Peer.Test", "dave@peer.test"],
        cc=["erin@other.test"],
        subject="Tabs\tand ünïcödé",
        text="Line one\r\nline two\tand a form feed \x0c",
        html="<p>Hi</p>",
    )
    body = payloads.check_body(canonical_content(message))
    assert body["to"] == ["carol@peer.test", "dave@peer.test"]
