"""Ordinary mail in: Debian's Postfix relays to the SMTP gateway (``manage.py smtpd``) of a real instance.

Started once for the module: a Pushmail instance (web and worker), its SMTP
gateway as its own process, a DNS server on loopback with the SPF, DKIM and
DMARC records (tests/smtp_support.py), and Postfix from a temporary directory
(its own main.cf and master.cf, loopback ports, a transport map sending
alpha.test to the gateway, no DNS). Messages go in through Postfix with swaks;
swaks also speaks to the gateway directly for what Postfix would never send.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.integration.conftest import Api, mailboxes, sql, start_cluster, unique, wait_for
from tests.smtp_support import PostfixServer, Zone, dkim_key, dkim_sign, dns_server, free_port, wait_for_greeting
from tools.cluster import PYTHON, ROOT, Instance

# .ci/run installs Debian's postfix and swaks: in CI a missing one fails the tests instead of skipping them.
pytestmark = pytest.mark.skipif(
    os.environ.get("CI", "").lower() not in {"1", "true", "yes"}
    and (shutil.which("postfix") is None or shutil.which("swaks") is None),
    reason="Debian's postfix and swaks are not installed (apt-get install postfix swaks)",
)

HOSTED = "alpha.test"
MAX_BYTES = 300_000


# --- Processes --------------------------------------------------------------------------------


def _postfix(gateway_port: int) -> PostfixServer:
    """Postfix as an ordinary mail server that relays the hosted domain to the gateway."""
    return PostfixServer(
        [
            "mydomain = example.org",
            "myorigin = example.org",
            f"relay_domains = {HOSTED}",
            "transport_maps = texthash:$config_directory/transport",
            "smtpd_relay_restrictions = permit_mynetworks, reject",
            "smtp_tls_security_level = none",
            "message_size_limit = 10240000",
        ],
        hostname="mail.example.org",
        files={"transport": f"{HOSTED} smtp:[127.0.0.1]:{gateway_port}\n"},
    )


class Setup:
    def __init__(self, inst: Instance, zone: Zone, postfix: PostfixServer, gateway_port: int) -> None:
        self.inst, self.zone, self.postfix, self.gateway_port = inst, zone, postfix, gateway_port


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with dns_server() as (zone, resolver):
        gateway_port = free_port()
        cluster = start_cluster(tmp_path_factory.mktemp("smtp"), {"alpha": [HOSTED]})
        inst = cluster["alpha"]
        env = {
            **inst.env(),
            "PUSHMAIL_DNS_RESOLVER": resolver,
            "PUSHMAIL_SMTP_HOSTNAME": "mx.alpha.test",
            "PUSHMAIL_SMTP_MAX_BYTES": str(MAX_BYTES),
        }
        gateway = subprocess.Popen(
            [PYTHON, "manage.py", "smtpd", "--listen", f"127.0.0.1:{gateway_port}"],
            cwd=ROOT,
            env=env,
            stdout=open(inst.data_dir / "smtpd.log", "ab"),  # noqa: SIM115 - handed to the child
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        postfix = None
        try:
            wait_for_greeting(gateway_port, "manage.py smtpd", gateway)
            postfix = _postfix(gateway_port)
            yield Setup(inst, zone, postfix, gateway_port)
        finally:
            if postfix is not None:
                postfix.stop()
            gateway.terminate()
            gateway.wait(timeout=30)
            cluster.stop()


@pytest.fixture
def bob(setup: Setup) -> Api:
    return mailboxes(setup.inst, 1, prefix="bob")[0]


def swaks(*args: str, server: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["swaks", "--server", server, "--helo", "mail.example.org", "--timeout", "60", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _via_postfix(setup: Setup, *args: str) -> None:
    result = swaks(*args, server=f"127.0.0.1:{setup.postfix.port}")
    assert result.returncode == 0, result.stdout + result.stderr  # Postfix queued it


def _authentication_results(setup: Setup, subject: str) -> str:
    rows = sql(setup.inst, f"SELECT authentication_results FROM mailbox_remotemessage WHERE subject = '{subject}'")
    assert len(rows) == 1, rows
    return str(rows[0][0])


def _eml_file(tmp_path: Path, msg: EmailMessage) -> str:
    path = tmp_path / "message.eml"
    path.write_bytes(msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    return str(path)


def _message(*, sender: str, to: str, subject: str, text: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = "Thu, 03 Dec 2026 10:00:00 +0000"
    msg["Message-ID"] = f"<{unique()}@{sender.rpartition('@')[2]}>"
    msg.set_content(text)
    return msg


# --- Postfix -> Pushmail -----------------------------------------------------------------------


def test_postfix_delivers_text_and_attachments_into_bobs_inbox(setup: Setup, bob: Api, tmp_path: Path) -> None:
    setup.zone.add("example.org", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    subject = unique("Quarterly figures ")
    report = tmp_path / "figures.csv"
    report.write_bytes(b"quarter,revenue\nQ1,100\nQ2,120\n")
    _via_postfix(
        setup,
        *("--from", "alice@example.org", "--to", bob.address, "--header", f"Subject: {subject}"),
        *("--body", "Dear Bob, the figures are attached.", "--attach-type", "text/csv", "--attach", f"@{report}"),
    )
    entry = bob.entry_with_subject(subject)
    assert entry["sender"] == "alice@example.org"
    status, opened = bob.open(entry["id"])
    assert status == 200 and opened["state"] == "fetched"
    assert "the figures are attached" in opened["body"]["text"]
    [attachment] = opened["attachments"]
    assert attachment["name"] == "figures.csv"
    got = bob.session.get(bob.url(f"inbox/{entry['id']}/attachments/0/"), timeout=30)
    assert got.status_code == 200 and got.content == report.read_bytes()
    results = _authentication_results(setup, subject)
    assert results.startswith("mx.alpha.test;")
    assert "spf=pass smtp.mailfrom=alice@example.org" in results
    assert f"to=<{bob.address}>, relay=127.0.0.1[127.0.0.1]:{setup.gateway_port}" in setup.postfix.log()


@pytest.mark.parametrize(
    "domain, record, expected",
    [
        ("spf-pass.example.com", "v=spf1 ip4:127.0.0.1 -all", "spf=pass"),
        ("spf-fail.example.com", "v=spf1 ip4:192.0.2.7 -all", "spf=fail"),
        ("spf-soft.example.com", "v=spf1 ip4:192.0.2.7 ~all", "spf=softfail"),
        ("spf-none.example.com", None, "spf=none"),
    ],
    ids=["pass", "fail", "softfail", "none"],
)
def test_spf_results_through_postfix(setup: Setup, bob: Api, domain: str, record: str | None, expected: str) -> None:
    if record:
        setup.zone.add(domain, "TXT", record)
    subject = unique(f"SPF {expected} ")
    _via_postfix(
        setup, "--from", f"news@{domain}", "--to", bob.address, "--header", f"Subject: {subject}", "--body", "hi"
    )
    bob.entry_with_subject(subject)
    assert f"{expected} smtp.mailfrom=news@{domain}" in _authentication_results(setup, subject)


def test_dkim_pass_and_fail_through_postfix(setup: Setup, bob: Api, tmp_path: Path) -> None:
    private, public = dkim_key()
    setup.zone.add("mail2026._domainkey.example.net", "TXT", public)
    good, bad = unique("Signed "), unique("Altered ")
    for subject in (good, bad):
        msg = _message(sender="ceo@example.net", to=bob.address, subject=subject, text="Signed words.")
        signed = dkim_sign(
            msg.as_bytes().replace(b"\n", b"\r\n"), domain="example.net", selector="mail2026", private_key=private
        )
        if subject == bad:
            signed = signed.replace(b"Signed words.", b"Forged words.")
        path = tmp_path / "signed.eml"
        path.write_bytes(signed)
        _via_postfix(setup, "--from", "ceo@example.net", "--to", bob.address, "--data", f"@{path}")
    bob.entry_with_subject(good)
    bob.entry_with_subject(bad)
    assert "dkim=pass header.d=example.net header.s=mail2026" in _authentication_results(setup, good)
    assert "dkim=fail header.d=example.net header.s=mail2026" in _authentication_results(setup, bad)


def subject_seen(setup: Setup) -> bool:
    return "fails the DMARC check of bank.example" in setup.postfix.log()


def test_dmarc_reject_is_refused_550_and_nothing_is_stored(setup: Setup, bob: Api, tmp_path: Path) -> None:
    setup.zone.add("bank.example", "TXT", "v=spf1 ip4:192.0.2.9 -all")
    setup.zone.add("_dmarc.bank.example", "TXT", "v=DMARC1; p=reject")
    subject = unique("Verify your account ")
    msg = _message(sender="security@bank.example", to=bob.address, subject=subject, text="Click here.")
    _via_postfix(setup, "--from", "security@bank.example", "--to", bob.address, "--data", _eml_file(tmp_path, msg))
    wait_for(
        "Postfix to log the refusal", lambda: "550 5.7.1" in setup.postfix.log() and "DMARC" in setup.postfix.log()
    )
    assert sql(setup.inst, f"SELECT id FROM mailbox_remotemessage WHERE subject = '{subject}'") == []
    assert [e for e in bob.inbox() if e["subject"] == subject] == []


def test_dmarc_quarantine_goes_to_spam_with_the_reason(setup: Setup, bob: Api, tmp_path: Path) -> None:
    setup.zone.add("_dmarc.shop.example", "TXT", "v=DMARC1; p=quarantine")
    subject = unique("Your order ")
    msg = _message(sender="orders@shop.example", to=bob.address, subject=subject, text="Shipped.")
    _via_postfix(setup, "--from", "orders@shop.example", "--to", bob.address, "--data", _eml_file(tmp_path, msg))
    wait_for(
        "the message in Spam",
        lambda: sql(
            setup.inst,
            "SELECT e.folder, m.spam_verdict FROM mailbox_inboxentry e JOIN mailbox_remotemessage m "
            f"ON m.id = e.remote_id WHERE e.subject = '{subject}'",
        ),
    )
    [(folder, verdict)] = sql(
        setup.inst,
        "SELECT e.folder, m.spam_verdict FROM mailbox_inboxentry e JOIN mailbox_remotemessage m "
        f"ON m.id = e.remote_id WHERE e.subject = '{subject}'",
    )
    assert folder == "spam"
    assert "DMARC check of shop.example, whose policy is quarantine" in verdict


# --- swaks -> the gateway directly: what it refuses -------------------------------------------


def _gateway(setup: Setup) -> str:
    return f"127.0.0.1:{setup.gateway_port}"


def test_unknown_recipient_gets_550_at_rcpt(setup: Setup) -> None:
    result = swaks("--from", "alice@example.org", "--to", f"nobody-{unique()}@{HOSTED}", server=_gateway(setup))
    assert result.returncode != 0
    assert "<** 550 5.1.1" in result.stdout and "no such mailbox" in result.stdout


def test_oversized_message_gets_552_and_nothing_is_stored(setup: Setup, bob: Api, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(MAX_BYTES))
    subject = unique("Too big ")
    result = swaks(
        *("--from", "alice@example.org", "--to", bob.address, "--header", f"Subject: {subject}"),
        *("--attach", f"@{big}"),
        server=_gateway(setup),
    )
    assert "<** 552" in result.stdout, result.stdout[-2000:]
    assert sql(setup.inst, f"SELECT id FROM mailbox_remotemessage WHERE subject = '{subject}'") == []


@pytest.mark.parametrize("end", ["\n.\n", "\n.\r\n", "\r\n.\n"], ids=["LF.LF", "LF.CRLF", "CRLF.LF"])
def test_smuggling_forms_are_refused_and_one_message_never_becomes_two(
    setup: Setup, bob: Api, tmp_path: Path, end: str
) -> None:
    first, smuggled = unique("Outer "), unique("Smuggled ")
    data = (
        f"From: alice@example.org\r\nTo: {bob.address}\r\nSubject: {first}\r\n\r\nHello{end}"
        f"MAIL FROM:<admin@example.org>\r\nRCPT TO:<{bob.address}>\r\nDATA\r\n"
        f"From: admin@example.org\r\nSubject: {smuggled}\r\n\r\nSmuggled\r\n"
        ".\r\n"  # with --no-data-fixup swaks sends the end of data only if the file has it
    )
    path = tmp_path / "smuggle.eml"
    path.write_bytes(data.encode())
    result = swaks(
        *("--from", "alice@example.org", "--to", bob.address, "--data", f"@{path}", "--no-data-fixup"),
        server=_gateway(setup),
    )
    assert "<** 550 5.6.0" in result.stdout and "bare" in result.stdout, result.stdout[-2000:]
    for subject in (first, smuggled):
        assert sql(setup.inst, f"SELECT id FROM mailbox_remotemessage WHERE subject = '{subject}'") == []


def test_header_injection_in_the_envelope_is_refused(setup: Setup, bob: Api) -> None:
    result = swaks("--from", "alice@example.org\rBcc: eve@evil.example", "--to", bob.address, server=_gateway(setup))
    # Refused by aiosmtpd's own parser or by the gateway's address check, before anything is stored.
    assert "<** 501 " in result.stdout, result.stdout[-2000:]
    assert "Bcc: eve" not in sql(setup.inst, "SELECT coalesce(max(sender), '') FROM mailbox_remotemessage")[0][0]


def test_the_gateway_greets_with_its_name_and_offers_size(setup: Setup) -> None:
    result = swaks("--quit-after", "EHLO", server=_gateway(setup))
    assert "<-  220 mx.alpha.test" in result.stdout
    assert f"250-SIZE {MAX_BYTES}" in result.stdout or f"250 SIZE {MAX_BYTES}" in result.stdout
