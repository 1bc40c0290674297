"""HTTP Message Signatures (RFC 9421) with Ed25519, and Content-Digest (RFC 9530).

Every request between instances carries a signature labelled ``pm`` with the
tag ``pushmail`` covering ``@method @authority @path @query`` and, when the
request has a body, ``content-digest``; its parameters are ``created``,
``keyid``, ``alg="ed25519"``, ``nonce`` and ``tag``. See docs/protocol.md §3.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature as BadEd25519Signature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings
from django.core.cache import caches
from django.core.exceptions import ValidationError
from django.http import HttpRequest
from http_message_signatures import (
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureAlgorithm,
    HTTPSignatureKeyResolver,
    algorithms,
)
from http_message_signatures.exceptions import HTTPMessageSignaturesException, InvalidSignature

from accounts.validators import normalize_domain

from . import discovery
from .keys import current_key, private_key_of, public_key_from_b64

LABEL = "pm"
TAG = "pushmail"
COMPONENTS = ("@method", "@authority", "@path", "@query")
# How far past its `expires` a signature is still accepted: clock skew only (§3.5).
EXPIRES_SKEW_SECONDS = 5


class SignatureRejected(Exception):
    """The request's signature is missing, wrong, stale or replayed (401), or cannot be checked now (503)."""

    def __init__(self, code: str, detail: str, *, status: int = 401, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status
        self.retry_after = retry_after


@dataclass
class _Message:
    """What the signing library reads: an uppercase method, an absolute URL and headers."""

    method: str
    url: str
    headers: dict[str, str]


class _PrivateKey(HTTPSignatureKeyResolver):
    def __init__(self, private: Ed25519PrivateKey) -> None:
        self.private = private

    def resolve_private_key(self, key_id: str) -> Ed25519PrivateKey:
        return self.private


def sign(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes | None,
    key_id: str,
    private_key: Ed25519PrivateKey,
    created: datetime | None = None,
    expires: datetime | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Return ``headers`` plus Content-Digest (when there is a body), Signature-Input and Signature."""
    message = _Message(method=method.upper(), url=url, headers=dict(headers))
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=_PrivateKey(private_key))
    signer.sign(
        message,
        key_id=key_id,
        label=LABEL,
        tag=TAG,
        nonce=nonce or secrets.token_urlsafe(16),
        created=created or datetime.now(UTC),
        expires=expires,
        covered_component_ids=COMPONENTS,
        body=body if body else None,
    )
    return message.headers


def sign_as(domain: str, *, method: str, url: str, headers: Mapping[str, str], body: bytes | None) -> dict[str, str]:
    """Sign with the current key of a hosted domain."""
    key = current_key(domain)
    return sign(method=method, url=url, headers=headers, body=body, key_id=key.key_id, private_key=private_key_of(key))


@dataclass(frozen=True)
class Verified:
    domain: str
    key_id: str
    #: The base64 Ed25519 public key the signature verified with (kept as evidence, federation/evidence.py).
    public_key: str = ""


def signed_url(request: HttpRequest) -> str:
    """The URL whose ``@authority``, ``@path`` and ``@query`` a signer signed, rebuilt from what arrived (§3.3)."""
    # The scheme is not covered, so a TLS-terminating proxy in front does not change the signature base.
    host = request.get_host()
    # @authority never carries a default port (RFC 9421 §2.2.3).
    for default in (":80", ":443"):
        if host.endswith(default):
            host = host[: -len(default)]
    return f"http://{host}{request.get_full_path()}"


def _django_message(request: HttpRequest) -> _Message:
    headers = {name: value for name, value in request.headers.items()}
    return _Message(method=request.method or "GET", url=signed_url(request), headers=headers)


def signer_domain(key_id: str) -> str:
    domain, sep, rest = key_id.partition("#")
    if not sep or not domain or not rest:
        raise SignatureRejected("unknown_key", f"key id {key_id!r} is not of the form domain#id")
    domain = domain.lower()
    try:
        valid = normalize_domain(domain) == domain
    except ValidationError:
        valid = False
    if not valid:
        raise SignatureRejected("unknown_key", f"key id {key_id[:300]!r} does not start with a domain name")
    return domain


# --- the structure check: everything but the Ed25519 check, before any key lookup -------------


class _ClockProblem(InvalidSignature):
    """`created` or `expires` is outside what the verifier's clock allows."""


class _Capture:
    """Where the key-free pass leaves the signature base and the signature it would have checked."""

    def __init__(self) -> None:
        self.base = b""
        self.signature = b""


class _CaptureBase(HTTPSignatureAlgorithm):
    """Stands in for Ed25519 in the key-free pass: it records the base instead of checking it."""

    algorithm_id = "ed25519"

    def __init__(self, public_key: Any = None, private_key: Any = None) -> None:
        if not isinstance(public_key, _Capture):
            raise HTTPMessageSignaturesException("the structure check takes no real key")
        self.capture = public_key

    def sign(self, message: bytes) -> bytes:
        raise HTTPMessageSignaturesException("the structure check does not sign")

    def verify(self, signature: bytes, message: bytes) -> None:
        if len(signature) != 64:
            raise InvalidSignature(f"an Ed25519 signature is 64 bytes, this one is {len(signature)}")
        self.capture.base = message
        self.capture.signature = signature


class _CaptureKeys(HTTPSignatureKeyResolver):
    def __init__(self) -> None:
        self.capture = _Capture()

    def resolve_public_key(self, key_id: str) -> _Capture:
        return self.capture

    def resolve_private_key(self, key_id: str) -> None:
        raise HTTPMessageSignaturesException("the structure check does not sign")


class _StructureVerifier(HTTPMessageVerifier):
    def validate_created_and_expires(self, sig_input: Any, max_age: Any = None) -> None:
        # `created` gets the clock window both ways; `expires` only a few seconds of skew.
        params = sig_input.params
        if "created" not in params:
            raise InvalidSignature('signature has no "created" parameter')
        now = datetime.now(UTC).timestamp()
        window = settings.PUSHMAIL_SIGNATURE_WINDOW.total_seconds()
        created = params["created"]
        if created > now + window:
            raise _ClockProblem(f"signature created {created - now:.0f}s in the future, over the {window:g}s window")
        if created < now - window:
            raise _ClockProblem(f"signature created {now - created:.0f}s ago, over the {window:g}s window")
        expires = params.get("expires")
        if expires is not None and expires + EXPIRES_SKEW_SECONDS < now:
            raise _ClockProblem(f"signature expired {now - expires:.0f}s ago (expires={expires})")


@dataclass(frozen=True)
class _WellFormed:
    key_id: str
    nonce: str
    base: bytes
    signature: bytes


def _check_structure(message: _Message, body: bytes) -> _WellFormed:
    """Everything about the signature that no key can change: parse, parameters, coverage, time, digest."""
    keys = _CaptureKeys()
    verifier = _StructureVerifier(signature_algorithm=_CaptureBase, key_resolver=keys)
    required = COMPONENTS + (("content-digest",) if body else ())
    try:
        results = verifier.verify(
            message, max_age=None, expect_tag=TAG, expect_label=LABEL, require_components=required, body=body
        )
    except _ClockProblem as exc:
        raise SignatureRejected("signature_expired", str(exc)) from exc
    except HTTPMessageSignaturesException as exc:
        text = str(exc)
        if "digest" in text.lower():
            raise SignatureRejected(
                "digest_mismatch", f"Content-Digest missing, not covered or not the body's: {text}"
            ) from exc
        raise SignatureRejected("signature_invalid", f"malformed signature: {text}") from exc
    params = results[0].parameters
    nonce = params.get("nonce")
    if not nonce:
        raise SignatureRejected("nonce_missing", "signature has no nonce")
    return _WellFormed(
        key_id=str(params["keyid"]), nonce=str(nonce), base=keys.capture.base, signature=keys.capture.signature
    )


# --- the key ---------------------------------------------------------------------------------


def _signs(checked: _WellFormed, public_b64: str | None) -> bool:
    if public_b64 is None:
        return False
    try:
        public_key_from_b64(public_b64).verify(checked.signature, checked.base)
    except BadEd25519Signature:
        return False
    return True


def _instance(domain: str, *, refresh: bool, key_id: str | None = None) -> discovery.Instance | None:
    try:
        budget = settings.PUSHMAIL_KEY_LOOKUP_BUDGET_SECONDS
        return discovery.lookup(domain, refresh=refresh, budget=budget, key_id=key_id)
    except discovery.RetryLater as exc:
        raise SignatureRejected(
            "keys_unavailable",
            f"cannot check the signature now: {exc}; try again in {exc.retry_after}s",
            status=503,
            retry_after=int(exc.retry_after or discovery.FAILED_LOOKUP_TTL),
        ) from exc


def _may_refetch(domain: str) -> bool:
    """At most one forced key refetch per peer domain a minute, so forged requests can't drive our traffic."""
    return bool(caches["local"].add(f"pm-key-refetch:{domain}", 1, timeout=60))


def verify_request(request: HttpRequest, body: bytes) -> Verified:
    """Verify a server-to-server request; return the signing domain or raise SignatureRejected.

    The signature's structure, time and Content-Digest are checked before any
    key is looked up, so their answer never depends on the state of a key cache,
    and a request no key could make valid never causes a discovery fetch.
    """
    message = _django_message(request)
    present = {k.lower() for k in message.headers}
    for header in ("Signature", "Signature-Input"):
        if header.lower() not in present:
            raise SignatureRejected("signature_missing", f"request is not signed: no {header} header")
    checked = _check_structure(message, body)
    key_id = checked.key_id
    domain = signer_domain(key_id)
    instance = _instance(domain, refresh=False)
    if instance is None:
        raise SignatureRejected("unknown_key", f"{domain} has no Pushmail instance")
    known = key_id in instance.keys
    public_b64 = instance.keys.get(key_id)
    if not _signs(checked, public_b64):
        # The cached document may predate a key rotation: fetch it again, once.
        if instance.local or not _may_refetch(domain):
            refreshed = None
        elif known:
            try:
                refreshed = _instance(domain, refresh=True)
            except SignatureRejected:
                refreshed = None  # the key we hold does not verify it; a new document could not be had now
        else:
            # Another process may have fetched the document that lists it already (after a rotation).
            refreshed = _instance(domain, refresh=True, key_id=key_id)
        public_b64 = refreshed.keys.get(key_id) if refreshed else None
        if not _signs(checked, public_b64):
            if known or public_b64 is not None:
                raise SignatureRejected("signature_invalid", f"signature does not verify with key {key_id}")
            raise SignatureRejected("unknown_key", f"key {key_id} is not published by {domain}")
    # The shared cache is the nonce store: an add() that finds the key is a replay,
    # on any web process and across restarts.
    window = settings.PUSHMAIL_SIGNATURE_WINDOW
    seen_for = int(window.total_seconds() * 2) + 60
    nonce_key = "pm-nonce:" + hashlib.sha256(f"{key_id} {checked.nonce}".encode()).hexdigest()
    if not caches["default"].add(nonce_key, 1, timeout=seen_for):
        raise SignatureRejected("replayed", "nonce already used: request replayed")
    return Verified(domain=domain, key_id=key_id, public_key=public_b64 or "")
