"""Finding the Pushmail instance of a domain, and its keys and limits.

A domain maps to a base URL through ``PUSHMAIL_PEERS`` or else
``https://DOMAIN``; ``GET {base}/.well-known/pushmail`` returns the discovery
document (docs/protocol.md §2). Answers are cached for every process of the
instance (the shared cache) and in each process, for as long as the peer's
``Cache-Control`` allows (within ``PUSHMAIL_DISCOVERY_TTL``); after that the
document is asked for again with ``If-None-Match``, and a ``304`` keeps it.

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

import base64
import gzip
import hashlib
import json
import logging
import math
import re
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.db import connections
from django.http import HttpRequest, HttpResponse

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
# A document is used this long at least without asking again, whatever its Cache-Control says.
MIN_FRESH_SECONDS = 60
# A stale document with an ETag is kept this long past its freshness, for a conditional request.
STALE_KEEP_SECONDS = 7 * 86400
# Longer ETags from a peer are not kept (nor sent back).
MAX_ETAG_LENGTH = 200

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


def own_max_age(document: dict[str, Any]) -> int:
    """How long peers may use ``document`` without asking again: ``PUSHMAIL_DISCOVERY_MAX_AGE``, and
    never past the expiry of a key it lists, so no cache holds a key beyond its expiry."""
    max_age: int = settings.PUSHMAIL_DISCOVERY_MAX_AGE
    now = datetime.now(UTC)
    for key in document.get("keys") or []:
        expires = _expiry(key.get("expires"))
        if expires is not None:
            max_age = min(max_age, max(0, int((expires - now).total_seconds())))
    return max(0, max_age)


# gzip-code documents at least this long (as for the other endpoints, §5.1).
_GZIP_FROM_BYTES = 200


def document_response(document: dict[str, Any], *, accepts_gzip: bool) -> HttpResponse:
    """The answer serving ``document``: JSON, gzip-coded when asked, with a strong ETag and Cache-Control.

    The ETag is ``"sha256-"`` and the unpadded base64url SHA-256 of the exact bytes sent. The
    gzip coding is deterministic (no time stamp, no file name), so the same document always gives
    the same bytes and the same ETag.
    """
    body = json.dumps(document, separators=(",", ":")).encode("utf-8")
    coding = None
    if accepts_gzip and len(body) >= _GZIP_FROM_BYTES:
        coded = gzip.compress(body, compresslevel=9, mtime=0)
        if len(coded) < len(body):
            body, coding = coded, "gzip"
    response = HttpResponse(body, content_type="application/json")
    if coding:
        response["Content-Encoding"] = coding
    response["ETag"] = entity_tag(body)
    response["Cache-Control"] = f"public, max-age={own_max_age(document)}"
    return response


def entity_tag(body: bytes) -> str:
    """The strong ETag of the exact bytes ``body``."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode("ascii")
    return f'"sha256-{digest}"'


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

    A fresh answer cached by any process serves; otherwise the document is
    fetched (conditionally, when one is held) and cached for every process.
    With ``refresh`` the peer is asked in any case. Raises DiscoveryError when
    the answer is unknown for now (a peer that does not answer), so callers
    retry rather than treating the domain as legacy.
    """
    domain = domain.lower()
    if is_local(domain):
        return _local_instance(domain)
    if not refresh:
        known = _cached(domain)
        if known is not None:
            return known.instance
    prior = _revalidation_base(domain)
    return _store(domain, _request(domain, prior, revalidate=refresh)).instance


# --- the cache every process shares ---------------------------------------------------------
#
# One entry per domain under ``pm-discovery:DOMAIN`` in two caches: the shared one ("default",
# Redis or a table: every process of the instance) holds the document as served, its ETag and
# until when it is fresh; each process's own ("local") holds the same and the parsed instance.
# A fresh entry is used without asking the peer. A stale one with an ETag is kept a while longer,
# so the next request is conditional (If-None-Match) and a 304 only moves its freshness on.


@dataclass(frozen=True)
class _Known:
    """A domain's discovery answer as cached: the document (None: legacy), its ETag, fresh until when."""

    document: Any
    etag: str | None
    until: float
    instance: Instance | None = None  # parsed from ``document``; kept in the process's own cache only

    @property
    def fresh(self) -> bool:
        return self.until > time.time()


@dataclass(frozen=True)
class _Fetched:
    """What one discovery request gave: a document (None: legacy), or "not modified" (``prior``'s)."""

    document: Any
    etag: str | None
    fresh_for: int | None  # seconds, from the answer's Cache-Control and Age; None when it has none
    not_modified: bool = False


def _own_entry(domain: str) -> _Known | None:
    value = caches["local"].get(_doc_key(domain))
    return value if isinstance(value, _Known) else None


