"""The canonical body, its digest, and notification/withdrawal parsing (federation/payloads.py)."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from accounts.models import User
from federation import payloads
from federation.payloads import PayloadError, parse_notification, parse_withdrawal
from outbox.models import Delivery
from outbox.services import canonical_content, notification_for
from tests.factories import PeerMessageFactory, SentMessageFactory

GOLDEN_INPUT: dict[str, Any] = {
    "global_id": uuid.UUID("6f1c2b1e-3d4a-4b5c-8d9e-0a1b2c3d4e5f"),
    "message_id": "<6f1c2b1e-3d4a-4b5c-8d9e-0a1b2c3d4e5f@alpha.test>",
    "sender": "alice@alpha.test",
    "to": ["bob@beta.test"],
    "cc": ["dan@beta.test"],
    "subject": "Grüße ✓",
    "date": datetime(2026, 11, 26, 10, 0, 0, 123456, tzinfo=UTC),
    "text": "Hallo Bob,\nbis bald.",
    "html": "<p>Hallo</p>",
    "in_reply_to": "<parent@beta.test>",
    "references": ["<root@beta.test>", "<parent@beta.test>"],
}
GOLDEN_BYTES = (
    '{"cc":["dan@beta.test"],"date":"2026-11-26T10:00:00Z","from":"alice@alpha.test","html":"<p>Hallo</p>",'
    '"id":"6f1c2b1e-3d4a-4b5c-8d9e-0a1b2c3d4e5f","in_reply_to":"<parent@beta.test>",'
    '"message_id":"<6f1c2b1e-3d4a-4b5c-8d9e-0a1b2c3d4e5f@alpha.test>",'
    '"references":["<root@beta.test>","<parent@beta.test>"],"subject":"Grüße ✓",'
    '"text":"Hallo Bob,\\nbis bald.","to":["bob@beta.test"],"version":1}'
).encode()
GOLDEN_DIGEST = "sha-256:f2cb8e11ebc194d6ce17c036169af29ff84570113ce12d53ed1ee31e59c53b00"


# --- canonical form and digest ------------------------------------------------------------------


def test_canonical_body_has_stable_golden_bytes_and_digest() -> None:
    content = payloads.canonical_body(**GOLDEN_INPUT)
    assert content == GOLDEN_BYTES
    assert payloads.digest(content) == GOLDEN_DIGEST
    assert GOLDEN_DIGEST == "sha-256:" + hashlib.sha256(GOLDEN_BYTES).hexdigest()


def test_non_ascii_is_kept_as_utf8_not_escaped() -> None:
    content = payloads.canonical_body(**GOLDEN_INPUT)
    assert "Grüße ✓".encode() in content
    assert b"\\u" not in content
    content.decode("utf-8")  # valid UTF-8


def test_canonical_body_has_no_insignificant_whitespace_and_sorted_keys() -> None:
    content = payloads.canonical_body(**GOLDEN_INPUT)
    assert b": " not in content and b", " not in content
    keys = list(json.loads(content))
    assert keys == sorted(keys)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("subject", "Grüße ✓ "),
        ("text", "Hallo Bob,\nbis bald!"),
        ("html", "<p>Hallo!</p>"),
        ("html", None),
        ("to", ["bob@beta.test", "eve@beta.test"]),
        ("to", ["eve@beta.test"]),
        ("cc", []),
        ("cc", ["eve@beta.test"]),
        ("sender", "mallory@alpha.test"),
        ("in_reply_to", "<other@beta.test>"),
        ("references", ["<root@beta.test>"]),
        ("date", datetime(2026, 11, 26, 10, 0, 1, tzinfo=UTC)),
    ],
)
def test_any_change_of_what_readers_see_changes_the_digest(field: str, value: Any) -> None:
    original = payloads.digest(payloads.canonical_body(**GOLDEN_INPUT))
    changed = payloads.digest(payloads.canonical_body(**{**GOLDEN_INPUT, field: value}))
    assert changed != original


def test_sub_second_date_differences_do_not_change_the_digest() -> None:
    # Dates travel with whole seconds; the digest must agree with what the notification carries.
    later = GOLDEN_INPUT["date"].replace(microsecond=999)
    assert payloads.canonical_body(**{**GOLDEN_INPUT, "date": later}) == GOLDEN_BYTES


@pytest.mark.django_db
@pytest.mark.usefixtures("net")
def test_bcc_is_never_in_the_body_nor_shown_to_other_domains(alice: User) -> None:
    message = SentMessageFactory(
        sender=alice, to=["carol@peer.test"], cc=["dave@peer.test"], bcc=["secret@other.test", "hidden@peer.test"]
    )
    content = canonical_content(message)
    assert b"secret@other.test" not in content and b"hidden@peer.test" not in content
    assert json.loads(content)["to"] == ["carol@peer.test"]
    assert message.digest == payloads.digest(content)

    to_peer = notification_for(Delivery.objects.get(message=message, domain="peer.test")).to_json()
    to_other = notification_for(Delivery.objects.get(message=message, domain="other.test")).to_json()
    assert "secret@other.test" not in json.dumps(to_peer)
    assert sorted(to_peer["recipients"]) == ["carol@peer.test", "dave@peer.test", "hidden@peer.test"]
    assert to_other["recipients"] == ["secret@other.test"]
    assert to_peer["digest"] == to_other["digest"] == message.digest


# --- notification parsing ---------------------------------------------------------------------------

VALID = PeerMessageFactory(
    global_id=uuid.UUID("0b7c3a5e-2f1d-4e6a-9c8b-7d6e5f4a3b2c"),
    to=["alice@alpha.test"],
    date=datetime(2026, 11, 26, 10, 0, tzinfo=UTC),
    expires=datetime(2026, 12, 26, 10, 0, tzinfo=UTC),
)


def _parse(**overrides: Any) -> payloads.Notification:
    return parse_notification(VALID.payload(**overrides), max_recipients=10)


def test_valid_notification_parses_and_round_trips() -> None:
    parsed = _parse(recipients=["Alice@Alpha.Test", "alice@alpha.test", "bob@alpha.test"])
    assert parsed.recipients == ["alice@alpha.test", "bob@alpha.test"]
    assert parsed.global_id == VALID.global_id
    assert parsed.expires == datetime(2026, 12, 26, 10, 0, tzinfo=UTC)
    assert parsed.digest == VALID.notification().digest
    assert parse_notification(parsed.to_json(), max_recipients=10) == parsed


BAD_FIELDS: list[tuple[str, Any]] = [
    ("type", "withdrawal"),
    ("type", ...),
    ("version", 2),
    ("version", "1"),
    ("id", "not-a-uuid"),
    ("id", 12),
    ("id", ...),
    ("message_id", ""),
    ("message_id", "<a@b>\r\nX-Injected: 1"),
    ("message_id", "x" * 401),
    ("message_id", ...),
    ("sender", "not an address"),
    ("sender", "carol@peer.test\r\nBcc: eve@evil.test"),
    ("sender", 42),
    ("sender", ...),
    ("recipients", ...),
    ("recipients", "alice@alpha.test"),
    ("recipients", []),
    ("recipients", ["not-an-address"]),
    ("recipients", ["alice@alpha.test\n"]),
    ("recipients", [7]),
    ("subject", ...),
    ("subject", 5),
    ("subject", "Hello\r\nBcc: eve@evil.test"),
    ("subject", "Hello\nworld"),
    ("subject", "x" * 999),
    ("date", ...),
    ("date", "2026-11-26 10:00:00"),
    ("date", 1764151200),
    ("size", -1),
    ("size", "100"),
    ("size", True),
    ("size", ...),
    ("digest", ...),
    ("digest", "md5:" + "0" * 32),
    ("digest", "sha-256:" + "z" * 64),
    ("digest", "sha-256:" + "0" * 63),
    ("in_reply_to", 5),
    ("in_reply_to", "<a@b>\r\n"),
    ("references", "<a@b>"),
    ("references", [1]),
    ("references", ["<a@b>\n"]),
    ("references", ["<a@b>"] * 101),
    ("expires", ...),
    ("expires", "next month"),
]


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_FIELDS)])
def test_bad_field_is_refused_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(PayloadError) as excinfo:
        _parse(**{field: value})
    assert str(excinfo.value).startswith(field), str(excinfo.value)


@pytest.mark.parametrize("data", [None, [], "notification", 5])
def test_non_object_notification_is_refused(data: Any) -> None:
    with pytest.raises(PayloadError, match="^body"):
        parse_notification(data, max_recipients=10)


def test_too_many_recipients_is_refused() -> None:
    recipients = [f"user{i}@alpha.test" for i in range(11)]
    with pytest.raises(PayloadError, match="^recipients: 11 exceeds the limit of 10"):
        _parse(recipients=recipients)
    assert len(_parse(recipients=recipients[:10]).recipients) == 10


def test_withdrawal_parses_and_bad_fields_are_named() -> None:
    good = {"type": "withdrawal", "version": 1, "id": str(VALID.global_id), "sender": "carol@peer.test"}
    assert parse_withdrawal(good) == payloads.Withdrawal(global_id=VALID.global_id, sender="carol@peer.test")
    for field, value in [("type", "notification"), ("version", 3), ("id", "nope"), ("sender", "a\r\n@b.test")]:
        with pytest.raises(PayloadError) as excinfo:
            parse_withdrawal({**good, field: value})
        assert str(excinfo.value).startswith(field)


def test_times_are_rfc3339_utc_whole_seconds() -> None:
    value = datetime(2026, 11, 26, 10, 0, 0, 999999, tzinfo=UTC)
    assert payloads.format_time(value) == "2026-11-26T10:00:00Z"
    assert payloads.parse_time("2026-11-26T10:00:00Z", "date") == value.replace(microsecond=0)
