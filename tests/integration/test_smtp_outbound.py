"""Ordinary mail out: a real instance sends by SMTP to Debian's Postfix, which stores it in a Maildir.

Started once for the module: a DNS server on loopback (tests/smtp_support.py)
with legacy.test's MX and the DKIM record that ``manage.py dnsrecords`` prints
for alpha.test; Postfix from a temporary directory taking mail for legacy.test
into Maildirs (virtual mailboxes, STARTTLS with a self-signed certificate, an
access table to answer 4xx); and a Pushmail instance (web and worker) whose
worker finds Postfix through that DNS. Mail is sent through the user API, as
the webmail does.
"""

from __future__ import annotations

import base64
import contextlib
import email
import email.policy
import grp
import os
import pwd
import re
import shutil
import time
from collections.abc import Iterator
from email.message import EmailMessage

import dkim
import dns.resolver
import pytest

from tests.integration.conftest import Api, mailboxes, start_cluster, unique, wait_for
from tests.smtp_support import PostfixServer, Zone, dns_server, self_signed
from tools.cluster import Instance

pytestmark = pytest.mark.skipif(
    os.environ.get("CI", "").lower() not in {"1", "true", "yes"} and shutil.which("postfix") is None,
    reason="Debian's postfix is not installed (apt-get install postfix)",
)

HOSTED = "alpha.test"
LEGACY = "legacy.test"
MAILBOXES = ["bob", "later"]


class Setup:
    def __init__(self, inst: Instance, zone: Zone, resolver: str, postfix: PostfixServer) -> None:
        self.inst, self.zone, self.resolver, self.postfix = inst, zone, resolver, postfix

    def set_access(self, table: str) -> None:
        """Postfix's recipient access table: new sessions answer by it once the reload is done."""
        (self.postfix.dir / "access").write_text(table)
        self.postfix.command("reload")
        time.sleep(1)  # smtpd processes idle since before the reload finish their exit

    def maildir_message(self, mailbox: str, subject: str) -> bytes:
        """The message with ``subject`` in the Maildir of ``mailbox`` (waits for it)."""

        def probe() -> bytes | None:
            for path in (self.postfix.dir / "mail" / mailbox / "new").glob("*"):
                raw = path.read_bytes()
                if f"Subject: {subject}".encode() in raw:
                    return raw
            return None

        return wait_for(f"{subject!r} in the Maildir of {mailbox}", probe, timeout=60)


@contextlib.contextmanager
def legacy_domain_and_instance(
    tmp_path_factory: pytest.TempPathFactory, *, name: str = "alpha", mailboxes: list[str] = MAILBOXES
) -> Iterator[Setup]:
    """The DNS server, Postfix taking mail for legacy.test's ``mailboxes`` into Maildirs, and an
    instance ``name`` hosting alpha.test that finds Postfix through that DNS, with the DKIM record
    its ``dnsrecords`` prints published."""
    with dns_server() as (zone, resolver):
        certs = tmp_path_factory.mktemp("mx-tls")
        cert, key = self_signed(certs, "mx.legacy.test")
        postfix = PostfixServer(
            _receiving_postfix(cert, key),
            hostname="mx.legacy.test",
            files={"vmailbox": "".join(f"{box}@{LEGACY} {box}/\n" for box in mailboxes), "access": ""},
        )
        mail = postfix.dir / "mail"
        mail.mkdir()
        shutil.chown(mail, user="postfix", group="postfix")
        cluster = None
        try:
            zone.add(LEGACY, "MX", "10 mx.legacy.test.")
            zone.add("mx.legacy.test", "A", "127.0.0.1")
            cluster = start_cluster(
                tmp_path_factory.mktemp("smtp-out"),
                {name: [HOSTED]},
                env={
                    name: {
                        "PUSHMAIL_DNS_RESOLVER": resolver,
                        "PUSHMAIL_SMTP_OUTBOUND_PORT": str(postfix.port),
                        "PUSHMAIL_SMTP_ALLOW_PRIVATE_DOMAINS": LEGACY,
                        "PUSHMAIL_SMTP_HOSTNAME": "mail.alpha.test",
                    }
                },
            )
            inst = cluster[name]
            # Publish what the operator is told to publish.
            for record, value in _txt_records(inst.manage("dnsrecords", HOSTED)):
                zone.add(record, "TXT", value)
            yield Setup(inst, zone, resolver, postfix)
        finally:
            if cluster is not None:
                cluster.stop()
            postfix.stop()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with legacy_domain_and_instance(tmp_path_factory) as running:
        yield running