def _shared_entry(domain: str) -> _Known | None:
    value = caches["default"].get(_doc_key(domain))
    if not isinstance(value, dict) or not isinstance(value.get("until"), (int, float)):
        return None
    etag = value.get("etag")
    return _Known(document=value.get("document"), etag=etag if isinstance(etag, str) else None, until=value["until"])


def _cached(domain: str) -> _Known | None:
    """A fresh answer for ``domain`` from this process's cache or else the shared one; None if neither has one."""
    own = _own_entry(domain)
    if own is not None and own.fresh and (own.instance is not None or not _learned_since_legacy(domain)):
        return own
    shared = _shared_entry(domain)
    if shared is None or not shared.fresh:
        return None
    known = replace(shared, instance=_instance_of(domain, shared, own))
    _keep_own(domain, known)
    return known


def _instance_of(domain: str, known: _Known, held: _Known | None) -> Instance | None:
    """``known``'s instance: ``held``'s when it was parsed from the same bytes (same ETag) and is still valid."""
    if held is not None and held.etag is not None and held.etag == known.etag and _still_valid(held.instance):
        return held.instance
    return None if known.document is None else _parse_document(domain, known.document)


def _still_valid(instance: Instance | None) -> bool:
    # Parsing drops expired keys: an instance holding a key past its expiry must be parsed again.
    return instance is None or instance.keys_expire_at is None or instance.keys_expire_at > datetime.now(UTC)


def _revalidation_base(domain: str) -> _Known | None:
    """The held document a request can ask "modified since?" about: the shared cache's, else this process's."""
    for known in (_shared_entry(domain), _own_entry(domain)):
        if known is not None and known.etag is not None and known.document is not None:
            return known
    return None


def _store(domain: str, fetched: _Fetched) -> _Known:
    """Cache what a request gave, for this process and every other, and return it parsed."""
    own = _own_entry(domain)
    known = _Known(document=fetched.document, etag=fetched.etag, until=0.0)
    instance = _instance_of(domain, known, own)
    known = replace(known, instance=instance, until=time.time() + _ttl_for(instance, fetched.fresh_for))
    _keep_own(domain, known)
    _keep_shared(domain, known)
    return known


def _timeout(known: _Known) -> int:
    fresh_for = max(1, math.ceil(known.until - time.time()))
    # A stale document with an ETag stays a while, so asking again is a conditional request.
    return fresh_for + (STALE_KEEP_SECONDS if known.etag is not None else 0)


def _keep_own(domain: str, known: _Known) -> None:
    caches["local"].set(_doc_key(domain), known, _timeout(known))


def _keep_shared(domain: str, known: _Known) -> None:
    entry = {"document": known.document, "etag": known.etag, "until": known.until}
    caches["default"].set(_doc_key(domain), entry, _timeout(known))


def _ttl_for(instance: Instance | None, fresh_for: int | None = None) -> int:
    """How long an answer is used without asking again (docs/protocol.md §2.3, "Caching")."""
    if instance is None:
        return _NEGATIVE_TTL
    ttl: int = settings.PUSHMAIL_DISCOVERY_TTL
    if fresh_for is not None:
        ttl = min(ttl, max(MIN_FRESH_SECONDS, fresh_for))
    if instance.keys_expire_at:
        # Forget the document when its first retired key expires, so that key stops verifying.
        ttl = max(1, min(ttl, int((instance.keys_expire_at - datetime.now(UTC)).total_seconds())))
    return ttl


def fresh_for(headers: dict[str, str]) -> int | None:
    """Seconds an answer may be used without asking again, from its ``Cache-Control`` and ``Age``; None if unsaid."""
    directives = [part.strip().lower() for part in headers.get("cache-control", "").split(",")]
    seconds: int | None = None
    for directive in directives:
        name, _, value = directive.partition("=")
        name = name.strip()
        if name in ("no-store", "no-cache"):
            return 0
        if name == "max-age" and value.strip().strip('"').isdigit():
            seconds = int(value.strip().strip('"'))
    if seconds is None:
        return None
    age = headers.get("age", "").strip()
    return max(0, seconds - (int(age) if age.isdigit() else 0))


_ENTITY_TAG = re.compile(r'(W/)?"[\x21\x23-\x7e]*"')


def _entity_tag(value: str | None) -> str | None:
    """The answer's ETag when it is a well-formed one we can send back; None otherwise."""
    if value is None:
        return None
    value = value.strip()
    return value if len(value) <= MAX_ETAG_LENGTH and _ENTITY_TAG.fullmatch(value) else None


