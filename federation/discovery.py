"""Finding the Pushmail instance of a domain, and its keys and limits.

A domain maps to a base URL through ``PUSHMAIL_PEERS`` or else
``https://DOMAIN``; ``GET {base}/.well-known/pushmail`` returns the discovery
document (docs/protocol.md §2). Results are cached per process.

Background work (delivery, fetches) calls :func:`discover`, which may wait for
the whole outbound deadline. Request handlers verifying a signature call
:func:`lookup`, which never waits longer than a short budget: the first lookup
of a domain runs in a thread the handler waits for at most
``PUSHMAIL_KEY_LOOKUP_BUDGET_SECONDS``; a lookup that is under way, or that
failed or ran out of time a moment ago, is answered at once with
:class:`RetryLater`. That state lives in the shared cache, so every process
sees it, and a document one process fetched serves the others.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.db import connections
from django.http import HttpRequest

from accounts.models import Domain

from . import http, payloads
from .keys import public_key_from_b64
from .models import SigningKey

PROTOCOL = "pushmail"
VERSION = 1
WELL_KNOWN_PATH = "/.well-known/pushmail"
_NEGATIVE_TTL = 300
# How long a legacy answer is kept: what hears of a domain again waits this long before asking again.
LEGACY_CACHE_SECONDS = _NEGATIVE_TTL
# A lookup that failed, or did not answer within the budget, is not tried again for this long.
FAILED_LOOKUP_TTL = 60
# Lookups running in threads of one process at most, whatever the domains.
_MAX_LOOKUP_THREADS = 8

logger = logging.getLogger(__name__)


class DiscoveryError(Exception):
    """The domain's instance could not be asked now; try again later."""

    # The same shape as client.PeerError, so callers handle both alike.
    retryable = True
    retry_after: float | None = None


class RetryLater(DiscoveryError):
    """A request handler must not wait for this domain's keys: ask again in ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)


@dataclass(frozen=True)
class Instance:
    domain: str
    api_base: str  # ends with "/"
    keys: dict[str, str] = field(default_factory=dict)  # key id -> base64 public key
    max_notification_bytes: int = 262144
    max_recipients: int = 1000
    max_batch_notifications: int = 0  # 0: takes no batches (§5.4.1), one notification per request
    max_batch_bytes: int = 0
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
            **_batch_limits(),
        },
    }


def _batch_limits() -> dict[str, int]:
    """The batch limits this instance advertises; none when it takes no batches (§5.4.1)."""
    if settings.PUSHMAIL_MAX_BATCH_NOTIFICATIONS < 2:
        return {}
    return {
        "max_batch_notifications": settings.PUSHMAIL_MAX_BATCH_NOTIFICATIONS,
        "max_batch_bytes": settings.PUSHMAIL_MAX_BATCH_BYTES,
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
        max_notification_bytes=payloads.limit_value(limits.get("max_notification_bytes"), "limits", 262144),
        max_recipients=payloads.limit_value(limits.get("max_recipients"), "limits", 1000),
        keys_expire_at=keys_expire_at,
        **_read_batch_limits(limits),
    )


def _read_batch_limits(limits: dict[str, Any]) -> dict[str, Any]:
    """Batches only to an instance that lists both limits, as integers, room for 2 at least (§5.4.1)."""
    count, size = limits.get("max_batch_notifications"), limits.get("max_batch_bytes")
    if type(count) is not int or type(size) is not int or not (2 <= count <= 2147483647 and 1 <= size <= 2147483647):
        return {}
    return {"max_batch_notifications": count, "max_batch_bytes": size}


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
        if cached is not None and (cached or not _learned_since_legacy(domain)):
            return cached or None
    instance = _fetch(domain)
    cache.set(cache_key, instance or False, _ttl_for(instance))
    return instance


def _ttl_for(instance: Instance | None) -> int:
    ttl: int = settings.PUSHMAIL_DISCOVERY_TTL if instance else _NEGATIVE_TTL
    if instance and instance.keys_expire_at:
        # Forget the document when its first retired key expires, so that key stops verifying.
        ttl = max(1, min(ttl, int((instance.keys_expire_at - datetime.now(UTC)).total_seconds())))
    return ttl


def _fetch(domain: str) -> Instance | None:
    document = _fetch_document(domain)
    return None if document is None else _parse_document(domain, document)


def _fetch_document(domain: str) -> Any:
    """The domain's discovery document as JSON, or None for a legacy domain; no database access."""
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
        return response.json()
    except ValueError:
        return None


# --- lookups for request handlers -------------------------------------------------------------

_lookup_threads = threading.BoundedSemaphore(_MAX_LOOKUP_THREADS)


def _doc_key(domain: str) -> str:
    return f"pm-discovery:{domain}"


def _wait_key(domain: str) -> str:
    return f"pm-discovery-wait:{domain}"


def lookup(domain: str, *, refresh: bool = False, budget: float) -> Instance | None:
    """The domain's instance, like :func:`discover`, for a handler that must not wait on a slow peer.

    With ``refresh`` the cached documents are skipped. Raises :class:`RetryLater`
    when the answer is not known within ``budget`` seconds, when another
    request is already looking the domain up, or when a lookup failed less
    than ``FAILED_LOOKUP_TTL`` seconds ago.
    """
    domain = domain.lower()
    if is_local(domain):
        return _local_instance(domain)
    local = caches["local"]
    if not refresh:
        cached = local.get(_doc_key(domain))
        if cached is not None and (cached or not _learned_since_legacy(domain)):
            return cached or None
        # Another process may have fetched it.
        shared = caches["default"].get(_doc_key(domain))
        if isinstance(shared, dict) and shared.get("until", 0) > time.time():
            instance = None if shared["document"] is None else _parse_document(domain, shared["document"])
            local.set(_doc_key(domain), instance or False, max(1, int(shared["until"] - time.time())))
            return instance
    return _look_up_now(domain, budget)


