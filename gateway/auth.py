"""Who sent it: SPF, DKIM and DMARC checks through DNS, and the Authentication-Results header.

SPF with pyspf (RFC 7208: the client address, the MAIL FROM domain, and the
HELO name when MAIL FROM is empty), DKIM with dkimpy (RFC 6376), DMARC here
(RFC 7489: the ``_dmarc`` TXT record of the From domain or of its
organizational domain, from the Public Suffix List in publicsuffix2; a pass is
an SPF or DKIM pass whose domain aligns with the From domain). Every DNS
question goes through one dnspython resolver, pointed at
``PUSHMAIL_DNS_RESOLVER`` when set (tests run their own DNS server). Its answers,
and NXDOMAIN, are cached in the process for the TTL the DNS gave them: mail from
one domain asks the DNS once per TTL, not once per message.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass
from typing import IO, Any

import dkim
import dns.exception
import dns.rdatatype
import dns.resolver
import spf
from django.conf import settings
from publicsuffix2 import get_sld

__all__ = ["AuthResults", "DmarcResult", "authenticate", "resolver"]


class _Cache(dns.resolver.Cache):
    """dnspython's cache (each answer for its TTL), but at most an hour, and a negative answer
    without an SOA record is not kept at all (RFC 2308 §5)."""

    def put(self, key: Any, value: dns.resolver.Answer) -> None:
        if value.rrset is None and not any(r.rdtype == dns.rdatatype.SOA for r in value.response.authority):
            return
        value.expiration = min(value.expiration, time.time() + 3600)
        super().put(key, value)


@functools.cache
def _resolver(spec: str, timeout: float) -> dns.resolver.Resolver:
    if not spec:
        found = dns.resolver.Resolver()
    else:
        host, _, port = spec.rpartition(":")
        found = dns.resolver.Resolver(configure=False)
        found.nameservers = [host.strip("[]")]
        found.port = int(port)
    found.lifetime = timeout
    found.timeout = timeout
    found.cache = _Cache()  # thread-safe
    return found


def resolver() -> dns.resolver.Resolver:
    """The resolver every check asks (``PUSHMAIL_DNS_RESOLVER`` host:port, else the system's)."""
    return _resolver(settings.PUSHMAIL_DNS_RESOLVER, settings.PUSHMAIL_DNS_TIMEOUT)


class DnsTempError(Exception):
    """The DNS did not answer in time, or its servers failed: try the message again later."""


def txt_records(name: str) -> list[bytes]:
    """The TXT records at ``name`` (each record's strings joined); [] when there are none."""
    try:
        answer = resolver().resolve(name, "TXT", raise_on_no_answer=False, search=False)
    except dns.resolver.NXDOMAIN:
        return []
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        raise DnsTempError(f"DNS lookup of {name} failed: {exc}") from exc
    if answer.rrset is None:
        return []
    return [b"".join(record.strings) for record in answer.rrset]


# --- SPF ---------------------------------------------------------------------------------------


def _spf_lookup(name: str, qtype: str, *args: Any, **kwargs: Any) -> list[tuple[tuple[str, str], Any]]:
    """pyspf's DNS lookup, through our resolver (pyspf calls it as ``spf.DNSLookup``)."""
    found: list[tuple[tuple[str, str], Any]] = []
    try:
        answer = resolver().resolve(name, qtype, raise_on_no_answer=False, search=False)
    except dns.resolver.NXDOMAIN:
        return found
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        raise spf.TempError(f"DNS {exc}") from exc
    for rdata in answer.rrset or ():
        if qtype in ("A", "AAAA"):
            found.append(((name, qtype), rdata.address))
        elif qtype == "MX":
            found.append(((name, qtype), (rdata.preference, rdata.exchange)))
        elif qtype == "PTR":
            found.append(((name, qtype), rdata.target.to_text(True)))
        elif qtype in ("TXT", "SPF"):
            found.append(((name, qtype), rdata.strings))
    return found


spf.DNSLookup = _spf_lookup


def check_spf(*, client_ip: str, mail_from: str, helo: str) -> tuple[str, str]:
    """SPF's result (pass, fail, softfail, neutral, none, temperror, permerror) and the domain checked."""
    sender = mail_from or f"postmaster@{helo}"
    result, _explanation = spf.check2(i=client_ip, s=sender, h=helo, timeout=settings.PUSHMAIL_DNS_TIMEOUT)
    return str(result), sender.rpartition("@")[2].lower()


# --- DKIM --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DkimResult:
    result: str  # pass, fail, permerror (a signature or key too broken to check), temperror, none
    domain: str = ""
    selector: str = ""


def _dkim_txt(name: bytes, timeout: float = 5) -> bytes | None:
    try:
        records = txt_records(name.decode("ascii", errors="replace").rstrip("."))
    except DnsTempError as exc:
        raise dkim.DnsTimeoutError(str(exc)) from exc
    return records[0] if records else None


_SIG_TAG = re.compile(rb"(?:^|;)\s*([ds])\s*=\s*([^;\s]+)")


def _signed(head: bytes) -> bool:
    end = head.find(b"\r\n\r\n")
    return b"dkim-signature:" in head[: end if end >= 0 else len(head)].lower()


def check_dkim(raw: bytes | IO[bytes]) -> list[DkimResult]:
    """One result per DKIM-Signature (at most 5 checked), or [none] when the message has none.

    ``raw`` may be a binary file: only its header is read, unless it is signed
    (dkimpy verifies a message held in memory).
    """
    if not isinstance(raw, bytes):
        raw.seek(0)
        head = b""
        while (line := raw.readline(1024 * 1024)) and line != b"\r\n" and len(head) < 1024 * 1024:
            head += line
        if not _signed(head + b"\r\n"):
            return [DkimResult("none")]
        raw.seek(0)
        raw = raw.read()
    if not _signed(raw):
        return [DkimResult("none")]  # without parsing (and copying) a message that has no signature
    verifier = dkim.DKIM(raw)
    count = sum(1 for name, _value in verifier.headers if name.lower() == b"dkim-signature")
    if not count:
        return [DkimResult("none")]
    results = []
    for index in range(min(count, 5)):
        try:
            ok = verifier.verify(idx=index, dnsfunc=_dkim_txt)
            outcome = "pass" if ok else "fail"
        except dkim.DnsTimeoutError:
            outcome = "temperror"
        except dkim.ValidationError:  # e.g. the body hash does not match: changed on the way
            outcome = "fail"
        except dkim.DKIMException:  # a signature or key too broken to check
            outcome = "permerror"
        domain, selector = _signature_tags(verifier, index)
        results.append(DkimResult(outcome, domain, selector))
    return results


def _signature_tags(verifier: dkim.DKIM, index: int) -> tuple[str, str]:
    signatures = [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]
    tags = dict(_SIG_TAG.findall(re.sub(rb"\s+", b"", signatures[index])))
    return tags.get(b"d", b"").decode("ascii", "replace").lower(), tags.get(b"s", b"").decode("ascii", "replace")


# --- DMARC -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DmarcResult:
    result: str  # pass, fail, none, temperror, permerror
    domain: str  # the From domain
    policy: str = "none"  # what the domain asks for a failure: none, quarantine, reject


def organizational_domain(domain: str) -> str:
    """The registered domain (RFC 7489 §3.2); under a suffix the list does not know, the last two labels."""
    domain = domain.lower().rstrip(".")
    found = get_sld(domain, strict=True)
    if found:
        return str(found).lower()
    return ".".join(domain.split(".")[-2:])


def _aligned(domain: str, from_domain: str, mode: str) -> bool:
    if mode == "s":
        return domain == from_domain
    return organizational_domain(domain) == organizational_domain(from_domain)


def _dmarc_record(domain: str) -> dict[str, str] | None:
    for record in txt_records(f"_dmarc.{domain}"):
        text = record.decode("ascii", errors="replace")
        if re.match(r"v\s*=\s*DMARC1\s*(;|$)", text):
            return {
                key.strip().lower(): value.strip().lower()
                for key, _, value in (part.partition("=") for part in text.split(";"))
                if key.strip()
            }
    return None


def check_dmarc(*, from_domain: str, spf_result: str, spf_domain: str, dkim: list[DkimResult]) -> DmarcResult:
    if not from_domain:
        return DmarcResult("permerror", "")  # no single From address: nothing to align with
    try:
        record = _dmarc_record(from_domain)
        organization = organizational_domain(from_domain)
        if record is None and organization != from_domain:
            record = _dmarc_record(organization)
            if record is not None and "sp" in record:
                record["p"] = record["sp"]
    except DnsTempError:
        return DmarcResult("temperror", from_domain)
    if record is None:
        return DmarcResult("none", from_domain)
    policy = record.get("p", "none")
    if policy not in ("none", "quarantine", "reject"):
        policy = "none"
    passed = (spf_result == "pass" and _aligned(spf_domain, from_domain, record.get("aspf", "r"))) or any(
        d.result == "pass" and _aligned(d.domain, from_domain, record.get("adkim", "r")) for d in dkim
    )
    return DmarcResult("pass" if passed else "fail", from_domain, policy)


# --- All three, and the header -----------------------------------------------------------------


@dataclass(frozen=True)
class AuthResults:
    spf: str
    spf_domain: str
    dkim: list[DkimResult]
    dmarc: DmarcResult
    mail_from: str
    helo: str

    def header_value(self, authserv_id: str) -> str:
        """The Authentication-Results value (RFC 8601), folded one method a line."""
        # Both come from the client: only characters a header property may hold are written.
        spf_property = (
            f"smtp.mailfrom={safe_token(self.mail_from)}" if self.mail_from else f"smtp.helo={safe_token(self.helo)}"
        )
        parts = [authserv_id, f"spf={self.spf} {spf_property}"]
        for signature in self.dkim:
            if signature.result == "none":
                parts.append("dkim=none")
            else:
                parts.append(f"dkim={signature.result} header.d={signature.domain} header.s={signature.selector}")
        if self.dmarc.domain:
            parts.append(f"dmarc={self.dmarc.result} (p={self.dmarc.policy}) header.from={self.dmarc.domain}")
        else:
            parts.append(f"dmarc={self.dmarc.result}")
        return ";\r\n\t".join(parts)

    @property
    def temporary_failure(self) -> bool:
        return self.dmarc.result == "temperror"


def authenticate(
    *,
    raw: bytes | IO[bytes],
    client_ip: str,
    mail_from: str,
    helo: str,
    from_domain: str,
) -> AuthResults:
    """SPF, DKIM and DMARC for one message; DNS failures become temperror results, never exceptions."""
    try:
        spf_result, spf_domain = check_spf(client_ip=client_ip, mail_from=mail_from, helo=helo)
    except Exception:  # noqa: BLE001 - pyspf raises on a broken address or record: no SPF verdict
        spf_result, spf_domain = "permerror", (mail_from or helo).rpartition("@")[2].lower()
    dkim_results = check_dkim(raw)
    dmarc = check_dmarc(from_domain=from_domain, spf_result=spf_result, spf_domain=spf_domain, dkim=dkim_results)
    return AuthResults(spf_result, spf_domain, dkim_results, dmarc, mail_from, helo)


def safe_token(value: str) -> str:
    """A value fit for a header property (no spaces, semicolons or controls)."""
    return re.sub(r"[^\w.@+=-]", "", value)[:255]
