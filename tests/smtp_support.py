"""What the SMTP tests share: a small authoritative DNS server on loopback, DKIM keys, a TLS certificate.

The DNS server (dnslib, in-process, UDP and TCP on one port) answers from a dict
of records and NXDOMAIN for any other name, so the gateway's real DNS code
paths (pyspf, dkimpy, the DMARC lookup, all through dnspython) run against it.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dkim
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from dnslib import QTYPE, RR, TXT, A, DNSRecord
from dnslib.server import BaseResolver, DNSServer


class Zone(BaseResolver):
    """Records by (name, type): ``zone.add("example.org", "TXT", "v=spf1 -all")``."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        # 0: tests change the records between messages, so no resolver may cache an answer.
        # A benchmark sets a TTL such as real zones have.
        self.ttl = 0
        self.asked: collections.Counter[tuple[str, str]] = collections.Counter()

    def add(self, name: str, rtype: str, value: str) -> None:
        self.records.setdefault((name.lower().rstrip("."), rtype), []).append(value)

    def clear(self) -> None:
        self.records.clear()
        self.asked.clear()
        self.ttl = 0

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).lower().rstrip(".")
        rtype = QTYPE[request.q.qtype]
        self.asked[(name, rtype)] += 1
        known = any(key[0] == name for key in self.records)
        for value in self.records.get((name, rtype), []):
            if rtype == "TXT":
                # Long values (DKIM keys) as several strings of at most 255 bytes, as zone files do.
                chunks = [value[i : i + 255] for i in range(0, len(value), 255)] or [""]
                reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(chunks), ttl=self.ttl))
            elif rtype == "A":
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(value), ttl=self.ttl))
        if not known:
            reply.header.rcode = 3  # NXDOMAIN
        return reply


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def dns_server() -> Iterator[tuple[Zone, str]]:
    """A running DNS server for a new Zone, and its ``host:port`` for PUSHMAIL_DNS_RESOLVER."""
    zone = Zone()
    for _ in range(5):
        port = free_port()
        try:
            udp = DNSServer(zone, port=port, address="127.0.0.1", logger=_Quiet())
            tcp = DNSServer(zone, port=port, address="127.0.0.1", tcp=True, logger=_Quiet())
            break
        except OSError:
            continue
    else:
        raise RuntimeError("no free port for the test DNS server")
    for server in (udp, tcp):
        threading.Thread(target=server.server.serve_forever, daemon=True).start()
    try:
        yield zone, f"127.0.0.1:{port}"
    finally:
        for server in (udp, tcp):
            server.server.shutdown()
            server.server.server_close()


class _Quiet:
    def log_recv(self, *a: object) -> None: ...
    def log_send(self, *a: object) -> None: ...
    def log_request(self, *a: object) -> None: ...
    def log_reply(self, *a: object) -> None: ...
    def log_truncated(self, *a: object) -> None: ...
    def log_error(self, *a: object) -> None: ...
    def log_data(self, *a: object) -> None: ...


# --- DKIM ---------------------------------------------------------------------------------------


def dkim_key() -> tuple[bytes, str]:
    """A new RSA key: the private key PEM for dkim.sign, and the TXT record value that publishes it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode()


def dkim_sign(message: bytes, *, domain: str, selector: str, private_key: bytes) -> bytes:
    signature = dkim.sign(
        message,
        selector.encode(),
        domain.encode(),
        private_key,
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    return signature + message


# --- TLS ---------------------------------------------------------------------------------------


def self_signed(directory: Path, name: str = "mx.alpha.test") -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)