def _retry_after(until: Any) -> int:
    return math.ceil(until - time.time()) if isinstance(until, (int, float)) else FAILED_LOOKUP_TTL


class _Lookup:
    """One discovery fetch in a thread, and the request waiting for it, if it still is."""

    def __init__(self, domain: str) -> None:
        self.domain = domain
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.outcome: tuple[str, Any] | None = None
        self.abandoned = False

    def run(self) -> None:
        outcome: tuple[str, Any] = ("failed", "discovery failed")
        try:
            outcome = ("ok", _fetch_document(self.domain))
        except DiscoveryError as exc:
            outcome = ("failed", str(exc))
        except Exception:
            logger.exception("discovery of %s failed", self.domain)
        finally:
            _lookup_threads.release()
            with self.lock:
                self.outcome = outcome
                abandoned = self.abandoned
            self.done.set()
        if abandoned:
            # The request stopped waiting: store the outcome here, for the next request on any process.
            try:
                _settle(self.domain, outcome)
            except RetryLater:
                pass
            except Exception:
                logger.exception("could not store the discovery answer for %s", self.domain)
            finally:
                connections.close_all()  # this thread's own connection, if the shared cache is a table

    def wait(self, budget: float) -> tuple[str, Any] | None:
        """The outcome within ``budget`` seconds, or None: then the thread stores it when it comes."""
        self.done.wait(max(budget, 0.0))
        with self.lock:
            if self.outcome is None:
                self.abandoned = True
                _remember_failure(self.domain)  # before the thread can store a success
            return self.outcome


def _look_up_now(domain: str, budget: float) -> Instance | None:
    shared = caches["default"]
    # One lookup per domain at a time across all processes: the key also says when to ask again.
    # It expires by itself after the outbound deadline, in case this process dies holding it.
    hold = math.ceil(settings.PUSHMAIL_HTTP_TIMEOUT) + 5
    if not shared.add(_wait_key(domain), time.time() + budget + 1, timeout=hold):
        raise RetryLater(
            f"the keys of {domain} are being looked up or could not be fetched",
            retry_after=_retry_after(shared.get(_wait_key(domain))),
        )
    if not _lookup_threads.acquire(blocking=False):
        shared.delete(_wait_key(domain))
        raise RetryLater("too many key lookups are under way here", retry_after=math.ceil(budget) + 1)
    job = _Lookup(domain)
    try:
        threading.Thread(target=job.run, name=f"pm-lookup:{domain}", daemon=True).start()
    except RuntimeError:
        _lookup_threads.release()
        shared.delete(_wait_key(domain))
        raise RetryLater("cannot start a key lookup now", retry_after=math.ceil(budget) + 1) from None
    outcome = job.wait(budget)
    if outcome is None:
        raise RetryLater(
            f"{domain} did not answer its discovery request within {budget:g}s", retry_after=FAILED_LOOKUP_TTL
        )
    return _settle(domain, outcome)


def _settle(domain: str, outcome: Any) -> Instance | None:
    """Store a finished lookup's outcome where every process sees it, and return it."""
    kind, value = outcome
    if kind != "ok":
        _remember_failure(domain)
        raise RetryLater(f"cannot fetch the keys of {domain}: {value}", retry_after=FAILED_LOOKUP_TTL)
    instance = None if value is None else _parse_document(domain, value)
    ttl = _ttl_for(instance)
    caches["local"].set(_doc_key(domain), instance or False, ttl)
    caches["default"].set(_doc_key(domain), {"document": value, "until": time.time() + ttl}, ttl)
    caches["default"].delete(_wait_key(domain))
    return instance


def _remember_failure(domain: str) -> None:
    caches["default"].set(_wait_key(domain), time.time() + FAILED_LOOKUP_TTL, FAILED_LOOKUP_TTL)


# --- learned from mail by SMTP (docs/protocol.md, "The Pushmail header") ----------------------


def _learned_key(domain: str) -> str:
    return f"pm-learned:{domain}"


def rediscover(domain: str) -> Instance | None:
    """Fetch ``domain``'s document now, past any cached answer, and make every process use it.

    Called when an authenticated SMTP message says its domain runs Pushmail: a
    valid document listing the domain is the proof. When there is one, every
    process that cached the domain as legacy asks again on its next send
    (:func:`_learned_since_legacy`). Raises DiscoveryError when the answer is
    unknown for now.
    """
    domain = domain.lower()
    if is_local(domain):
        return _local_instance(domain)
    instance = _settle(domain, ("ok", _fetch_document(domain)))
    if instance is not None:
        # Outlives every legacy answer cached before it (those last _NEGATIVE_TTL at most).
        caches["default"].set(_learned_key(domain), time.time(), _NEGATIVE_TTL + 60)
    return instance


def _learned_since_legacy(domain: str) -> bool:
    """True, once per confirmation, when a domain this process cached as legacy was since found to run Pushmail."""
    learned = caches["default"].get(_learned_key(domain))
    if learned is None:
        return False
    seen_key = f"pm-learned-seen:{domain}"
    local = caches["local"]
    if local.get(seen_key) == learned:
        return False
    local.set(seen_key, learned, _NEGATIVE_TTL + 60)
    return True
