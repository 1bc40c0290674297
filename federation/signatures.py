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
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.core.cache import caches
from django.http import HttpRequest
from http_message_signatures import HTTPMessageSigner, HTTPMessageVerifier, HTTPSignatureKeyResolver, algorithms
from http_message_signatures.exceptions import HTTPMessageSignaturesException, InvalidSignature

from . import discovery
from .keys import private_key_of, public_key_from_b64

LABEL = "pm"
TAG = "pushmail"
COMPONENTS = ("@method", "@authority", "@path", "@query")


class SignatureRejected(Exception):
    """The request's signature is missing, wrong, stale or replayed."""

    status = 401

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass
class _Message:
    """What the signing library reads: an uppercase method, an absolute URL and headers."""

    method: str
    url: str
    headers: dict[str, str]


class _StaticKeys(HTTPSignatureKeyResolver):
    def __init__(self, private: Ed25519PrivateKey | None = None, public: Ed25519PublicKey | None = None) -> None:
        self.private = private
        self.public = public

    def resolve_private_key(self, key_id: str) -> Ed25519PrivateKey:
        assert self.private is not None
        return self.private

    def resolve_public_key(self, key_id: str) -> Ed25519PublicKey:
        if self.public is None:
            raise InvalidSignature(f"unknown key {key_id}")
        return self.public


def sign(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes | None,
    key_id: str,
    private_key: Ed25519PrivateKey,
    created: datetime | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Return ``headers`` plus Content-Digest (when there is a body), Signature-Input and Signature."""
    message = _Message(method=method.upper(), url=url, headers=dict(headers))
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=_StaticKeys(private=private_key))
    signer.sign(
        message,
        key_id=key_id,
        label=LABEL,
        tag=TAG,
        nonce=nonce or secrets.token_urlsafe(16),
        created=created or datetime.now(UTC),
        covered_component_ids=COMPONENTS,
        body=body if body else None,
    )
    return message.headers


def sign_as(domain: str, *, method: str, url: str, headers: Mapping[str, str], body: bytes | None) -> dict[str, str]:
    """Sign with the current key of a hosted domain."""
    from .keys import current_key

    key = current_key(domain)
    return sign(method=method, url=url, headers=headers, body=body, key_id=key.key_id, private_key=private_key_of(key))


@dataclass(frozen=True)
class Verified:
    domain: str
    key_id: str


def _django_message(request: HttpRequest) -> _Message:
    # Rebuild what the sender signed from what arrived; scheme is not covered,
    # so a TLS-terminating proxy in front does not change the signature base.
    host = request.get_host()
    # @authority never carries a default port (RFC 9421 §2.2.3).
    for default in (":80", ":443"):
        if host.endswith(default):
            host = host[: -len(default)]
    url = f"http://{host}{request.get_full_path()}"
    headers = {name: value for name, value in request.headers.items()}
    return _Message(method=request.method or "GET", url=url, headers=headers)


def signer_domain(key_id: str) -> str:
    domain, sep, rest = key_id.partition("#")
    if not sep or not domain or not rest:
        raise SignatureRejected("unknown_key", f"key id {key_id!r} is not of the form domain#id")
    return domain.lower()


def _key_id_of(message: _Message) -> str:
    import http_sf

    raw = next((v for k, v in message.headers.items() if k.lower() == "signature-input"), None)
    if raw is None:
        raise SignatureRejected("signature_missing", "request is not signed: no Signature-Input header")
    try:
        parsed: Any = http_sf.parse(raw.encode(), tltype="dictionary")
        _members, params = parsed[LABEL]
        return str(params["keyid"])
    except Exception as exc:  # any parse failure is the sender's fault
        raise SignatureRejected("signature_invalid", f"no readable '{LABEL}' signature with a keyid") from exc


def _verify_with(message: _Message, body: bytes, public_key: Ed25519PublicKey) -> Any:
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519, key_resolver=_StaticKeys(public=public_key))
    verifier.max_clock_skew = settings.PUSHMAIL_SIGNATURE_WINDOW
    required = COMPONENTS + (("content-digest",) if body else ())
    results = verifier.verify(
        message, max_age=None, expect_tag=TAG, expect_label=LABEL, require_components=required, body=body
    )
    return results[0]


def _may_refetch(domain: str) -> bool:
    """At most one forced key refetch per peer domain a minute, so forged requests can't drive our traffic."""
    return bool(caches["local"].add(f"pm-key-refetch:{domain}", 1, timeout=60))


def verify_request(request: HttpRequest, body: bytes) -> Verified:
    """Verify a server-to-server request; return the signing domain or raise SignatureRejected."""
    message = _django_message(request)
    if "signature" not in {k.lower() for k in message.headers}:
        raise SignatureRejected("signature_missing", "request is not signed: no Signature header")
    key_id = _key_id_of(message)
    domain = signer_domain(key_id)
    result = None
    for refresh in (False, True):  # a key that fails is refetched at most once
        if refresh and not _may_refetch(domain):
            raise SignatureRejected(
                "unknown_key", f"key {key_id} of {domain} does not verify (keys refetched recently)"
            )
        try:
            instance = discovery.discover(domain, refresh=refresh)
        except discovery.DiscoveryError as exc:
            raise SignatureRejected("unknown_key", f"cannot fetch keys of {domain}: {exc}") from exc
        public_b64 = instance.keys.get(key_id) if instance else None
        if public_b64 is None:
            if refresh or instance is None:
                raise SignatureRejected("unknown_key", f"key {key_id} is not published by {domain}")
            continue
        try:
            result = _verify_with(message, body, public_key_from_b64(public_b64))
            break
        except InvalidSignature as exc:
            text = str(exc)
            if "digest" in text.lower():
                raise SignatureRejected("digest_mismatch", f"Content-Digest does not match the body: {text}") from exc
            if "in the future" in text or "in the past" in text:
                # A clock problem, not a key problem: no refetch, and say so.
                raise SignatureRejected(
                    "signature_expired", f"signature time is outside ±{settings.PUSHMAIL_SIGNATURE_WINDOW}: {text}"
                ) from exc
            if refresh or (instance is not None and instance.local):
                raise SignatureRejected("signature_invalid", f"signature does not verify: {text}") from exc
        except HTTPMessageSignaturesException as exc:
            raise SignatureRejected("signature_invalid", f"malformed signature: {exc}") from exc
    assert result is not None
    created = datetime.fromtimestamp(int(result.parameters["created"]), UTC)
    window: timedelta = settings.PUSHMAIL_SIGNATURE_WINDOW
    if abs(datetime.now(UTC) - created) > window:
        raise SignatureRejected("signature_expired", f"signature created {created.isoformat()} is outside ±{window}")
    nonce = result.nonce
    if not nonce:
        raise SignatureRejected("nonce_missing", "signature has no nonce")
    # The shared cache is the nonce store: an add() that finds the key is a replay,
    # on any web process and across restarts.
    seen_for = int(window.total_seconds() * 2) + 60
    nonce_key = "pm-nonce:" + hashlib.sha256(f"{key_id} {nonce}".encode()).hexdigest()
    if not caches["default"].add(nonce_key, 1, timeout=seen_for):
        raise SignatureRejected("replayed", "nonce already used: request replayed")
    return Verified(domain=domain, key_id=key_id)