def _receiving_postfix(cert: str, key: str) -> list[str]:
    """main.cf lines: legacy.test's mailboxes in Maildirs (bob and later; anyone else is unknown: 550),
    an access table (empty: the 4xx test fills it), STARTTLS offered."""
    return [
        f"virtual_mailbox_domains = {LEGACY}",
        "virtual_mailbox_base = $config_directory/mail",
        "virtual_mailbox_maps = texthash:$config_directory/vmailbox",
        f"virtual_uid_maps = static:{pwd.getpwnam('postfix').pw_uid}",
        f"virtual_gid_maps = static:{grp.getgrnam('postfix').gr_gid}",
        "virtual_minimum_uid = 1",
        "smtpd_recipient_restrictions = check_recipient_access texthash:$config_directory/access, "
        "permit_mynetworks, reject_unauth_destination",
        "smtpd_tls_security_level = may",
        f"smtpd_tls_cert_file = {cert}",
        f"smtpd_tls_key_file = {key}",
        "smtpd_tls_received_header = yes",
        "message_size_limit = 10240000",
    ]


def _txt_records(output: str) -> list[tuple[str, str]]:
    records = []
    for name, strings in re.findall(r"^(\S+)\.\s+3600\s+IN\s+TXT\s+(.+)$", output, re.M):
        records.append((name, "".join(re.findall(r'"([^"]*)"', strings))))
    return records


@pytest.fixture
def alice(setup: Setup) -> Api:
    return mailboxes(setup.inst, 1, prefix="alice")[0]


