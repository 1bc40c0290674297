"""Encrypted mail on the server side: the wire rules of docs/protocol.md §4.6, the key lookup Compose uses,
and sending what the browser encrypted (only ciphertext is taken; plaintext is refused by name)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from federation import payloads
from mailbox import search
from mailbox.models import InboxEntry
from outbox.bodies import canonical_content
from outbox.models import Message
from tests.conftest import LOCAL
from tests.factories import MailboxFactory
from tests.unit.test_encryption_keys import GnuPG

pytestmark = pytest.mark.skipif(shutil.which("gpg") is None, reason="needs GnuPG (Debian's gnupg)")

PASSPHRASE = "correct horse battery staple"  # noqa: S105 - test data
KEYS = "/compose/keys/"
SEND = "/compose/encrypted/send/"


def _body(**changes: Any) -> bytes:
    fields: dict[str, Any] = {
        "global_id": "0b9c3c4e-5a55-4c8b-9f1e-2d3b4c5d6e7f",
        "message_id": "<0b9c3c4e-5a55-4c8b-9f1e-2d3b4c5d6e7f@alpha.test>",
        "sender": "ann@alpha.test",
        "to": ["bob@beta.test"],
        "cc": [],
        "subject": "...",
        "date": payloads.parse_time("2026-12-04T10:00:00Z", "date"),
        "text": "-----BEGIN PGP MESSAGE-----\n\nwV4D\n=abcd\n-----END PGP MESSAGE-----\n",
        "html": None,
        "in_reply_to": "",
        "references": [],
        "encrypted": True,
    }
    fields.update(changes)
    return payloads.canonical_body(**fields)


def test_an_encrypted_body_carries_the_member_and_keeps_the_rules() -> None:
    body = payloads.check_body(_body())
    assert body["encrypted"] is True and body["subject"] == "..."
    # Not encrypted: no member at all, so every other body keeps its bytes.
    assert b'"encrypted"' not in _body(encrypted=False, subject="Hello", text="plain")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"subject": "The real subject"}, "subject"),
        ({"text": "the plaintext"}, "text"),
        ({"html": "<p>x</p>"}, "html"),
    ],
)
def test_an_encrypted_body_that_breaks_a_rule_is_malformed(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(payloads.PayloadError) as caught:
        payloads.check_body(_body(**changes))
    assert caught.value.field == field


def test_a_body_whose_encrypted_differs_from_its_notification_is_told_apart() -> None:
    body = payloads.check_body(_body())
    assert payloads.body_mismatch(body, {"encrypted": False}) == "encrypted"
    assert payloads.body_mismatch(body, {"encrypted": True}) is None


def _notification(**changes: Any) -> dict[str, Any]:
    data = {
        "type": "notification",
        "version": 1,
        "id": "0b9c3c4e-5a55-4c8b-9f1e-2d3b4c5d6e7f",
        "message_id": "<0b9c3c4e-5a55-4c8b-9f1e-2d3b4c5d6e7f@alpha.test>",
        "sender": "ann@alpha.test",
        "recipients": ["bob@beta.test"],
        "subject": "...",
        "date": "2026-12-04T10:00:00Z",
        "size": 10,
        "digest": "sha-256:" + "0" * 64,
        "expires": "2026-12-30T10:00:00Z",
        "encrypted": True,
    }
    data.update(changes)
    return data


def test_a_notification_says_encrypted_and_carries_only_the_placeholder() -> None:
    parsed = payloads.parse_notification(max_recipients=10, data=_notification())
    assert parsed.encrypted is True
    assert parsed.to_json()["encrypted"] is True
    assert (
        "encrypted" not in payloads.parse_notification(max_recipients=10, data=_notification(encrypted=False)).to_json()
    )
    with pytest.raises(payloads.PayloadError) as caught:
        payloads.parse_notification(max_recipients=10, data=_notification(subject="Secret plans"))
    assert caught.value.field == "subject"
    with pytest.raises(payloads.PayloadError) as caught:
        payloads.parse_notification(max_recipients=10, data=_notification(encrypted="yes"))
    assert caught.value.field == "encrypted"


# --- Through the web: the key lookup and the send --------------------------------------------------------


@pytest.fixture(scope="module")
def gnupg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GnuPG]:
    """Keys for ann and bob, made once with GnuPG; each test uploads them as Settings → Encryption does."""
    home = GnuPG(tmp_path_factory.mktemp("gnupg") / "home")
    for name in ("ann", "bob"):
        home.make_key(f"<{name}@{LOCAL}>", passphrase=PASSPHRASE)
    yield home
    home.close()


@pytest.fixture
def people(local_domain: Any, gnupg: GnuPG, settings: Any) -> dict[str, Any]:
    settings.ALLOWED_HOSTS = ["*"]
    ann = MailboxFactory(domain=local_domain, local_part="ann")
    bob = MailboxFactory(domain=local_domain, local_part="bob")
    MailboxFactory(domain=local_domain, local_part="cid")  # no key
    for user in (bob, ann):
        client = Client()
        client.force_login(user)
        locked = gnupg.export_secret(user.email, passphrase=PASSPHRASE)
        assert client.post("/settings/encryption/key/", {"secret_key": locked}).status_code == 302
    client = Client()
    client.force_login(ann)
    return {"ann": ann, "bob": bob, "client": client}


def test_compose_learns_who_has_a_key(people: dict[str, Any]) -> None:
    ann, bob = people["ann"], people["bob"]
    cid = f"cid@{ann.domain.name}"
    answer = people["client"].get(KEYS, {"addresses": f"{bob.email}, {cid}, not an address"})
    assert answer.status_code == 200
    data = answer.json()
    assert data["sender"]["status"] == "found"
    by_address = {k["address"]: k for k in data["keys"]}
    assert by_address[bob.email]["status"] == "found"
    assert by_address[bob.email]["source"] == "local"
    assert by_address[bob.email]["key"].startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert len(by_address[bob.email]["fingerprint"]) == 40
    assert by_address[cid]["status"] == "none"
    assert by_address["not an address"]["status"] == "invalid"


def test_the_lookup_needs_a_login(people: dict[str, Any]) -> None:
    assert Client().get(KEYS, {"addresses": people["bob"].email}).status_code == 302


def _encrypted(gnupg: GnuPG, to: str, data: bytes, *, armor: bool) -> bytes:
    args = ["--trust-model", "always", "--encrypt", "--recipient", to]
    return gnupg.run(*(["--armor"] if armor else []), *args, data=data)


def test_only_ciphertext_is_sent_and_the_recipient_gets_it(people: dict[str, Any], gnupg: GnuPG) -> None:
    bob = people["bob"]
    armored = _encrypted(gnupg, bob.email, b"Subject: secret\r\n\r\nhello", armor=True).decode()
    blob = _encrypted(gnupg, bob.email, b"file bytes", armor=False)
    answer = people["client"].post(
        SEND,
        {"to": bob.email, "message": armored, "files": [SimpleUploadedFile("x.pgp", blob)]},
    )
    assert answer.status_code == 201, answer.content
    message = Message.objects.get()
    assert message.encrypted and message.subject == "..." and message.html is None
    assert message.text.strip() == armored.strip()
    assert list(message.attachments.values_list("name", "content_type")) == [
        ("encrypted-1.pgp", "application/octet-stream")
    ]
    assert answer.json()["sent"] == f"/mail/sent/{message.pk}/"
    body = json.loads(canonical_content(message))
    assert body["encrypted"] is True and body["subject"] == "..."
    entry = InboxEntry.objects.get(owner=bob)
    assert entry.subject == "..."


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"message": "Dear Bob, the plaintext"}, "not one ASCII-armored OpenPGP message"),
        ({"files": "plain"}, "file 1 is not an encrypted OpenPGP message"),
        ({"to": "not an address"}, "not an address"),
    ],
)
def test_anything_but_ciphertext_is_refused_by_name(
    people: dict[str, Any], gnupg: GnuPG, fields: dict[str, Any], problem: str
) -> None:
    bob = people["bob"]
    data: dict[str, Any] = {
        "to": bob.email,
        "message": _encrypted(gnupg, bob.email, b"hello", armor=True).decode(),
    }
    if fields.get("files") == "plain":
        data["files"] = [SimpleUploadedFile("plans.txt", b"the plaintext of a file")]
    else:
        data.update(fields)
    answer = people["client"].post(SEND, data)
    assert answer.status_code == 400
    assert problem in " ".join(answer.json()["problems"])
    assert not Message.objects.exists()


def test_search_does_not_match_an_encrypted_body() -> None:
    assert search.body_text({"text": "-----BEGIN PGP MESSAGE-----", "encrypted": True}) == ""
    assert search.body_text({"text": "plain words"}) == "plain words"