def _request(domain: str, prior: _Known | None, *, revalidate: bool = False) -> _Fetched:
    """Ask the domain for its discovery document; no database access (it runs in lookup threads).

    With ``prior`` (a held document and its ETag) the request is conditional, and a
    ``304`` gives ``prior``'s document. With ``revalidate``, caches on the way must
    ask the origin too. Raises DiscoveryError when the answer is unknown for now.
    """
    named_peer = domain in settings.PUSHMAIL_PEERS
    base = base_url_for(domain)
    if not named_peer:
        try:
            socket.getaddrinfo(domain, 443, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            return _Fetched(None, None, None)  # no such host: not a Pushmail domain
    headers = {"Accept": "application/json"}
    if prior is not None and prior.etag is not None:
        headers["If-None-Match"] = prior.etag
    if revalidate:
        headers["Cache-Control"] = "no-cache"
    try:
        response = http.request("GET", base + WELL_KNOWN_PATH, headers=headers, max_bytes=65536)
    except http.OutboundError as exc:
        if named_peer or exc.retryable:
            raise DiscoveryError(str(exc)) from exc
        return _Fetched(None, None, None)
    if response.status == 304 and prior is not None and "If-None-Match" in headers:
        return _Fetched(prior.document, prior.etag, fresh_for(response.headers), not_modified=True)
    if response.status in (404, 410):
        return _Fetched(None, None, None)
    if response.status != 200:
        if named_peer or response.status >= 500 or response.status == 429:
            raise DiscoveryError(f"discovery for {domain} answered {response.status}")
        return _Fetched(None, None, None)
    try:
        document = response.json()
    except ValueError:
        document = None
    if document is None:
        return _Fetched(None, None, None)
    return _Fetched(document, _entity_tag(response.headers.get("etag")), fresh_for(response.headers))


# --- lookups for request handlers -------------------------------------------------------------

_lookup_threads = threading.BoundedSemaphore(_MAX_LOOKUP_THREADS)


def _doc_key(domain: str) -> str:
    return f"pm-discovery:{domain}"


def _wait_key(domain: str) -> str:
    return f"pm-discovery-wait:{domain}"


def lookup(domain: str, *, refresh: bool = False, budget: float, key_id: str | None = None) -> Instance | None:
    """The domain's instance, like :func:`discover`, for a handler that must not wait on a slow peer.

    With ``refresh`` the peer is asked whatever is cached (conditionally, when a
    document is held), unless another process has cached a newer document that
    lists ``key_id``. Raises :class:`RetryLater` when the answer is not known
    within ``budget`` seconds, when another request is already looking the
    domain up, or when a lookup failed less than ``FAILED_LOOKUP_TTL`` seconds ago.
    """
    domain = domain.lower()
    if is_local(domain):
        return _local_instance(domain)
    if not refresh:
        known = _cached(domain)
        if known is not None:
            return known.instance
    elif key_id is not None:
        newer = _newer_with_key(domain, key_id)
        if newer is not None:
            return newer
    return _look_up_now(domain, budget, revalidate=refresh)


def _newer_with_key(domain: str, key_id: str) -> Instance | None:
    """The shared cache's fresh document when it is not this process's and lists ``key_id``.

    After a rotation, the first process to see the new key fetches the new
    document; the others find it here instead of asking the peer again.
    """
    own, shared = _own_entry(domain), _shared_entry(domain)
    if shared is None or not shared.fresh or shared.document is None:
        return None
    if own is not None and own.document == shared.document:
        return None  # nothing newer: ask the peer
    instance = _instance_of(domain, shared, own)
    if instance is None or key_id not in instance.keys:
        return None
    _keep_own(domain, replace(shared, instance=instance))
    return instance


def _retry_after(until: Any) -> int:
    return math.ceil(until - time.time()) if isinstance(until, (int, float)) else FAILED_LOOKUP_TTL


class _Lookup:
    """One discovery fetch in a thread, and the request waiting for it, if it still is."""

    def __init__(self, domain: str, prior: _Known | None, *, revalidate: bool) -> None:
        self.domain = domain
        self.prior = prior
        self.revalidate = revalidate
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.outcome: tuple[str, Any] | None = None
        self.abandoned = False

    def run(self) -> None:
        outcome: tuple[str, Any] = ("failed", "discovery failed")
        try:
            outcome = ("ok", _request(self.domain, self.prior, revalidate=self.revalidate))
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


def _look_up_now(domain: str, budget: float, *, revalidate: bool = False) -> Instance | None:
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
    job = _Lookup(domain, _revalidation_base(domain), revalidate=revalidate)
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


def _settle(domain: str, outcome: tuple[str, Any]) -> Instance | None:
    """Store a finished lookup's outcome where every process sees it, and return it."""
    kind, value = outcome
    if kind != "ok":
        _remember_failure(domain)
        raise RetryLater(f"cannot fetch the keys of {domain}: {value}", retry_after=FAILED_LOOKUP_TTL)
    known = _store(domain, value)
    caches["default"].delete(_wait_key(domain))
    return known.instance


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
    instance = _settle(domain, ("ok", _request(domain, _revalidation_base(domain), revalidate=True)))
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