def _send(sender: Api, **fields: object) -> dict:
    response = sender.session.post(sender.url("messages/"), json={"cc": [], "bcc": [], **fields}, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()


def _delivery_when(sender: Api, message_id: str, what: str, done: object) -> dict:
    def probe() -> dict | None:
        delivery = sender.delivery(message_id, LEGACY)
        return delivery if done(delivery) else None  # type: ignore[operator]

    return wait_for(what, probe, timeout=60)


def _dkim_verifies(raw: bytes, resolver: str) -> bool:
    """dkimpy's verification, its key looked up in the test DNS (where dnsrecords' record is)."""
    host, _, port = resolver.rpartition(":")
    lookup = dns.resolver.Resolver(configure=False)
    lookup.nameservers, lookup.port = [host], int(port)

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        try:
            answer = lookup.resolve(name.decode().rstrip("."), "TXT")
        except dns.resolver.NXDOMAIN:
            return b""
        return b"".join(answer[0].strings)

    return bool(dkim.verify(raw, dnsfunc=dnsfunc))


def test_a_message_lands_in_the_maildir_with_text_html_attachment_and_a_valid_dkim_signature(
    setup: Setup, alice: Api
) -> None:
    subject = unique("Quarterly figures ")
    figures = b"quarter,revenue\nQ1,100\nQ2,120\n"
    sent = _send(
        alice,
        to=[f"bob@{LEGACY}"],
        subject=subject,
        text="Dear Bob,\nthe figures are attached.\n",
        html="<p>Dear Bob,</p><p>the figures are <b>attached</b>.</p>",
        attachments=[{"name": "figures.csv", "type": "text/csv", "content": base64.b64encode(figures).decode()}],
    )

    raw = setup.maildir_message("bob", subject)

    mail = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(mail, EmailMessage)
    assert mail["From"] == alice.address and mail["To"] == f"bob@{LEGACY}"
    assert mail["Message-ID"] == sent["message_id"] and mail["Pushmail"] == HOSTED
    text, html = mail.get_body(preferencelist=("plain",)), mail.get_body(preferencelist=("html",))
    assert text is not None and "the figures are attached." in text.get_content()
    assert html is not None and "<b>attached</b>" in html.get_content()
    (attachment,) = mail.iter_attachments()
    assert attachment.get_filename() == "figures.csv"
    assert attachment.get_content().encode().replace(b"\r\n", b"\n") == figures
    assert "with ESMTPS" in str(mail["Received"]), "STARTTLS is used when the server offers it"
    assert mail["Return-Path"] == f"<{alice.address}>"
    assert _dkim_verifies(raw, setup.resolver)
    assert not _dkim_verifies(raw.replace(b"the figures are attached.", b"the figures are attached!"), setup.resolver)

    delivery = _delivery_when(alice, sent["id"], "the delivery to be answered", lambda d: d["state"] == "notified")
    assert delivery["transport"] == "smtp" and delivery["notified_at"]
    queue_id = re.fullmatch(r"250 2\.0\.0 Ok: queued as (\w+)", delivery["smtp_reply"])
    assert queue_id, delivery["smtp_reply"]
    assert f"{queue_id[1]}: to=<bob@{LEGACY}>" in setup.postfix.log()
    assert [(r["address"], r["status"]) for r in delivery["recipients"]] == [(f"bob@{LEGACY}", "accepted")]


def test_a_4xx_from_postfix_is_retried_then_delivered(setup: Setup, alice: Api) -> None:
    setup.set_access(f"later@{LEGACY} 450 4.2.0 Mailbox busy, try again later\n")
    subject = unique("Try again ")
    sent = _send(alice, to=[f"later@{LEGACY}"], subject=subject, text="Are you there?")

    deferred = _delivery_when(
        alice,
        sent["id"],
        "the 450 to be recorded",
        lambda d: "450 4.2.0" in d["last_error"] and "Mailbox busy" in d["last_error"],
    )
    assert deferred["state"] == "retrying"
    assert deferred["recipients"][0]["status"] == "pending"

    setup.set_access("")
    delivered = _delivery_when(alice, sent["id"], "the retry to be delivered", lambda d: d["state"] == "notified")

    assert delivered["attempts"] >= 2 and delivered["smtp_reply"].startswith("250 2.0.0 Ok: queued as ")
    assert delivered["recipients"][0]["status"] == "accepted"
    assert b"Are you there?" in setup.maildir_message("later", subject)


def test_a_5xx_from_postfix_fails_that_recipient_with_a_notice(setup: Setup, alice: Api) -> None:
    subject = unique("Nobody home ")
    sent = _send(alice, to=[f"bob@{LEGACY}", f"nobody@{LEGACY}"], subject=subject, text="Hello?")

    delivery = _delivery_when(alice, sent["id"], "both answers", lambda d: d["state"] == "notified")

    answers = {r["address"]: r for r in delivery["recipients"]}
    assert answers[f"bob@{LEGACY}"]["status"] == "accepted"
    refused = answers[f"nobody@{LEGACY}"]
    assert refused["status"] == "rejected"
    assert refused["reason"].startswith("550 5.1.1 <nobody@legacy.test>: Recipient address rejected")
    setup.maildir_message("bob", subject)

    notice = alice.entry_with_subject(f"Undelivered: {subject}")
    status, data = alice.open(notice["id"])
    assert status == 200 and data["state"] == "notice"
    assert f"nobody@{LEGACY}" in data["body"]["text"] and f"bob@{LEGACY}" not in data["body"]["text"]
    assert "550 5.1.1" in data["body"]["text"]
