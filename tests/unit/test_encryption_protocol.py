"""docs/protocol.md §14: the worked example of the key document checks out, independently and with our reader."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from encryption import openpgp
from federation import publickeys
from federation.discovery import Instance
from federation.payloads import canonical_json
from tests.unit.test_protocol_doc import example_blocks, field_table


@pytest.fixture(scope="module")
def blocks() -> dict[str, str]:
    return example_blocks()


def _beta(blocks: dict[str, str]) -> Instance:
    return Instance(
        domain="beta.example",
        api_base="https://mail.beta.example/federation/v1/",
        keys={blocks["beta-key-id"]: blocks["beta-public-key"]},
    )


def test_the_example_signature_verifies_with_raw_ed25519(blocks: dict[str, str]) -> None:
    document = json.loads(blocks["keys-document"])
    signature = base64.b64decode(document.pop("signature"))
    signed = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert signed == blocks["keys-signed-bytes"].encode()
    Ed25519PublicKey.from_public_bytes(base64.b64decode(blocks["beta-public-key"])).verify(signature, signed)


def test_the_example_key_is_bobs_with_the_fingerprint_listed(blocks: dict[str, str]) -> None:
    entry = json.loads(blocks["keys-document"])["keys"][0]
    key = openpgp.split_key(openpgp.read_packets(base64.b64decode(entry["key"])))
    assert key.material.fingerprint == entry["fingerprint"]
    assert [c.packet.body for c in key.user_ids] == [b"Bob <bob@beta.example>"]
    assert openpgp.wkd_hash("bob") == "jycbiujnsxs47xrkethgtj69xuunurok"


def test_our_reader_accepts_the_example_and_refuses_it_changed(blocks: dict[str, str]) -> None:
    issued = datetime(2026, 11, 26, 10, 5, tzinfo=UTC)
    raw = blocks["keys-document"].encode()
    keys = publickeys.read_key_document(raw, address="bob@beta.example", instance=_beta(blocks), now=issued)
    assert [k.fingerprint for k in keys] == ["658BFE337A4224B9440B379C9C781E2EA7F99F2B"]
    with pytest.raises(publickeys.KeyDocumentError, match="not carol@beta.example"):
        publickeys.read_key_document(raw, address="carol@beta.example", instance=_beta(blocks), now=issued)
    stale = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    with pytest.raises(publickeys.KeyDocumentError, match="outside the accepted window"):
        publickeys.read_key_document(raw, address="bob@beta.example", instance=_beta(blocks), now=stale)
    changed = raw.replace(b'"revoked": false', b'"revoked": true')
    assert changed != raw
    with pytest.raises(publickeys.KeyDocumentError, match="signature does not verify"):
        publickeys.read_key_document(changed, address="bob@beta.example", instance=_beta(blocks), now=issued)


def test_the_field_table_lists_what_the_example_holds(blocks: dict[str, str]) -> None:
    document = json.loads(blocks["keys-document"])
    fields = set(document) | {f"keys[].{name}" for entry in document["keys"] for name in entry}
    assert fields == set(field_table("openpgp-keys")) | {"keys"}
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()
