"""Finding the Pushmail instance of a domain, and its keys and limits.

A domain maps to a base URL through ``PUSHMAIL_PEERS`` or else
``https://DOMAIN``; ``GET {base}/.well-known/pushmail`` returns the discovery
document (docs/protocol.md §2). Results are cached per process.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.http import HttpRequest

from . import http
from .keys import public_key_from_b64
from .models import SigningKey

PROTOCOL = "pushmail"
VERSION = 1
WELL_KNOWN_PATH = "/.well-known/pushmail"
_NEGATIVE_TTL = 300


class DiscoveryError(Exception):
    """The domain's instance could not be asked now; try again later."""

    # The same shape as client.PeerError, so callers handle both alike.
    retryable = True
    retry_after: float | None = None


@dataclass(frozen=True)
class Instance:
    domain: str
    api_base: str  # ends with "/"
    keys: dict[str, str] = field(default_factory=dict)  # key id -> base64 public key
    max_notification_bytes: int = 262144
    max_recipients: int = 1000
    local: bool = False
    keys_expire_at: datetime | None = None  # the earliest expiry among the listed keys

    def url(self, path: str) -> str:
        return self.api_base + path.lstrip("/")


def base_url_for(domain: str) -> str:
    return settings.PUSHMAIL_PEERS.get(domain) or f"https://{domain}"


_HOSTED_KEY = "pm-hosted-domains"
_HOSTED_TTL = 10  # another process's adddomain is seen within this many seconds


def local_domain_names() -> set[str]:
    """The domains this instance hosts, cached briefly: every notification asks."""
    from accounts.models import Domain

    cache = caches["local"]
    names: set[str] | None = cache.get(_HOSTED_KEY)
    if names is None:
        names = set(Domain.objects.values_list("name", flat=True))
        cache.set(_HOSTED_KEY, names, _HOSTED_TTL)
    return names


def forget_hosted_domains() -> None:
    caches["local"].delete(_HOSTED_KEY)


def is_local(domain: str) -> bool:
    return domain in local_domain_names()


# Where this instance says it is when PUSHMAIL_BASE_URL is unset (development) and no request tells.
_DEVELOPMENT_BASE_URL = "http://localhost:8000"


def own_base_url(request: HttpRequest | None = None) -> str:
    """This instance's public base URL, without a trailing slash.

    PUSHMAIL_BASE_URL (required with DEBUG off); in development without it, the scheme and host the
    request came to (a Host that ALLOWED_HOSTS accepted), so a peer reaches the instance where it found it.
    """
    if settings.PUSHMAIL_BASE_URL:
        return str(settings.PUSHMAIL_BASE_URL)
    if request is not None:
        return request.build_absolute_uri("/").rstrip("/")
    return _DEVELOPMENT_BASE_URL


def own_document(request: HttpRequest | None = None) -> dict[str, Any]:
    """The discovery document this instance serves (to ``request``)."""
    keys = SigningKey.objects.published().select_related("domain").order_by("domain__name", "created_at")
    return {
        "protocol": PROTOCOL,
        "version": VERSION,
        "versions": [VERSION],
        "domains": sorted(local_domain_names()),
        "api": own_base_url(request) + "/federation/v1/",
        "keys": [
            {
                "id": key.key_id,
                "domain": key.domain.name,
                "algorithm": "ed25519",
                "public_key": key.public_key,
                "created": key.created_at.isoformat().replace("+00:00", "Z"),
                "expires": key.expires_at.isoformat().replace("+00:00", "Z") if key.expires_at else None,
            }
            for key in keys
        ],
        "limits": {
            "max_notification_bytes": settings.PUSHMAIL_MAX_NOTIFICATION_BYTES,
            "max_recipients": settings.PUSHMAIL_MAX_RECIPIENTS,
        },
    }


def _parse_document(domain: str, doc: Any) -> Instance | None:
    """The instance a document describes for ``domain``; None (legacy) for any invalid document."""
    try:
        return _read_document(domain, doc)
    except (TypeError, ValueError, AttributeError, KeyError):
        return None  # e.g. "domains" not a list, a key entry without "id", "limits" not numbers


