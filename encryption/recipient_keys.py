"""Correspondents' current OpenPGP public keys, for the compose page: may this message be encrypted to them?

Where each address's key comes from:
- a mailbox hosted here: its key in use (the OpenPGPKey table);
- a mailbox at another Pushmail instance: that instance's key document, signed by its domain
  (docs/protocol.md §14, federation.publickeys);
- any other domain: its Web Key Directory (advanced, then direct layout) over HTTPS, when it answers;

looked up as the pinning looks them up (encryption.lookup.find_keys).

Answers from elsewhere are cached briefly for every process, so typing addresses does not ask a peer each time.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

from django.core.cache import cache

from accounts.validators import domain_of
from federation import discovery

from . import lookup, openpgp

FOUND_TTL = 300  # a correspondent's new key is seen within five minutes
MISSING_TTL = 60
MAX_ADDRESSES = 100


@dataclass(frozen=True)
class KeyAnswer:
    """What the compose page learns about one address."""

    address: str
    status: str  # "found", "none" (it publishes no key in use) or "unavailable" (could not ask now)
    source: str = ""  # "local", "federation" (signed by its domain) or "wkd" (PinnedKey.Source)
    fingerprint: str = ""
    key: str = ""  # armored public key
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _found(address: str, source: str, binary: bytes) -> KeyAnswer:
    fingerprint = _fingerprint(binary)
    return KeyAnswer(
        address=address,
        status="found",
        source=source,
        fingerprint=fingerprint,
        key=openpgp.armor(binary, openpgp.PUBLIC_BLOCK),
    )


def _fingerprint(binary: bytes) -> str:
    packets = openpgp.read_packets(binary)
    return openpgp.parse_key_packet(packets[0]).fingerprint


def _answer(address: str) -> KeyAnswer:
    """Asked where the pinning asks (encryption.lookup): here, the address's Pushmail instance, or its WKD."""
    try:
        found = lookup.find_keys(address)
    except lookup.LookupUnavailable as exc:
        return KeyAnswer(address=address, status="unavailable", detail=str(exc))
    current = [k for k in found if not k.revoked]
    if not current:
        return KeyAnswer(address=address, status="none", detail="has no key in use")
    return _found(address, current[0].source, current[0].key)


def _cache_key(address: str) -> str:
    return "pm-openpgp-key:" + hashlib.sha256(address.encode()).hexdigest()


def key_for(address: str) -> KeyAnswer:
    """The current public key of one (normalized) address, or why there is none."""
    if discovery.is_local(domain_of(address)):
        return _answer(address)
    cached = cache.get(_cache_key(address))
    if isinstance(cached, dict):
        return KeyAnswer(**cached)
    answer = _answer(address)
    if answer.status != "unavailable":
        cache.set(_cache_key(address), answer.to_json(), FOUND_TTL if answer.status == "found" else MISSING_TTL)
    return answer


def keys_for(addresses: list[str]) -> list[KeyAnswer]:
    """The current public key of each address, in order, each once."""
    return [key_for(address) for address in dict.fromkeys(addresses)]
