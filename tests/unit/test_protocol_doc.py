"""docs/protocol.md is a specification another team builds from: check it.

Three groups of tests:

1. The worked example (§11), checked independently of ``federation/``: only
   ``cryptography``'s raw Ed25519, ``hashlib``, ``base64`` and ``json``. The
   signature base is rebuilt by hand from the example's request head per RFC 9421.
2. The project's own code, given the example's inputs, produces byte-identical
   output, and its verifier accepts the example request.
3. The golden payloads in tests/data/ parse with the project's parsers and carry
   exactly the fields the document's tables list; every error code the code can
   answer with is documented.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import types
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"
DATA = ROOT / "tests" / "data"

EXAMPLE_BLOCKS = {
    "alpha-seed",
    "alpha-public-key",
    "alpha-key-id",
    "beta-seed",
    "beta-public-key",
    "beta-key-id",
    "canonical-body",
    "canonical-digest",
    "notification-request",
    "notification-body",
    "notification-signature-base",
    "notification-signature",
    "fetch-request",
    "fetch-signature-base",
    "fetch-signature",
    # §11.6, checked in test_attachment_protocol.py
    "attachment-file",
    "attachment-digest",
    "attachment-body",
    "attachment-body-digest",
    "attachment-notification-body",
    "attachment-fetch-request",
    "attachment-fetch-signature-base",
    "attachment-fetch-signature",
    "attachment-content-digest",
    # §11.7, checked in test_spam_feedback.py
    "report-request",
    "report-body",
    "report-signature-base",
    "report-signature",
    # §11.8
    "batch-request",
    "batch-body",
    "batch-signature-base",
    "batch-signature",
    # §14.5, checked in test_encryption_protocol.py
    "keys-document",
    "keys-signed-bytes",
}


# --- reading the document -------------------------------------------------------------------


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def example_blocks() -> dict[str, str]:
    """``<!-- pushmail-example: NAME -->`` followed by a fenced block: NAME -> its exact content."""
    found = re.findall(r"<!-- pushmail-example: (\S+) -->\n```[^\n]*\n(.*?)\n```", _doc(), re.S)
    blocks: dict[str, str] = {}
    for name, text in found:
        assert name not in blocks, f"example block {name} appears twice"
        blocks[name] = text
    return blocks


def field_table(name: str) -> list[str]:
    """The first-column names of the table after ``<!-- pushmail-fields: NAME -->``."""
    doc = _doc()
    marker = f"<!-- pushmail-fields: {name} -->\n"
    assert doc.count(marker) == 1, f"no single field table marked {name!r}"
    rows = []
    for line in doc.split(marker, 1)[1].splitlines():
        if not line.startswith("|"):
            break
        rows.append(line)
    names = []
    for row in rows[2:]:  # header and separator first
        cell = row.split("|")[1].strip()
        match = re.fullmatch(r"`([^`]+)`", cell)
        assert match, f"field table {name}: first cell {cell!r} is not a `field`"
        names.append(match.group(1))
    assert names, f"field table {name} is empty"
    return names


def documented_error_codes() -> set[str]:
    """Every `code` in the first two columns of the error tables of §3.7 and §5.2."""
    codes: set[str] = set()
    for line in _doc().splitlines():
        cells = [c.strip() for c in line.split("|")[1:3]] if line.startswith("|") else []
        for cell in cells:
            codes.update(re.findall(r"^`([a-z_]+)`$", cell))
    return codes


def flatten(data: Any, prefix: str = "") -> set[str]:
    """Field paths as the tables write them: ``limits.max_recipients``, ``keys[].id``."""
    paths: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            path = prefix + key
            paths.add(path)
            if isinstance(value, dict):
                paths |= flatten(value, path + ".")
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, dict):
                        paths |= flatten(item, path + "[].")
    return paths


def golden(name: str) -> Any:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


class HttpHead:
    """An HTTP/1.1 request head as the document prints it."""

    def __init__(self, text: str) -> None:
        request_line, *header_lines = text.split("\n")
        self.method, self.target, version = request_line.split(" ")
        assert version == "HTTP/1.1"
        self.path, _, self.query = self.target.partition("?")
        self.headers: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(": ")
            assert sep, f"malformed header line {line!r}"
            self.headers[name.lower()] = value

    def header(self, name: str) -> str:
        return self.headers[name.lower()]


def b64decode(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


# --- 1. the worked example, with raw Ed25519 and hashlib only ---------------------------------


@pytest.fixture(scope="module")
def ex() -> dict[str, str]:
    return example_blocks()


def test_the_document_has_every_example_block(ex: dict[str, str]) -> None:
    assert set(ex) == EXAMPLE_BLOCKS


@pytest.mark.parametrize("who", ["alpha", "beta"])
def test_published_public_key_belongs_to_the_seed(ex: dict[str, str], who: str) -> None:
    seed = b64decode(ex[f"{who}-seed"])
    assert len(seed) == 32
    derived = (
        Ed25519PrivateKey.from_private_bytes(seed)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    assert base64.b64encode(derived).decode() == ex[f"{who}-public-key"]


def test_example_keys_are_the_rfc_8032_test_vectors(ex: dict[str, str]) -> None:
    # RFC 8032 §7.1 TEST 1 and TEST 2: anyone can check these without our code.
    assert b64decode(ex["alpha-seed"]).hex() == "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
    assert b64decode(ex["alpha-public-key"]).hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert b64decode(ex["beta-seed"]).hex() == "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb"
    assert b64decode(ex["beta-public-key"]).hex() == "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"


def test_content_digest_and_length_match_the_example_body(ex: dict[str, str]) -> None:
    head = HttpHead(ex["notification-request"])
    body = ex["notification-body"].encode("utf-8")

    expected = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    assert head.header("Content-Digest") == expected
    assert head.header("Content-Length") == str(len(body))
    assert head.header("Content-Type") == "application/json"


def _parse_signature_input(value: str) -> tuple[str, list[str], str, dict[str, str | int]]:
    """``label=("c1" "c2");p1=v1;...`` -> label, component ids, the raw inner list, parameters."""
    match = re.fullmatch(r'([a-z][a-z0-9_.*-]*)=(\(((?:"[^"]+" ?)*)\)((?:;[a-z]+=(?:"[^"]*"|-?\d+))*))', value)
    assert match, f"Signature-Input {value!r} is not one labelled inner list"
    label, inner, components, params = match.groups()
    names = re.findall(r'"([^"]+)"', components)
    parsed: dict[str, str | int] = {}
    for key, quoted, number in re.findall(r';([a-z]+)=(?:"([^"]*)"|(-?\d+))', params):
        parsed[key] = int(number) if number else quoted
    return label, names, inner, parsed


def _authority(host: str) -> str:
    """RFC 9421 §2.2.3: lowercase host, default port (https here) left out."""
    host = host.lower()
    return host[: -len(":443")] if host.endswith(":443") else host


def build_signature_base(head: HttpHead) -> str:
    """RFC 9421 §2.5, by hand, from the request head alone."""
    label, components, inner, _ = _parse_signature_input(head.header("Signature-Input"))
    assert label == "pm"
    derived = {
        "@method": head.method.upper(),
        "@authority": _authority(head.header("Host")),
        "@path": head.path or "/",
        "@query": "?" + head.query,
    }
    lines = []
    for name in components:
        value = derived[name] if name.startswith("@") else head.header(name)
        lines.append(f'"{name}": {value}')
    lines.append(f'"@signature-params": {inner}')
    return "\n".join(lines)


@pytest.mark.parametrize("which", ["notification", "fetch", "batch"])
def test_signature_base_rebuilt_by_hand_matches_the_document(ex: dict[str, str], which: str) -> None:
    head = HttpHead(ex[f"{which}-request"])
    assert build_signature_base(head) == ex[f"{which}-signature-base"]


@pytest.mark.parametrize(("which", "signer"), [("notification", "alpha"), ("fetch", "beta"), ("batch", "alpha")])
def test_example_signature_verifies_with_raw_ed25519(ex: dict[str, str], which: str, signer: str) -> None:
    head = HttpHead(ex[f"{which}-request"])
    signature = b64decode(ex[f"{which}-signature"])
    assert head.header("Signature") == f"pm=:{ex[f'{which}-signature']}:"
    assert len(signature) == 64
    public = Ed25519PublicKey.from_public_bytes(b64decode(ex[f"{signer}-public-key"]))

    public.verify(signature, build_signature_base(head).encode("ascii"))

    # Ed25519 is deterministic: the seed reproduces the very same bytes.
    private = Ed25519PrivateKey.from_private_bytes(b64decode(ex[f"{signer}-seed"]))
    assert private.sign(ex[f"{which}-signature-base"].encode("ascii")) == signature
    # And the check is real: one changed byte of the base does not verify.
    tampered = build_signature_base(head).replace(head.path, head.path + "x")
    with pytest.raises(InvalidSignature):
        public.verify(signature, tampered.encode("ascii"))


def test_signature_parameters_follow_section_3(ex: dict[str, str]) -> None:
    for which, signer, covered in [
        ("notification", "alpha", ["@method", "@authority", "@path", "@query", "content-digest"]),
        ("fetch", "beta", ["@method", "@authority", "@path", "@query"]),
    ]:
        head = HttpHead(ex[f"{which}-request"])
        label, components, inner, params = _parse_signature_input(head.header("Signature-Input"))
        assert (label, components) == ("pm", covered)
        assert list(params) == ["created", "keyid", "alg", "nonce", "tag"], inner
        assert params["keyid"] == ex[f"{signer}-key-id"]
        assert params["alg"] == "ed25519" and params["tag"] == "pushmail"
        assert isinstance(params["created"], int) and params["nonce"]
        # The signing domain is the key id up to '#'.
        assert str(params["keyid"]).split("#", 1)[0] == f"{signer}.example"
    fetch = HttpHead(ex["fetch-request"])
    assert "content-digest" not in fetch.headers  # a GET has no body and no digest


def test_canonical_body_digest_and_size(ex: dict[str, str]) -> None:
    body = ex["canonical-body"].encode("utf-8")
    digest = "sha-256:" + hashlib.sha256(body).hexdigest()
    notification = json.loads(ex["notification-body"])

    assert ex["canonical-digest"] == digest
    assert notification["digest"] == digest
    assert notification["size"] == len(body)


def test_canonical_body_follows_the_serialization_rules(ex: dict[str, str]) -> None:
    text = ex["canonical-body"]
    body = json.loads(text)
    # Sorted keys, no whitespace, UTF-8 without ASCII escapes: re-serializing gives the same bytes.
    again = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert again == text
    assert "\\u00" not in text and "ü" in text  # non-ASCII is written as is
    assert list(body) == sorted(body)
    assert set(body) == set(field_table("body"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["date"])


def test_bcc_is_only_in_its_own_domains_notification(ex: dict[str, str]) -> None:
    body = json.loads(ex["canonical-body"])
    notification = json.loads(ex["notification-body"])

    assert "dave@beta.example" in notification["recipients"]
    assert "dave@beta.example" not in ex["canonical-body"]
    assert "bcc" not in body
    # The notification lists only beta.example's recipients; the body shows everyone's To and Cc.
    assert all(r.endswith("@beta.example") for r in notification["recipients"])
    assert "gus@gamma.example" in body["to"]


def test_notification_agrees_with_the_body_it_announces(ex: dict[str, str]) -> None:
    body = json.loads(ex["canonical-body"])
    notification = json.loads(ex["notification-body"])
    for note_field, body_field in [
        ("id", "id"),
        ("message_id", "message_id"),
        ("sender", "from"),
        ("subject", "subject"),
        ("date", "date"),
        ("in_reply_to", "in_reply_to"),
        ("references", "references"),
    ]:
        assert notification[note_field] == body[body_field], note_field
    fetch = HttpHead(ex["fetch-request"])
    # The fetch URL is the origin's API base plus the global id; no URL came from the notification.
    assert fetch.path == f"/federation/v1/messages/{notification['id']}/body"
    assert not any("http" in str(v) for v in notification.values())


# --- 2. the project's own code reproduces the example ---------------------------------------


def _example_request(ex: dict[str, str], which: str) -> tuple[HttpHead, str, bytes | None, dict[str, Any]]:
    head = HttpHead(ex[f"{which}-request"])
    url = f"https://{head.header('Host')}{head.target}"
    body = ex[f"{which}-body"].encode() if which in ("notification", "batch") else None
    _, _, _, params = _parse_signature_input(head.header("Signature-Input"))
    return head, url, body, params


@pytest.mark.parametrize(("which", "signer"), [("notification", "alpha"), ("fetch", "beta"), ("batch", "alpha")])
def test_project_signer_produces_the_documented_headers(ex: dict[str, str], which: str, signer: str) -> None:
    from federation.signatures import sign

    head, url, body, params = _example_request(ex, which)
    unsigned = {"Accept": "application/json"} | ({"Content-Type": "application/json"} if body else {})

    headers = sign(
        method=head.method,
        url=url,
        headers=unsigned,
        body=body,
        key_id=str(params["keyid"]),
        private_key=Ed25519PrivateKey.from_private_bytes(b64decode(ex[f"{signer}-seed"])),
        created=datetime.fromtimestamp(int(params["created"]), UTC),
        nonce=str(params["nonce"]),
    )

    for name in ["Signature-Input", "Signature"] + (["Content-Digest"] if body else []):
        assert headers[name] == head.header(name), name
    assert ("Content-Digest" in headers) == (body is not None)


def _example_message_fields(ex: dict[str, str]) -> dict[str, Any]:
    body = json.loads(ex["canonical-body"])
    return {
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


def test_project_canonical_body_and_digest_are_byte_identical(ex: dict[str, str]) -> None:
    from federation import payloads

    content = payloads.canonical_body(**_example_message_fields(ex))

    assert content == ex["canonical-body"].encode("utf-8")
    assert payloads.digest(content) == ex["canonical-digest"]


def test_project_notification_serializes_to_the_documented_bytes(ex: dict[str, str]) -> None:
    from federation import payloads

    wire = ex["notification-body"].encode()
    parsed = payloads.parse_notification(json.loads(wire), max_recipients=1000)

    # federation.client serializes request payloads this way before signing them.
    assert json.dumps(parsed.to_json(), separators=(",", ":")).encode() == wire


@pytest.fixture
def pinned_clock(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Set the verifier's clock (ours and the signing library's) to a chosen time."""
    import http_message_signatures.signatures as library

    from federation import signatures

    state: dict[str, datetime] = {}

    class Clock(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return state["now"] if tz is None else state["now"].astimezone(tz)

    monkeypatch.setattr(signatures, "datetime", Clock)
    monkeypatch.setattr(library, "datetime", types.SimpleNamespace(datetime=Clock, timezone=library.datetime.timezone))

    def set_to(value: datetime) -> None:
        state["now"] = value

    return set_to


def _django_request(head: HttpHead, body: bytes | None) -> Any:
    from django.test import RequestFactory

    meta = {"HTTP_" + name.upper().replace("-", "_"): value for name, value in head.headers.items()}
    for name in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
        meta.pop(name, None)
    if body is None:
        return RequestFactory().get(head.target, **meta)
    return RequestFactory().post(head.target, data=body, content_type=head.header("Content-Type"), **meta)


@pytest.mark.django_db
@pytest.mark.parametrize(("which", "signer"), [("notification", "alpha"), ("fetch", "beta"), ("batch", "alpha")])
def test_project_verifier_accepts_the_example_and_then_refuses_its_replay(
    ex: dict[str, str], which: str, signer: str, settings: Any, monkeypatch: pytest.MonkeyPatch, pinned_clock: Any
) -> None:
    from federation import discovery, signatures

    settings.ALLOWED_HOSTS = ["mail.alpha.example", "mail.beta.example"]
    head, _, body, params = _example_request(ex, which)
    key_id = str(params["keyid"])
    instance = discovery.Instance(
        domain=f"{signer}.example",
        api_base=f"https://mail.{signer}.example/federation/v1/",
        keys={key_id: ex[f"{signer}-public-key"]},
    )
    monkeypatch.setattr(discovery, "lookup", lambda domain, refresh=False, budget=0, key_id=None: instance)
    pinned_clock(datetime.fromtimestamp(int(params["created"]), UTC) + timedelta(seconds=30))

    verified = signatures.verify_request(_django_request(head, body), body or b"")
    assert (verified.domain, verified.key_id) == (f"{signer}.example", key_id)

    with pytest.raises(signatures.SignatureRejected) as replay:
        signatures.verify_request(_django_request(head, body), body or b"")
    assert replay.value.code == "replayed"


@pytest.mark.django_db
def test_project_verifier_refuses_the_example_outside_its_window_or_with_another_body(
    ex: dict[str, str], settings: Any, monkeypatch: pytest.MonkeyPatch, pinned_clock: Any
) -> None:
    from federation import discovery, signatures

    settings.ALLOWED_HOSTS = ["mail.beta.example"]
    head, _, body, params = _example_request(ex, "notification")
    assert body is not None
    instance = discovery.Instance(
        domain="alpha.example", api_base="https://x/", keys={str(params["keyid"]): ex["alpha-public-key"]}
    )
    monkeypatch.setattr(discovery, "lookup", lambda domain, refresh=False, budget=0, key_id=None: instance)
    created = datetime.fromtimestamp(int(params["created"]), UTC)

    for now in (created + timedelta(minutes=5, seconds=1), created - timedelta(minutes=5, seconds=1)):
        pinned_clock(now)
        with pytest.raises(signatures.SignatureRejected) as off:
            signatures.verify_request(_django_request(head, body), body)
        assert off.value.code == "signature_expired", now

    pinned_clock(created)
    other = body.replace(b"bob@", b"eve@")
    with pytest.raises(signatures.SignatureRejected) as changed:
        signatures.verify_request(_django_request(head, other), other)
    assert changed.value.code == "digest_mismatch"


# --- 3. golden payloads and the document's tables ----------------------------------------------


def test_golden_body_is_the_example_body_byte_for_byte(ex: dict[str, str]) -> None:
    from federation import payloads

    raw = (DATA / "body.json").read_bytes()
    assert raw == ex["canonical-body"].encode("utf-8")
    assert payloads.digest(raw) == ex["canonical-digest"]
    assert set(payloads.parse_body(raw)) == set(field_table("body"))


def test_golden_notification_parses_and_has_the_documented_fields(ex: dict[str, str]) -> None:
    from federation import payloads

    data = golden("notification.json")
    assert data == json.loads(ex["notification-body"])
    parsed = payloads.parse_notification(data, max_recipients=1000)
    assert str(parsed.global_id) == data["id"]
    assert parsed.recipients == data["recipients"]
    assert parsed.digest == ex["canonical-digest"]
    assert flatten(data) == set(field_table("notification"))


def test_golden_notification_response_has_the_documented_fields() -> None:
    data = golden("notification_response.json")
    assert flatten(data) == set(field_table("notification-response"))
    assert {r["status"] for r in data["results"]} <= {"accepted", "rejected"}
    assert all(("reason" in r) == (r["status"] == "rejected") for r in data["results"])


def test_batch_example_holds_the_two_notifications_as_sent_alone(ex: dict[str, str]) -> None:
    # Checkable with hashlib alone: the digest and length of the batch body, and each member's bytes.
    head = HttpHead(ex["batch-request"])
    body = ex["batch-body"].encode("ascii")
    assert head.header("Content-Digest") == "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    assert head.header("Content-Length") == str(len(body))
    assert head.path == "/federation/v1/notifications/batch"
    members = json.loads(body)["notifications"]
    assert [json.dumps(m, separators=(",", ":")) for m in members] == [
        ex["notification-body"],
        ex["attachment-notification-body"],
    ]


def test_golden_batch_parses_and_has_the_documented_fields(ex: dict[str, str]) -> None:
    from federation import payloads

    data = golden("notification_batch.json")
    assert data == json.loads(ex["batch-body"])
    items = payloads.parse_notification_batch(data, max_notifications=100, max_recipients=1000)
    assert [str(n.global_id) for n in items if isinstance(n, payloads.Notification)] == [
        m["id"] for m in data["notifications"]
    ]
    assert {k for k in flatten(data) if not k.startswith("notifications[].")} == set(field_table("notification-batch"))
    answers = golden("notification_batch_response.json")
    documented = set(field_table("notification-batch-response"))
    assert flatten(answers) - {f"answers[].results[].{k}" for k in ("address", "status", "reason")} <= documented
    assert answers["answers"][0]["results"] == golden("notification_response.json")["results"]


def test_golden_withdrawal_parses_and_has_the_documented_fields() -> None:
    from federation import payloads

    data = golden("withdrawal.json")
    parsed = payloads.parse_withdrawal(data)
    assert payloads.Withdrawal(global_id=parsed.global_id, sender=parsed.sender).to_json() == data
    assert flatten(data) == set(field_table("withdrawal"))
    assert flatten(golden("withdrawal_response.json")) == set(field_table("withdrawal-response"))


@pytest.mark.django_db
def test_golden_discovery_document_is_read_as_documented(ex: dict[str, str]) -> None:
    from federation import discovery

    data = golden("discovery.json")
    instance = discovery._parse_document("alpha.example", data)

    assert instance is not None
    assert instance.api_base == "https://mail.alpha.example/federation/v1/"
    assert instance.keys[ex["alpha-key-id"]] == ex["alpha-public-key"]
    assert len(instance.keys) == 2  # the retired key stays usable until it leaves the document
    assert (instance.max_notification_bytes, instance.max_recipients) == (262144, 1000)
    assert discovery._parse_document("beta.example", data) is None  # not one of its domains
    assert flatten(data) == set(field_table("discovery"))


@pytest.mark.parametrize(
    "change",
    [
        {"protocol": "smtp"},
        {"versions": [2]},
        {"versions": 1},
        {"domains": ["beta.example"]},
        {"domains": "xalpha.examplex"},  # a string, not a list: no substring match
        {"api": "ftp://mail.alpha.example/"},
        {"keys": 7},
        {"limits": {"max_recipients": "lots"}},
        {"limits": ["max_recipients"]},
    ],
)
def test_an_invalid_discovery_document_means_legacy_not_a_crash(change: dict[str, Any]) -> None:
    from federation import discovery

    assert discovery._parse_document("alpha.example", golden("discovery.json") | change) is None


def test_unusable_key_entries_are_skipped_and_the_document_stays_valid(ex: dict[str, str]) -> None:
    from federation import discovery

    document = golden("discovery.json")
    good = document["keys"][-1]
    document["keys"] += [
        {**good, "id": "alpha.example#bad-key", "public_key": "AAAA"},
        {**good, "id": "alpha.example#other-algorithm", "algorithm": "rsa-pss-sha512"},
        {**good, "id": "gamma.example#other-domain", "domain": "gamma.example"},
        {k: v for k, v in good.items() if k != "id"},
        "not an object",
    ]

    instance = discovery._parse_document("alpha.example", document)

    assert instance is not None
    assert set(instance.keys) == {document["keys"][0]["id"], ex["alpha-key-id"]}


@pytest.mark.django_db
def test_the_served_discovery_document_has_exactly_the_documented_fields() -> None:
    from accounts.services import create_domain
    from federation import discovery, keys

    domain = create_domain(name="alpha.example")
    keys.rotate_key(domain=domain)  # a retired key with an expiry, and a current one

    document = discovery.own_document()

    assert flatten(document) == set(field_table("discovery"))
    assert [k["expires"] is None for k in document["keys"]] == [False, True]
    assert all(k["id"].startswith("alpha.example#") for k in document["keys"])


def test_golden_error_shapes_have_the_documented_fields() -> None:
    assert flatten(golden("error.json")) == set(field_table("error"))
    gone = golden("gone.json")
    assert flatten(gone) == set(field_table("gone"))
    assert gone["error"] == "gone" and gone["reason"] in {"withdrawn", "fetched", "expired"}


@pytest.mark.django_db
def test_an_unsigned_notification_gets_the_documented_error_shape(client: Any) -> None:
    response = client.post("/federation/v1/notifications", data=b"{}", content_type="application/json")

    assert response.status_code == 401
    assert response.json()["error"] == "signature_missing"
    assert set(response.json()) == set(field_table("error"))


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("method", "path"),
    [("post", "/.well-known/pushmail"), ("get", "/federation/v1/notifications"), ("put", "/federation/v1/withdrawals")],
)
def test_a_wrong_method_gets_a_json_405_naming_the_right_one(method: str, path: str) -> None:
    from django.test import Client

    response = getattr(Client(enforce_csrf_checks=True), method)(path)

    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"
    assert response["Allow"]


def test_every_error_code_the_federation_code_answers_with_is_documented() -> None:
    sources = "".join((ROOT / "federation" / name).read_text() for name in ("views.py", "signatures.py"))
    emitted = set(re.findall(r'error\(\s*\d{3},\s*"([a-z_]+)"', sources))
    emitted |= set(re.findall(r'SignatureRejected\(\s*"([a-z_]+)"', sources))
    emitted |= set(re.findall(r'\{"error": "([a-z_]+)"', sources))
    assert {"signature_missing", "wrong_domain", "gone", "too_large"} <= emitted  # the scan finds them

    missing = emitted - documented_error_codes()
    assert not missing, f"error codes answered by federation/ but not documented: {sorted(missing)}"