def _read_document(domain: str, doc: Any) -> Instance | None:
    if not isinstance(doc, dict) or doc.get("protocol") != PROTOCOL:
        return None
    versions = doc.get("versions") or [doc.get("version")]
    domains = doc.get("domains") or []
    if not isinstance(versions, list) or not isinstance(domains, list):
        return None
    if VERSION not in versions or domain not in domains:
        return None
    api = doc.get("api")
    if not isinstance(api, str) or not api.startswith(("https://", "http://")):
        return None
    keys: dict[str, str] = {}
    now = datetime.now(UTC)
    keys_expire_at: datetime | None = None
    for entry in doc.get("keys") or []:
        if not isinstance(entry, dict) or entry.get("algorithm") != "ed25519" or entry.get("domain") != domain:
            continue
        if not isinstance(entry.get("id"), str):
            continue
        try:
            public_key_from_b64(entry["public_key"])
        except (KeyError, ValueError, TypeError, AttributeError):
            continue
        expires = _expiry(entry.get("expires"))
        if expires is not None:
            if expires <= now:
                continue  # a retired key past its expiry signs nothing any more
            keys_expire_at = min(keys_expire_at or expires, expires)
        keys[entry["id"]] = entry["public_key"]
    limits = doc.get("limits") or {}
    return Instance(
        domain=domain,
        api_base=api if api.endswith("/") else api + "/",
        keys=keys,
        max_notification_bytes=int(limits.get("max_notification_bytes", 262144)),
        max_recipients=int(limits.get("max_recipients", 1000)),
        keys_expire_at=keys_expire_at,
    )


def _expiry(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _local_instance(domain: str) -> Instance:
    keys = dict(SigningKey.objects.published().filter(domain__name=domain).values_list("key_id", "public_key"))
    return Instance(
        domain=domain,
        api_base=own_base_url() + "/federation/v1/",
        keys=keys,
        max_notification_bytes=settings.PUSHMAIL_MAX_NOTIFICATION_BYTES,
        max_recipients=settings.PUSHMAIL_MAX_RECIPIENTS,
        local=True,
    )


def discover(domain: str, *, refresh: bool = False) -> Instance | None:
    """Return the domain's instance, ``None`` for a legacy (non-Pushmail) domain.

    Raises DiscoveryError when the answer is unknown for now (a peer that does
    not answer), so callers retry rather than treating the domain as legacy.
    """
    domain = domain.lower()
    if is_local(domain):
        return _local_instance(domain)
    cache = caches["local"]
    cache_key = f"pm-discovery:{domain}"
    if not refresh:
        cached = cache.get(cache_key)
        if cached is not None:
            return cached or None
    instance = _fetch(domain)
    ttl = settings.PUSHMAIL_DISCOVERY_TTL if instance else _NEGATIVE_TTL
    if instance and instance.keys_expire_at:
        # Forget the document when its first retired key expires, so that key stops verifying.
        ttl = max(1, min(ttl, int((instance.keys_expire_at - datetime.now(UTC)).total_seconds())))
    cache.set(cache_key, instance or False, ttl)
    return instance


def _fetch(domain: str) -> Instance | None:
    named_peer = domain in settings.PUSHMAIL_PEERS
    base = base_url_for(domain)
    if not named_peer:
        try:
            socket.getaddrinfo(domain, 443, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            return None  # no such host: not a Pushmail domain
    try:
        response = http.request("GET", base + WELL_KNOWN_PATH, headers={"Accept": "application/json"}, max_bytes=65536)
    except http.OutboundError as exc:
        if named_peer or exc.retryable:
            raise DiscoveryError(str(exc)) from exc
        return None
    if response.status in (404, 410):
        return None
    if response.status != 200:
        if named_peer or response.status >= 500 or response.status == 429:
            raise DiscoveryError(f"discovery for {domain} answered {response.status}")
        return None
    try:
        doc = response.json()
    except ValueError:
        return None
    return _parse_document(domain, doc)
