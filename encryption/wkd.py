"""The Web Key Directory (draft-koch-openpgp-webkey-service): users' public keys for GnuPG, Thunderbird and others.

Direct layout:   ``https://DOMAIN/.well-known/openpgpkey/hu/HASH?l=LOCAL``
Advanced layout: ``https://openpgpkey.DOMAIN/.well-known/openpgpkey/DOMAIN/hu/HASH?l=LOCAL``

``HASH`` is the z-base-32 SHA-1 of the lowercased local part. The answer is the binary
(not armored) public key: the one in use first, then revoked ones, so that a client that
held an old key learns it was revoked.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from federation.discovery import local_domain_names

from . import selectors
from .openpgp import wkd_hash

ADVANCED_PREFIX = "openpgpkey."


def _host_domain(request: HttpRequest) -> str:
    host = request.get_host().rsplit(":", 1)[0].lower().rstrip(".")
    if host.startswith(ADVANCED_PREFIX) and host[len(ADVANCED_PREFIX) :] in local_domain_names():
        return host[len(ADVANCED_PREFIX) :]
    return host


def _answer(request: HttpRequest, body: bytes, content_type: str, status: int = 200) -> HttpResponse:
    response = HttpResponse(b"" if request.method == "HEAD" else body, content_type=content_type, status=status)
    if request.method == "HEAD":
        response["Content-Length"] = str(len(body))
    response["Access-Control-Allow-Origin"] = "*"
    response["Cache-Control"] = "public, max-age=300"
    return response


def _not_found(request: HttpRequest, detail: str) -> HttpResponse:
    return _answer(request, detail.encode() + b"\n", "text/plain; charset=utf-8", status=404)


def _refuse_method(request: HttpRequest) -> HttpResponse | None:
    if request.method in ("GET", "HEAD"):
        return None
    response = _answer(request, b"use GET or HEAD\n", "text/plain; charset=utf-8", status=405)
    response["Allow"] = "GET, HEAD"
    return response


def _key(request: HttpRequest, domain: str, hashed: str) -> HttpResponse:
    refused = _refuse_method(request)
    if refused:
        return refused
    if domain not in local_domain_names():
        return _not_found(request, f"{domain} is not hosted here")
    local = request.GET.get("l")
    if local is not None and wkd_hash(local) != hashed:
        return _not_found(request, "the l parameter does not match the hash")
    keys = selectors.published_keys(domain=domain, wkd_hash=hashed)
    if not keys:
        return _not_found(request, "no key for this address")
    return _answer(request, b"".join(bytes(key.public_key) for key in keys), "application/octet-stream")


@csrf_exempt
def direct_key(request: HttpRequest, hashed: str) -> HttpResponse:
    """``/.well-known/openpgpkey/hu/HASH``, at the mail domain's own host (or at openpgpkey.DOMAIN)."""
    return _key(request, _host_domain(request), hashed)


@csrf_exempt
def advanced_key(request: HttpRequest, domain: str, hashed: str) -> HttpResponse:
    """``/.well-known/openpgpkey/DOMAIN/hu/HASH``: the domain is in the path; the host must not name another."""
    domain = domain.lower()
    host = _host_domain(request)
    if host in local_domain_names() and host != domain:
        return _not_found(request, f"this host serves {host}, not {domain}")
    return _key(request, domain, hashed)


@csrf_exempt
def direct_policy(request: HttpRequest) -> HttpResponse:
    """The policy file whose presence says the direct layout is served; empty: no submission protocol."""
    return _refuse_method(request) or _policy(request, _host_domain(request))


@csrf_exempt
def advanced_policy(request: HttpRequest, domain: str) -> HttpResponse:
    return _refuse_method(request) or _policy(request, domain.lower())


def _policy(request: HttpRequest, domain: str) -> HttpResponse:
    if domain not in local_domain_names():
        return _not_found(request, f"{domain} is not hosted here")
    return _answer(request, b"", "text/plain; charset=utf-8")
