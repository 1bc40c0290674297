"""What the SMTP tests share: a small authoritative DNS server on loopback, DKIM keys, a TLS certificate,
Postfix run from a directory of its own.

The DNS server (dnslib, in-process, UDP and TCP on one port) answers from a dict
of records and NXDOMAIN for any other name, so the gateway's real DNS code
paths (pyspf, dkimpy, the DMARC lookup, all through dnspython) run against it.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dkim
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from dnslib import AAAA, MX, QTYPE, RR, TXT, A, DNSRecord
from dnslib.server import BaseResolver, DNSServer


class Zone(BaseResolver):
    """Records by (name, type): ``zone.add("example.org", "TXT", "v=spf1 -all")``,
    ``zone.add("example.org", "MX", "10 mx.example.org")`` (``"0 ."`` is a null MX)."""

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
            elif rtype == "AAAA":
                reply.add_answer(RR(request.q.qname, QTYPE.AAAA, rdata=AAAA(value), ttl=self.ttl))
            elif rtype == "MX":
                preference, _, host = value.partition(" ")
                reply.add_answer(RR(request.q.qname, QTYPE.MX, rdata=MX(host, int(preference)), ttl=self.ttl))
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


# --- Postfix -----------------------------------------------------------------------------------


def wait_for_greeting(port: int, what: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60) -> None:
    """Wait until an SMTP server on loopback ``port`` greets with 220."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                if sock.makefile("rb").readline().startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{what} did not answer on port {port}")


class PostfixServer:
    """Debian's Postfix run from a directory of its own: its main.cf (``settings`` added to a loopback,
    no-DNS base), Debian's master.cf with smtpd on a free loopback port and no chroot, its own queue."""

    def __init__(self, settings: list[str], *, hostname: str, files: dict[str, str] | None = None) -> None:
        # Postfix's daemons run as the postfix user: the directory must be theirs to enter.
        self.dir = Path(tempfile.mkdtemp(prefix="pushmail-postfix-"))
        self.dir.chmod(0o755)
        self.port = free_port()
        (self.dir / "queue").mkdir()
        (self.dir / "data").mkdir()
        shutil.chown(self.dir / "data", user="postfix")
        # Lookup tables and the like that main.cf names as $config_directory/NAME.
        for name, content in (files or {}).items():
            (self.dir / name).write_text(content)
        base = [
            "compatibility_level = 3.6",
            f"queue_directory = {self.dir}/queue",
            f"data_directory = {self.dir}/data",
            "mail_owner = postfix",
            "setgid_group = postdrop",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            f"myhostname = {hostname}",
            "mydestination =",
            "smtp_host_lookup = native",
            "disable_dns_lookups = yes",
            f"maillog_file = {self.dir}/maillog",
            f"maillog_file_prefixes = {self.dir}",
            "mynetworks = 127.0.0.0/8",
            "alias_maps =",
            "alias_database =",
            "local_recipient_maps =",
            # Refused mail is not bounced anywhere: there is no DNS for the sender's domain.
            "bounce_queue_lifetime = 0",
        ]
        (self.dir / "main.cf").write_text("\n".join([*base, *settings, ""]))
        services = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split()
            if line[0] in " \t":
                services.append(line)
                continue
            if fields[0] == "smtp" and fields[1] == "inet":
                fields[0] = f"127.0.0.1:{self.port}"
            if len(fields) > 4 and fields[4] == "y":
                fields[4] = "n"  # no chroot: the queue is in this directory
            services.append(" ".join(fields))
        (self.dir / "master.cf").write_text("\n".join(services) + "\n")
        self.command("start")
        wait_for_greeting(self.port, "postfix")

    def command(self, command: str) -> None:
        result = subprocess.run(["postfix", "-c", str(self.dir), command], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise AssertionError(f"postfix {command} failed: {result.stdout}{result.stderr}\n{self.log()[-3000:]}")

    def log(self) -> str:
        path = self.dir / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.dir), "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)
