"""Correspondents' current OpenPGP public keys, for the compose page: may this message be encrypted to them?

Where each address's key comes from:
- a mailbox hosted here: its key in use (the OpenPGPKey table);
- a mailbox at another Pushmail instance: that instance's key document, signed by its domain
  (docs/protocol.md §14, federation.publickeys);
- any other domain: its Web Key Directory (direct layout) over HTTPS, when it answers.

Answers from elsewhere are cached briefly for every process, so typing addresses does not ask a peer each time.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from typing import Any

from django.core.cache import cache

from accounts.validators import domain_of
from federation import discovery, http, publickeys

from . import openpgp, selectors

log = logging.getLogger(__name__)

FOUND_TTL = 300  # a correspondent's new key is seen within five minutes
MISSING_TTL = 60
MAX_ADDRESSES = 100
WKD_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class KeyAnswer:
    """What the compose page learns about one address."""

    address: str
    status: str  # "found", "none" (it publishes no key in use) or "unavailable" (could not ask now)
    source: str = ""  # "local", "pushmail" (signed by its domain) or "wkd"
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


def _local(address: str) -> KeyAnswer:
    current = [k for k in selectors.published_keys_for_address(address=address) if k.revoked_at is None]
    if not current:
        return KeyAnswer(address=address, status="none", detail="has no key in use")
    return _found(address, "local", bytes(current[0].public_key))


def _pushmail(address: str, instance: discovery.Instance) -> KeyAnswer:
    try:
        keys = publickeys.fetch_public_keys(instance=instance, address=address)
    except publickeys.KeysUnavailable as exc:
        return KeyAnswer(address=address, status="unavailable", detail=str(exc))
    except publickeys.KeyDocumentError as exc:
        log.warning("refused the key document of %s: %s", address, exc)
        return KeyAnswer(address=address, status="unavailable", detail=f"its key document was refused: {exc}")
    current = [k for k in keys if not k.revoked]
    if not current:
        return KeyAnswer(address=address, status="none", detail="has no key in use")
    return _found(address, "pushmail", current[0].key)


def _wkd(address: str) -> KeyAnswer:
    local, domain = address.split("@", 1)
    url = f"https://{domain}/.well-known/openpgpkey/hu/{openpgp.wkd_hash(local)}?l={local}"
    try:
        response = http.request("GET", url, max_bytes=WKD_MAX_BYTES)
    except http.OutboundError as exc:
        return KeyAnswer(address=address, status="none", detail=f"no Web Key Directory answered ({exc})")
    if response.status != 200:
        return KeyAnswer(address=address, status="none", detail=f"its Web Key Directory answered {response.status}")
    try:
        openpgp.split_key(openpgp.read_packets(response.content))
        return _found(address, "wkd", response.content)
    except (ValueError, IndexError) as exc:
        return KeyAnswer(address=address, status="none", detail=f"its Web Key Directory held no usable key ({exc})")


def _remote(address: str) -> KeyAnswer:
    try:
        instance = discovery.discover(domain_of(address))
    except discovery.DiscoveryError as exc:
        return KeyAnswer(address=address, status="unavailable", detail=str(exc))
    if instance is None:
        return _wkd(address)
    return _pushmail(address, instance)


def _cache_key(address: str) -> str:
    return "pm-openpgp-key:" + hashlib.sha256(address.encode()).hexdigest()


def key_for(address: str) -> KeyAnswer:
    """The current public key of one (normalized) address, or why there is none."""
    if discovery.is_local(domain_of(address)):
        return _local(address)
    cached = cache.get(_cache_key(address))
    if isinstance(cached, dict):
        return KeyAnswer(**cached)
    answer = _remote(address)
    if answer.status != "unavailable":
        cache.set(_cache_key(address), answer.to_json(), FOUND_TTL if answer.status == "found" else MISSING_TTL)
    return answer


def keys_for(addresses: list[str]) -> list[KeyAnswer]:
    """The current public key of each address, in order, each once."""
    return [key_for(address) for address in dict.fromkeys(addresses)]
