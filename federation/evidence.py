"""Signed requests kept as received: proof, checkable by anyone with the origin's key, that it sent them.

The instance keeps each notification it accepted for at least one local
recipient, and each withdrawal of a message it knows, exactly as it arrived:
the body bytes, the signature headers, the request target the signature base
is built from, and the key id and public key the signature verified with (so
the proof outlives a key rotation). Refused requests are not kept: they are no
evidence of mail to our users, and must not let a peer fill our disk.

Keeping one costs a single INSERT (after the notification's own commit); a periodic sweep deletes rows older than
PUSHMAIL_EVIDENCE_DAYS in bulk. The wire form of a kept request inside an abuse
report (an ``application/http`` request, RFC 9112 §10.2) is built here too, and
specified in docs/protocol.md Appendix C.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Iterable
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from django.conf import settings
from django.db import connection
from django.http import HttpRequest
from django.utils import timezone

from .keys import public_key_from_b64
from .models import SignedRequest
from .signatures import LABEL, Verified, signed_url

#: Headers kept besides the signature's own; none of them is signed in version 1 (§3.1).
KEPT_HEADERS = ("Host", "Date", "Content-Type", "User-Agent")

__all__ = [
    "KEPT_HEADERS",
    "http_request_bytes",
    "keep",
    "purge_expired",
    "signature_base",
    "signature_params",
    "verifies",
]


def keep(
    *,
    request: HttpRequest,
    body: bytes,
    signer: Verified,
    kind: str,
    global_id: uuid.UUID,
    sender: str,
    local_domain: str = "",
) -> None:
    """Keep a verified request exactly as received: one INSERT, nothing when the same body is already kept."""
    url = urlsplit(signed_url(request))
    headers = request.headers
    _insert_once(
        SignedRequest(
            kind=kind,
            origin_domain=signer.domain,
            global_id=global_id,
            sender=sender,
            local_domain=local_domain,
            received_at=timezone.now(),
            source_ip=request.META.get("REMOTE_ADDR") or None,
            method=(request.method or "").upper(),
            authority=url.netloc.lower(),
            path=url.path or "/",
            query="?" + url.query,
            content_digest=headers.get("Content-Digest", ""),
            signature_input=headers.get("Signature-Input", ""),
            signature=headers.get("Signature", ""),
            headers={name: headers[name] for name in KEPT_HEADERS if name in headers},
            key_id=signer.key_id,
            public_key=signer.public_key,
            body=body,
        )
    )


def _insert_once(row: SignedRequest) -> None:
    """One INSERT that does nothing on a retry of the same request (the first copy is the evidence).

    Not bulk_create(ignore_conflicts=True): that wraps its INSERT in a transaction of its own,
    two more round trips on the ingest path.
    """
    fields = [f for f in SignedRequest._meta.concrete_fields if not f.primary_key]
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column or f.name) for f in fields)
    marks = ", ".join(["%s"] * len(fields))
    values = [f.get_db_prep_save(f.pre_save(row, add=True), connection) for f in fields]
    table = quote(SignedRequest._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({columns}) VALUES ({marks}) ON CONFLICT DO NOTHING",  # noqa: S608 - names from the model
            values,
        )


def purge_expired() -> int:
    """Delete kept requests older than PUSHMAIL_EVIDENCE_DAYS, in one statement; return how many."""
    cutoff = timezone.now() - settings.PUSHMAIL_EVIDENCE
    deleted, _ = SignedRequest.objects.filter(received_at__lt=cutoff).delete()
    return deleted


# --- checking and exporting ---------------------------------------------------------------


def signature_params(signature_input: str) -> str:
    """The serialized inner list of the ``pm`` member of a Signature-Input header (what follows ``pm=``)."""
    for member in _members(signature_input):
        label, sep, value = member.partition("=")
        if sep and label.strip() == LABEL:
            return value.strip()
    raise ValueError(f"Signature-Input has no {LABEL!r} member")


def _signature_bytes(signature: str) -> bytes:
    for member in _members(signature):
        label, sep, value = member.partition("=")
        value = value.strip()
        if sep and label.strip() == LABEL and value.startswith(":") and value.endswith(":"):
            return base64.b64decode(value[1:-1])
    raise ValueError(f"Signature has no {LABEL!r} byte sequence")


def _members(header: str) -> Iterable[str]:
    """The members of a structured-field dictionary, split at the commas outside quoted strings."""
    start, quoted, escaped = 0, False, False
    for i, char in enumerate(header):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            yield header[start:i].strip()
            start = i + 1
    yield header[start:].strip()


def _covered(params: str) -> list[str]:
    inner = params[params.index("(") + 1 : params.index(")")]
    return [item.strip('"') for item in inner.split()]


def signature_base(row: SignedRequest) -> bytes:
    """The signature base of a kept request (docs/protocol.md §3.2), rebuilt from what was kept."""
    params = signature_params(row.signature_input)
    values = {
        "@method": row.method,
        "@authority": row.authority,
        "@path": row.path,
        "@query": row.query,
        "content-digest": row.content_digest,
    }
    lines = []
    for component in _covered(params):
        if component not in values:
            raise ValueError(f"covered component {component!r} was not kept")
        lines.append(f'"{component}": {values[component]}')
    lines.append(f'"@signature-params": {params}')
    return "\n".join(lines).encode("ascii")


def verifies(row: SignedRequest) -> bool:
    """True when the kept signature verifies with the kept key and the kept digest matches the kept body."""
    digest = "sha-256=:" + base64.b64encode(hashlib.sha256(bytes(row.body)).digest()).decode() + ":"
    if bytes(row.body) and row.content_digest != digest:
        return False
    try:
        public_key_from_b64(row.public_key).verify(_signature_bytes(row.signature), signature_base(row))
    except (InvalidSignature, ValueError):
        return False
    return True


def http_request_bytes(row: SignedRequest) -> bytes:
    """The kept request as an HTTP/1.1 request message (``application/http``): head, CRLF CRLF, the body bytes.

    ``Host`` carries the ``@authority`` of the signature base; the request target is
    ``@path`` followed by the query, if any. The other headers are as received.
    """
    target = row.path + (row.query if row.query != "?" else "")
    head = [f"{row.method} {target} HTTP/1.1", f"Host: {row.authority}"]
    for name in ("Date", "Content-Type", "User-Agent"):
        if name in row.headers:
            head.append(f"{name}: {row.headers[name]}")
    if row.content_digest:
        head.append(f"Content-Digest: {row.content_digest}")
    head.append(f"Signature-Input: {row.signature_input}")
    head.append(f"Signature: {row.signature}")
    body = bytes(row.body)
    head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
