"""Generate the worked example of docs/protocol.md §11 with the project's own code.

    python -m tools.protocol_example              # print the Markdown blocks to paste
    python -m tools.protocol_example --write-data # also rewrite the golden payloads in tests/data/

Everything is fixed (keys, times, nonces, ids) and Ed25519 signatures are
deterministic, so the output never changes unless the protocol code does.
tests/unit/test_protocol_doc.py checks the pasted blocks against this code and,
independently, against raw Ed25519 and SHA-256.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"

# RFC 8032 §7.1, TEST 1 and TEST 2: published seeds, so anyone can check the keys.
ALPHA_SEED_HEX = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
BETA_SEED_HEX = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb"
# TEST 3's public key stands for alpha.example's retired key in the discovery example.
RETIRED_PUBLIC_HEX = "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025"
ALPHA_KEY_ID = "alpha.example#20261126-5e1f0a2b"
BETA_KEY_ID = "beta.example#20261126-9c3d7e41"
ALPHA_API = "https://mail.alpha.example/federation/v1/"
BETA_API = "https://mail.beta.example/federation/v1/"

GLOBAL_ID = uuid.UUID("3f1c9a52-7d4e-4b8a-9e21-6c0d5b7a8f13")
PARENT_ID = "<0b7e3c1a-2f44-4c55-8a1e-93d2f6b0c7aa@beta.example>"
MESSAGE = {
    "global_id": GLOBAL_ID,
    "message_id": f"<{GLOBAL_ID}@alpha.example>",
    "sender": "ann@alpha.example",
    "to": ["bob@beta.example", "gus@gamma.example"],
    "cc": ["carol@beta.example"],
    "subject": "Grüße: the Q4 plan",
    "date": datetime(2026, 11, 26, 9, 59, 58, tzinfo=UTC),
    "text": "Hi Bob,\n\nthe Q4 plan is below. Café at 10?\n\n— Ann\n",
    "html": None,
    "in_reply_to": PARENT_ID,
    "references": [PARENT_ID],
}
BCC = ["dave@beta.example"]  # never in the body; only in beta.example's notification
EXPIRES = datetime(2026, 12, 26, 9, 59, 58, tzinfo=UTC)  # date + 30 days

# §11.6: a second message, with one attachment.
ATTACH_ID = uuid.UUID("5d0c7e2a-1b3f-4c8d-9a6e-2f4b8c1d0e37")
ATTACHMENT_FILE = "Q4 plan\n\n1. Ship attachments.\n2. Café on Friday.\n".encode()
ATTACH_MESSAGE = {
    "global_id": ATTACH_ID,
    "message_id": f"<{ATTACH_ID}@alpha.example>",
    "sender": "ann@alpha.example",
    "to": ["bob@beta.example"],
    "cc": [],
    "subject": "The Q4 plan, attached",
    "date": datetime(2026, 11, 26, 11, 0, 0, tzinfo=UTC),
    "text": "Hi Bob,\n\nthe plan is attached.\n\n— Ann\n",
    "html": None,
    "in_reply_to": "",
    "references": [],
}
ATTACH_EXPIRES = datetime(2026, 12, 26, 11, 0, 0, tzinfo=UTC)
ATTACH_FETCH_CREATED = datetime(2026, 11, 26, 11, 20, 0, tzinfo=UTC)
ATTACH_FETCH_NONCE = "Qm3sV8xK1pT6wZ0bN4cR7y"

# §11.7: beta.example judged the §11.2 message spam and tells alpha.example.
REPORT_AT = datetime(2026, 11, 26, 11, 58, 41, tzinfo=UTC)
REPORT_CREATED = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
REPORT_NONCE = "Rt5wY2uI8oP3aS6dF9gH1j"

# §11.8: the notifications of §11.3 and §11.6, sent together in one batch.
BATCH_CREATED = datetime(2026, 11, 26, 11, 0, 5, tzinfo=UTC)
BATCH_NONCE = "Zb8nC3vX6mL1kJ4hG7fD2s"

NOTIFY_CREATED = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
NOTIFY_NONCE = "q7Vw2mZ9xR4tYb1nK8sJ3a"
FETCH_CREATED = datetime(2026, 11, 26, 10, 15, 0, tzinfo=UTC)
FETCH_NONCE = "Lp0Zx8cV6bN2mQ5wE9rT1y"


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pushmail_site.settings")
    os.environ.setdefault("DEBUG", "1")
    os.environ.setdefault("CELERY_BROKER_URL", "memory://")
    import django

    django.setup()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _keys(seed_hex: str):  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed_hex))
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return private, _b64(bytes.fromhex(seed_hex)), _b64(public)


def _signature_base(method: str, url: str, headers: dict[str, str]) -> str:
    """The base the project signed, rebuilt with the signing library's own resolver."""
    from http_message_signatures.resolvers import HTTPSignatureComponentResolver

    from federation.signatures import _Message

    resolver = HTTPSignatureComponentResolver(_Message(method=method, url=url, headers=headers))
    sig_input = headers["Signature-Input"]
    inner = sig_input[len("pm=") :]
    components = inner[1 : inner.index(")")].split(" ")
    lines = []
    for component in components:
        name = component.strip('"')
        value = getattr(resolver, f"get_{name[1:]}")() if name.startswith("@") else resolver.headers[name]
        lines.append(f"{component}: {value}")
    lines.append(f'"@signature-params": {inner}')
    return "\n".join(lines)


