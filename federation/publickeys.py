"""Users' OpenPGP public keys between instances (docs/protocol.md §14): the signed key document.

The document is signed inside, not as an HTTP answer: the signature covers the canonical JSON of
the document without its ``signature`` member (the same serialization as a canonical body, §4.2),
made with the current federation key of the address's domain (§2.4). Whoever holds a copy can
check it later against that domain's discovery document.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature

from accounts.validators import domain_of
from pushmail_site.hooks import Hook

from . import http
from .discovery import Instance
from .keys import b64, current_key, private_key_of, public_key_from_b64
from .payloads import PayloadError, canonical_json, format_time, loads, parse_time

# A document older than this is refused by a reader: a revocation reaches readers within it.
MAX_AGE = timedelta(hours=1)
# Clock skew allowed for an `issued` time in the future.
SKEW = timedelta(minutes=5)
MAX_DOCUMENT_BYTES = 256 * 1024
MAX_KEYS = 16


@dataclass(frozen=True)
class PublishedKey:
    """One OpenPGP public key of an address, as published: the binary transferable public key (RFC 4880 §11.1)."""

    fingerprint: str
    key: bytes
    revoked: bool
    created: datetime


#: ``published_keys(address=...)``: the keys an address at a hosted domain publishes, the one in use first.
published_keys: Hook[..., list[PublishedKey]] = Hook("federation.publickeys.published_keys")


def key_document(*, address: str, keys: list[PublishedKey], issued: datetime | None = None) -> dict[str, Any]:
    """The signed key document for ``address`` (§14.2), signed with its domain's current key."""
    signing_key = current_key(domain_of(address))
    document: dict[str, Any] = {
        "type": "openpgp-keys",
        "version": 1,
        "address": address,
        "issued": format_time(issued or datetime.now(UTC)),
        "key_id": signing_key.key_id,
        "keys": [
            {
                "fingerprint": key.fingerprint,
                "key": b64(key.key),
                "revoked": key.revoked,
                "created": format_time(key.created),
            }
            for key in keys
        ],
    }
    document["signature"] = b64(private_key_of(signing_key).sign(canonical_json(document)))
    return document


class KeyDocumentError(ValueError):
    """A key document that must not be used; the message says why."""


def read_key_document(
    content: bytes, *, address: str, instance: Instance, now: datetime | None = None
) -> list[PublishedKey]:
    """Check a fetched key document (§14.3) and return its keys; raise KeyDocumentError otherwise."""
    try:
        document = loads(content)
    except PayloadError as exc:
        raise KeyDocumentError(f"not a JSON document: {exc}") from exc
    if not isinstance(document, dict) or document.get("type") != "openpgp-keys" or document.get("version") != 1:
        raise KeyDocumentError("not an openpgp-keys document of version 1")
    if document.get("address") != address:
        raise KeyDocumentError(f"the document is for {document.get('address')!r}, not {address}")
    key_id = document.get("key_id")
    if not isinstance(key_id, str):
        raise KeyDocumentError("key_id is missing")
    public_b64 = instance.keys.get(key_id)
    if public_b64 is None or not key_id.startswith(domain_of(address) + "#"):
        raise KeyDocumentError(f"key id {key_id!r} is not a key of {domain_of(address)}")
    signed = dict(document)
    signature = signed.pop("signature", None)
    try:
        raw = base64.b64decode(str(signature), validate=True)
        public_key_from_b64(public_b64).verify(raw, canonical_json(signed))
    except (binascii.Error, ValueError, InvalidSignature) as exc:
        raise KeyDocumentError("the document's signature does not verify") from exc
    try:
        issued = parse_time(document.get("issued"), "issued")
    except PayloadError as exc:
        raise KeyDocumentError(str(exc)) from exc
    now = now or datetime.now(UTC)
    if issued > now + SKEW or issued < now - MAX_AGE:
        raise KeyDocumentError(f"the document was issued at {format_time(issued)}, outside the accepted window")
    entries = document.get("keys")
    if not isinstance(entries, list) or len(entries) > MAX_KEYS:
        raise KeyDocumentError(f"keys must be a list of at most {MAX_KEYS}")
    keys = []
    for i, entry in enumerate(entries):
        try:
            keys.append(
                PublishedKey(
                    fingerprint=str(entry["fingerprint"]),
                    key=base64.b64decode(entry["key"], validate=True),
                    revoked=entry["revoked"] is True,
                    created=parse_time(entry["created"], f"keys[{i}].created"),
                )
            )
        except (KeyError, TypeError, binascii.Error, ValueError) as exc:
            raise KeyDocumentError(f"keys[{i}] is malformed: {exc}") from exc
    return keys


class KeysUnavailable(Exception):
    """The peer could not be asked now (network, 5xx); trying later may succeed."""


def fetch_public_keys(*, instance: Instance, address: str) -> list[PublishedKey]:
    """Ask ``address``'s instance for its published keys (§14.1): [] when it has none (404)."""
    try:
        response = http.request(
            "GET",
            instance.url(f"keys/{address}"),
            headers={"Accept": "application/json"},
            max_bytes=MAX_DOCUMENT_BYTES,
        )
    except http.OutboundError as exc:
        raise KeysUnavailable(str(exc)) from exc
    if response.status == 404:
        return []
    if response.status != 200:
        raise KeysUnavailable(f"{instance.domain} answered {response.status}")
    return read_key_document(response.content, address=address, instance=instance)
