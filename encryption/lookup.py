"""Finding a correspondent's OpenPGP key: on this instance, at their Pushmail instance, or in their WKD."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from accounts.validators import domain_of
from federation import discovery, http, publickeys

from . import openpgp, selectors
from .models import PinnedKey

log = logging.getLogger(__name__)

MAX_WKD_BYTES = 256 * 1024


class LookupUnavailable(Exception):
    """The correspondent's keys cannot be looked up now; trying later may succeed."""


@dataclass(frozen=True)
class FoundKey:
    fingerprint: str
    key: bytes
    revoked: bool
    source: str


def _checked(address: str, key: bytes, source: str) -> FoundKey | None:
    try:
        facts = openpgp.check_public_key(key, address=address)
    except openpgp.KeyProblem as exc:
        log.info("key offered for %s by %s refused: %s", address, source, exc)
        return None
    if not facts.can_encrypt:
        return None
    return FoundKey(fingerprint=facts.fingerprint, key=key, revoked=facts.revoked, source=source)


def _wkd(address: str) -> list[bytes]:
    """The keys in the address's Web Key Directory: the advanced layout first, then the direct one (over https)."""
    local, _, domain = address.rpartition("@")
    hashed = openpgp.wkd_hash(local)
    urls = [
        f"https://openpgpkey.{domain}/.well-known/openpgpkey/{domain}/hu/{hashed}?l={local}",
        f"https://{domain}/.well-known/openpgpkey/hu/{hashed}?l={local}",
    ]
    unavailable = None
    for url in urls:
        try:
            response = http.request("GET", url, max_bytes=MAX_WKD_BYTES)
        except http.OutboundError as exc:
            unavailable = exc
            continue
        if response.status == 200:
            try:
                return openpgp.split_keys(response.content)
            except openpgp.KeyProblem:
                return []
        if response.status >= 500 or response.status == 429:
            unavailable = http.OutboundError(f"{url} answered {response.status}")
    if unavailable is not None and unavailable.retryable:
        raise LookupUnavailable(str(unavailable))
    return []


def find_keys(address: str) -> list[FoundKey]:
    """Every usable key published for ``address``, the one in use first; [] when none is published."""
    domain = domain_of(address)
    if discovery.is_local(domain):
        found = [
            _checked(address, bytes(k.public_key), PinnedKey.Source.LOCAL)
            for k in selectors.published_keys_for_address(address=address)
        ]
        return [k for k in found if k]
    try:
        instance = discovery.discover(domain)
    except discovery.DiscoveryError as exc:
        raise LookupUnavailable(str(exc)) from exc
    if instance is not None:
        try:
            published = publickeys.fetch_public_keys(instance=instance, address=address)
        except publickeys.KeysUnavailable as exc:
            raise LookupUnavailable(str(exc)) from exc
        except publickeys.KeyDocumentError as exc:
            log.warning("key document for %s refused: %s", address, exc)
            raise LookupUnavailable(f"the key document of {address} was refused: {exc}") from exc
        checked = [_checked(address, p.key, PinnedKey.Source.FEDERATION) for p in published]
        return [k for k in checked if k and k.fingerprint in {p.fingerprint for p in published}]
    found = [_checked(address, key, PinnedKey.Source.WKD) for key in _wkd(address)]
    return sorted((k for k in found if k), key=lambda k: k.revoked)