def _http_head(method: str, url: str, headers: dict[str, str], body: bytes | None) -> str:
    parts = urlsplit(url)
    lines = [f"{method} {parts.path}{'?' + parts.query if parts.query else ''} HTTP/1.1", f"Host: {parts.netloc}"]
    ordered = dict(headers)
    if body is not None:
        ordered = {
            **{k: v for k, v in headers.items() if k in ("Accept", "Content-Type")},
            "Content-Length": str(len(body)),
            **{k: v for k, v in headers.items() if k not in ("Accept", "Content-Type")},
        }
    lines += [f"{name}: {value}" for name, value in ordered.items()]
    return "\n".join(lines)


def build() -> dict[str, str]:
    """Every block of the worked example, by marker name."""
    _setup_django()
    from federation import payloads
    from federation.signatures import sign

    alpha_private, alpha_seed, alpha_public = _keys(ALPHA_SEED_HEX)
    beta_private, beta_seed, beta_public = _keys(BETA_SEED_HEX)

    body = payloads.canonical_body(**MESSAGE)
    body_digest = payloads.digest(body)
    notification = payloads.Notification(
        global_id=GLOBAL_ID,
        message_id=MESSAGE["message_id"],
        sender=MESSAGE["sender"],
        recipients=["bob@beta.example", "carol@beta.example", *BCC],
        subject=MESSAGE["subject"],
        date=MESSAGE["date"],
        size=len(body),
        digest=body_digest,
        in_reply_to=MESSAGE["in_reply_to"],
        references=MESSAGE["references"],
        expires=EXPIRES,
    )
    # Serialized exactly as federation.client does before signing.
    notify_body = json.dumps(notification.to_json(), separators=(",", ":")).encode()
    notify_url = BETA_API + "notifications"
    notify_headers = sign(
        method="POST",
        url=notify_url,
        headers={"Accept": "application/json", "Content-Type": "application/json"},
        body=notify_body,
        key_id=ALPHA_KEY_ID,
        private_key=alpha_private,
        created=NOTIFY_CREATED,
        nonce=NOTIFY_NONCE,
    )
    fetch_url = ALPHA_API + f"messages/{GLOBAL_ID}/body"
    fetch_headers = sign(
        method="GET",
        url=fetch_url,
        headers={"Accept": "application/json"},
        body=None,
        key_id=BETA_KEY_ID,
        private_key=beta_private,
        created=FETCH_CREATED,
        nonce=FETCH_NONCE,
    )
    attachment_digest = payloads.digest(ATTACHMENT_FILE)
    manifest = [
        {"name": "Q4 plan.txt", "type": "text/plain", "size": len(ATTACHMENT_FILE), "digest": attachment_digest}
    ]
    attach_body = payloads.canonical_body(**ATTACH_MESSAGE, attachments=manifest)
    attach_notification = payloads.Notification(
        global_id=ATTACH_ID,
        message_id=ATTACH_MESSAGE["message_id"],
        sender=ATTACH_MESSAGE["sender"],
        recipients=["bob@beta.example"],
        subject=ATTACH_MESSAGE["subject"],
        date=ATTACH_MESSAGE["date"],
        size=len(attach_body),
        digest=payloads.digest(attach_body),
        in_reply_to="",
        references=[],
        expires=ATTACH_EXPIRES,
        attachments=tuple(payloads.parse_manifest(manifest)),
    )
    attach_notify_body = json.dumps(attach_notification.to_json(), separators=(",", ":")).encode()
    attach_fetch_url = ALPHA_API + f"messages/{ATTACH_ID}/attachments/{attachment_digest}"
    attach_fetch_headers = sign(
        method="GET",
        url=attach_fetch_url,
        headers={"Accept": "application/octet-stream"},
        body=None,
        key_id=BETA_KEY_ID,
        private_key=beta_private,
        created=ATTACH_FETCH_CREATED,
        nonce=ATTACH_FETCH_NONCE,
    )
    attach_fetch_base = _signature_base("GET", attach_fetch_url, attach_fetch_headers)
    attach_fetch_signature = attach_fetch_headers["Signature"][len("pm=:") : -1]
    assert _b64(beta_private.sign(attach_fetch_base.encode())) == attach_fetch_signature

    report = payloads.Report(global_id=GLOBAL_ID, verdict="spam", reports=3, reported_at=REPORT_AT)
    # Serialized exactly as federation.client does before signing.
    report_body = json.dumps(report.to_json(), separators=(",", ":")).encode()
    report_url = ALPHA_API + "reports"
    report_headers = sign(
        method="POST",
        url=report_url,
        headers={"Accept": "application/json", "Content-Type": "application/json"},
        body=report_body,
        key_id=BETA_KEY_ID,
        private_key=beta_private,
        created=REPORT_CREATED,
        nonce=REPORT_NONCE,
    )
    report_base = _signature_base("POST", report_url, report_headers)
    report_signature = report_headers["Signature"][len("pm=:") : -1]
    assert _b64(beta_private.sign(report_base.encode())) == report_signature

    # Serialized exactly as outbox.delivery does before federation.client signs it.
    batch_body = json.dumps(
        payloads.notification_batch([notification, attach_notification]), separators=(",", ":")
    ).encode()
    batch_url = BETA_API + "notifications/batch"
    batch_headers = sign(
        method="POST",
        url=batch_url,
        headers={"Accept": "application/json", "Content-Type": "application/json"},
        body=batch_body,
        key_id=ALPHA_KEY_ID,
        private_key=alpha_private,
        created=BATCH_CREATED,
        nonce=BATCH_NONCE,
    )
    batch_base = _signature_base("POST", batch_url, batch_headers)
    batch_signature = batch_headers["Signature"][len("pm=:") : -1]
    assert _b64(alpha_private.sign(batch_base.encode())) == batch_signature

    notify_base = _signature_base("POST", notify_url, notify_headers)
    fetch_base = _signature_base("GET", fetch_url, fetch_headers)
    notify_signature = notify_headers["Signature"][len("pm=:") : -1]
    fetch_signature = fetch_headers["Signature"][len("pm=:") : -1]
    # The printed bases must be exactly what was signed (Ed25519 is deterministic).
    assert _b64(alpha_private.sign(notify_base.encode())) == notify_signature
    assert _b64(beta_private.sign(fetch_base.encode())) == fetch_signature
    return {
        "alpha-seed": alpha_seed,
        "alpha-public-key": alpha_public,
        "alpha-key-id": ALPHA_KEY_ID,
        "beta-seed": beta_seed,
        "beta-public-key": beta_public,
        "beta-key-id": BETA_KEY_ID,
        "canonical-body": body.decode("utf-8"),
        "canonical-digest": body_digest,
        "notification-request": _http_head("POST", notify_url, notify_headers, notify_body),
        "notification-body": notify_body.decode("ascii"),
        "notification-signature-base": notify_base,
        "notification-signature": notify_signature,
        "fetch-request": _http_head("GET", fetch_url, fetch_headers, None),
        "fetch-signature-base": fetch_base,
        "fetch-signature": fetch_signature,
        "attachment-file": ATTACHMENT_FILE.decode("utf-8").rstrip("\n"),
        "attachment-digest": attachment_digest,
        "attachment-body": attach_body.decode("utf-8"),
        "attachment-body-digest": payloads.digest(attach_body),
        "attachment-notification-body": attach_notify_body.decode("ascii"),
        "attachment-fetch-request": _http_head("GET", attach_fetch_url, attach_fetch_headers, None),
        "attachment-fetch-signature-base": attach_fetch_base,
        "attachment-fetch-signature": attach_fetch_signature,
        "attachment-content-digest": "sha-256=:" + _b64(hashlib.sha256(ATTACHMENT_FILE).digest()) + ":",
        "report-request": _http_head("POST", report_url, report_headers, report_body),
        "report-body": report_body.decode("ascii"),
        "report-signature-base": report_base,
        "report-signature": report_signature,
        "batch-request": _http_head("POST", batch_url, batch_headers, batch_body),
        "batch-body": batch_body.decode("ascii"),
        "batch-signature-base": batch_base,
        "batch-signature": batch_signature,
    }


