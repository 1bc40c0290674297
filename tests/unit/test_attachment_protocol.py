"""docs/protocol.md §4.4, §5.7 and the worked example of §11.6: a message with an attachment.

Like test_protocol_doc.py, the example is checked twice: with raw Ed25519 and
hashlib only, and against the project's code, which must produce the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tests.unit.test_protocol_doc import (
    DATA,
    HttpHead,
    _django_request,
    _parse_signature_input,
    b64decode,
    build_signature_base,
    example_blocks,
    field_table,
    flatten,
    golden,
    pinned_clock,  # noqa: F401 - a fixture used below
)


@pytest.fixture(scope="module")
def ex() -> dict[str, str]:
    return example_blocks()


def file_bytes(ex: dict[str, str]) -> bytes:
    # The block is the file without its final LF (blocks have no trailing newline).
    return (ex["attachment-file"] + "\n").encode("utf-8")


# --- with raw Ed25519 and hashlib only ----------------------------------------------------------


def test_the_attachment_digest_and_content_digest_are_over_the_file_bytes(ex: dict[str, str]) -> None:
    data = file_bytes(ex)
    assert len(data) == 50
    assert ex["attachment-digest"] == "sha-256:" + hashlib.sha256(data).hexdigest()
    assert (
        ex["attachment-content-digest"] == "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"
    )


def test_the_body_carries_the_manifest_and_its_digest_pins_it(ex: dict[str, str]) -> None:
    raw = ex["attachment-body"].encode("utf-8")
    body = json.loads(raw)
    assert ex["attachment-body-digest"] == "sha-256:" + hashlib.sha256(raw).hexdigest()
    assert json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() == raw
    assert body["attachments"] == [
        {"digest": ex["attachment-digest"], "name": "Q4 plan.txt", "size": 50, "type": "text/plain"}
    ]
    # Any other file bytes give another manifest digest, so another body digest.
    swapped = raw.replace(ex["attachment-digest"].encode(), b"sha-256:" + b"0" * 64)
    assert hashlib.sha256(swapped).hexdigest() != hashlib.sha256(raw).hexdigest()


def test_the_notification_carries_the_same_manifest_and_the_body_digest(ex: dict[str, str]) -> None:
    body = json.loads(ex["attachment-body"])
    notification = json.loads(ex["attachment-notification-body"])
    assert notification["attachments"] == body["attachments"]
    assert notification["digest"] == ex["attachment-body-digest"]
    assert notification["size"] == len(ex["attachment-body"].encode("utf-8"))


def test_the_fetch_is_signed_like_the_body_fetch_and_verifies(ex: dict[str, str]) -> None:
    head = HttpHead(ex["attachment-fetch-request"])
    notification = json.loads(ex["attachment-notification-body"])
    assert head.method == "GET" and "content-digest" not in head.headers
    assert head.path == f"/federation/v1/messages/{notification['id']}/attachments/{ex['attachment-digest']}"
    assert head.header("Accept") == "application/octet-stream"
    label, components, _, params = _parse_signature_input(head.header("Signature-Input"))
    assert (label, components) == ("pm", ["@method", "@authority", "@path", "@query"])
    assert params["keyid"] == ex["beta-key-id"] and params["tag"] == "pushmail"
    assert build_signature_base(head) == ex["attachment-fetch-signature-base"]

    signature = b64decode(ex["attachment-fetch-signature"])
    assert head.header("Signature") == f"pm=:{ex['attachment-fetch-signature']}:"
    Ed25519PublicKey.from_public_bytes(b64decode(ex["beta-public-key"])).verify(
        signature, ex["attachment-fetch-signature-base"].encode("ascii")
    )
    private = Ed25519PrivateKey.from_private_bytes(b64decode(ex["beta-seed"]))
    assert private.sign(ex["attachment-fetch-signature-base"].encode("ascii")) == signature


# --- golden payloads and tables -------------------------------------------------------------------


def test_golden_payloads_are_the_example_and_have_the_documented_fields(ex: dict[str, str]) -> None:
    from federation import payloads

    raw = (DATA / "body_with_attachment.json").read_bytes()
    assert raw == ex["attachment-body"].encode("utf-8")
    body = payloads.parse_body(raw)
    assert set(body) == set(field_table("body")) | {"attachments"}
    assert {key for entry in body["attachments"] for key in entry} == set(field_table("manifest"))

    data = golden("notification_with_attachment.json")
    assert data == json.loads(ex["attachment-notification-body"])
    parsed = payloads.parse_notification(data, max_recipients=1000)
    assert [a.to_json() for a in parsed.attachments] == data["attachments"]
    assert flatten(data) == set(field_table("notification")) | {
        "attachments",
        *(f"attachments[].{name}" for name in field_table("manifest")),
    }


def test_golden_bodies_without_attachments_have_no_attachments_member() -> None:
    assert "attachments" not in golden("notification.json")
    assert b"attachments" not in (DATA / "body.json").read_bytes()


# --- the project's own code ---------------------------------------------------------------------------


def test_project_builds_the_same_body_and_notification(ex: dict[str, str]) -> None:
    from federation import payloads

    body = json.loads(ex["attachment-body"])
    fields = {
        "global_id": uuid.UUID(body["id"]),
        "message_id": body["message_id"],
        "sender": body["from"],
        "to": body["to"],
        "cc": body["cc"],
        "subject": body["subject"],
        "date": datetime.strptime(body["date"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC),
        "text": body["text"],
        "html": body["html"],
        "in_reply_to": body["in_reply_to"],
        "references": body["references"],
    }
    content = payloads.canonical_body(**fields, attachments=body["attachments"])
    assert content == ex["attachment-body"].encode("utf-8")
    assert payloads.digest(file_bytes(ex)) == ex["attachment-digest"]

    wire = ex["attachment-notification-body"].encode()
    parsed = payloads.parse_notification(json.loads(wire), max_recipients=1000)
    assert json.dumps(parsed.to_json(), separators=(",", ":")).encode() == wire


def test_project_signer_produces_the_documented_fetch_headers(ex: dict[str, str]) -> None:
    from federation.signatures import sign

    head = HttpHead(ex["attachment-fetch-request"])
    _, _, _, params = _parse_signature_input(head.header("Signature-Input"))
    headers = sign(
        method="GET",
        url=f"https://{head.header('Host')}{head.target}",
        headers={"Accept": "application/octet-stream"},
        body=None,
        key_id=str(params["keyid"]),
        private_key=Ed25519PrivateKey.from_private_bytes(b64decode(ex["beta-seed"])),
        created=datetime.fromtimestamp(int(params["created"]), UTC),
        nonce=str(params["nonce"]),
    )
    assert headers["Signature-Input"] == head.header("Signature-Input")
    assert headers["Signature"] == head.header("Signature")


@pytest.mark.django_db
def test_project_verifier_accepts_the_example_fetch(
    ex: dict[str, str],
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    pinned_clock: Any,  # noqa: F811 - the fixture imported above
) -> None:
    from federation import discovery, signatures

    settings.ALLOWED_HOSTS = ["mail.alpha.example"]
    head = HttpHead(ex["attachment-fetch-request"])
    _, _, _, params = _parse_signature_input(head.header("Signature-Input"))
    instance = discovery.Instance(
        domain="beta.example",
        api_base="https://mail.beta.example/federation/v1/",
        keys={str(params["keyid"]): ex["beta-public-key"]},
    )
    monkeypatch.setattr(discovery, "lookup", lambda domain, refresh=False, budget=0, key_id=None: instance)
    pinned_clock(datetime.fromtimestamp(int(params["created"]), UTC) + timedelta(seconds=30))

    verified = signatures.verify_request(_django_request(head, None), b"")

    assert verified.domain == "beta.example"


def test_the_doc_names_the_endpoint_and_its_answers() -> None:
    from tests.unit.test_protocol_doc import _doc

    doc = _doc()
    assert "### 5.7 `GET {api}messages/{id}/attachments/{digest}`" in doc
    for phrase in [
        "Content-Digest: sha-256=:BASE64:",
        "`404 not_found`",
        "`410 gone`",
        "X-Content-Type-Options: nosniff",
    ]:
        assert phrase in doc
