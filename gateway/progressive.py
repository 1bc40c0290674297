"""The progressive step, receiving side: the ``Pushmail`` header of mail received by SMTP.

A Pushmail instance that sends by SMTP names its sending domain in a
``Pushmail: DOMAIN`` header (docs/protocol.md, "The Pushmail header"). The
header is believed only as a hint, and only when this message's SPF or DKIM
check passed for a domain aligned with DOMAIN (the results the gateway wrote in
Authentication-Results); the federation app then runs discovery of DOMAIN, and
only a valid discovery document makes replies go over the federation API.
"""

from __future__ import annotations

import email.parser
import email.policy
import logging
import re

from federation import learning

from . import auth

__all__ = ["HEADER", "learn_from_header", "pushmail_domain", "vouched_by"]

HEADER = "Pushmail"

log = logging.getLogger(__name__)

# A DNS name in ASCII (an IDN as its A-labels): two labels at least, no trailing dot.
_DOMAIN = re.compile(r"(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")


def pushmail_domain(raw: bytes) -> str | None:
    """The domain its ``Pushmail`` header names; None for no header, a malformed one, or several that differ."""
    end = raw.find(b"\r\n\r\n")
    head = raw if end < 0 else raw[: end + 2]
    if HEADER.lower().encode() not in head.lower():
        return None  # the common case, without parsing the header
    parsed = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(head)
    values = {str(value).strip().lower().rstrip(".") for value in parsed.get_all(HEADER, [])}
    if len(values) != 1:
        return None
    [value] = values
    return value if _DOMAIN.fullmatch(value) else None


def vouched_by(domain: str, results: auth.AuthResults) -> str:
    """The SPF or DKIM pass aligned (relaxed, as DMARC aligns) with ``domain``, as text; "" when none is."""
    organization = auth.organizational_domain(domain)
    for signature in results.dkim:
        if signature.result == "pass" and auth.organizational_domain(signature.domain) == organization:
            return f"dkim=pass header.d={signature.domain} header.s={signature.selector}"
    if results.spf == "pass" and results.spf_domain and auth.organizational_domain(results.spf_domain) == organization:
        return f"spf=pass smtp.mailfrom domain {results.spf_domain}"
    return ""


def learn_from_header(*, raw: bytes, results: auth.AuthResults, sender: str) -> None:
    """Tell the federation app about an authenticated ``Pushmail`` header; ignore any other.

    Called once the message is committed: a failure here is logged and never
    changes the SMTP answer (the message is stored; the hint is only a hint).
    """
    domain = pushmail_domain(raw)
    if domain is None:
        return
    vouching = vouched_by(domain, results)
    if not vouching:
        log.info("ignored the Pushmail header naming %s from %s: no SPF or DKIM pass for it", domain, sender)
        return
    try:
        learning.heard_pushmail_header(domain=domain, sender=sender, authenticated_by=vouching)
    except Exception:
        log.exception("could not note the Pushmail header naming %s", domain)