def _golden(blocks: dict[str, str]) -> dict[str, str]:
    """The golden payloads of tests/data/, built from the same example."""
    from federation import payloads

    def pretty(obj: object) -> str:
        return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"

    notification = json.loads(blocks["notification-body"])
    return {
        # Byte-exact: the digest covers these bytes, so no trailing newline.
        "body.json": blocks["canonical-body"],
        "notification.json": pretty(notification),
        "notification_response.json": pretty(
            {
                "id": notification["id"],
                "results": [
                    {"address": "bob@beta.example", "status": "accepted"},
                    {"address": "carol@beta.example", "status": "accepted"},
                    {"address": "dave@beta.example", "status": "rejected", "reason": "unknown mailbox"},
                ],
            }
        ),
        "withdrawal.json": pretty(
            payloads.Withdrawal(global_id=GLOBAL_ID, sender=MESSAGE["sender"]).to_json()  # type: ignore[arg-type]
        ),
        "withdrawal_response.json": pretty({"id": str(GLOBAL_ID), "status": "withdrawn", "fetched_before": True}),
        "discovery.json": pretty(
            {
                "protocol": "pushmail",
                "version": 1,
                "versions": [1],
                "domains": ["alpha.example"],
                "api": ALPHA_API,
                "keys": [
                    {
                        "id": "alpha.example#20260801-77aa01c4",
                        "domain": "alpha.example",
                        "algorithm": "ed25519",
                        "public_key": _b64(bytes.fromhex(RETIRED_PUBLIC_HEX)),
                        "created": "2026-08-01T08:00:00.412345Z",
                        "expires": "2099-12-03T08:30:00.250113Z",
                    },
                    {
                        "id": blocks["alpha-key-id"],
                        "domain": "alpha.example",
                        "algorithm": "ed25519",
                        "public_key": blocks["alpha-public-key"],
                        "created": "2026-11-26T08:30:00.250113Z",
                        "expires": None,
                    },
                ],
                "limits": {
                    "max_notification_bytes": 262144,
                    "max_recipients": 1000,
                    "max_batch_notifications": 100,
                    "max_batch_bytes": 1048576,
                },
            }
        ),
        "error.json": pretty(
            {"error": "wrong_domain", "detail": "sender ann@alpha.example is not of the signing domain beta.example"}
        ),
        "gone.json": pretty({"error": "gone", "reason": "withdrawn", "detail": "the sender withdrew this message"}),
        # §11.6: byte-exact like body.json; the notification pretty-printed.
        "body_with_attachment.json": blocks["attachment-body"],
        "notification_with_attachment.json": pretty(json.loads(blocks["attachment-notification-body"])),
        # §11.7: the spam report and alpha.example's answer.
        "report.json": pretty(json.loads(blocks["report-body"])),
        "report_response.json": pretty(
            {"id": str(GLOBAL_ID), "verdict": "spam", "status": "recorded", "complaint": "active"}
        ),
        # §11.8: both notifications in one batch, and beta.example's answer to each.
        "notification_batch.json": pretty(json.loads(blocks["batch-body"])),
        "notification_batch_response.json": pretty(
            {
                "answers": [
                    {
                        "status": 200,
                        "id": notification["id"],
                        "results": [
                            {"address": "bob@beta.example", "status": "accepted"},
                            {"address": "carol@beta.example", "status": "accepted"},
                            {"address": "dave@beta.example", "status": "rejected", "reason": "unknown mailbox"},
                        ],
                    },
                    {
                        "status": 200,
                        "id": str(ATTACH_ID),
                        "results": [{"address": "bob@beta.example", "status": "accepted"}],
                    },
                ]
            }
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-data", action="store_true", help="rewrite the golden payloads in tests/data/")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    blocks = build()
    for name, text in blocks.items():
        print(f"<!-- pushmail-example: {name} -->\n```text\n{text}\n```\n")
    if args.write_data:
        DATA.mkdir(parents=True, exist_ok=True)
        for filename, text in _golden(blocks).items():
            (DATA / filename).write_text(text, encoding="utf-8")
            print(f"wrote tests/data/{filename}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
