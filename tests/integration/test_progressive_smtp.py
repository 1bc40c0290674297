"""The progressive step between two real instances: mail by SMTP teaches alpha that a beta domain runs Pushmail.

alpha's SMTP gateway (``manage.py smtpd``) receives a message from carol, a
user of the beta instance, DKIM-signed for her domain with a key in the test
DNS server and carrying the ``Pushmail`` header that a Pushmail instance writes
on the mail it sends by SMTP. alpha had cached carol's domain as legacy (it
asked before beta hosted it); the authenticated header makes alpha's worker run
discovery again, and alice's reply goes over the federation API: beta is
notified and carol's inbox gets the reply, fetched from alpha.
"""

from __future__ import annotations

import smtplib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import Api, mailboxes, sql, start_cluster, unique, wait_for
from tests.smtp_support import Zone, dkim_key, dkim_sign, dns_server, free_port, wait_for_greeting
from tools.cluster import PYTHON, ROOT, Instance

LATE = "news.beta.test"  # a domain beta starts hosting during the test


@dataclass
class Setup:
    alpha: Instance
    beta: Instance
    zone: Zone
    gateway_port: int


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with dns_server() as (zone, resolver):
        cluster = start_cluster(
            tmp_path_factory.mktemp("progressive"),
            {"alpha": ["alpha.test"], "beta": ["beta.test"]},
            # A domain without an instance is refused as legacy here, not tried by SMTP: what counts
            # is which answer alpha keeps in its cache (test_smtp_outbound.py tries SMTP).
            env={"alpha": {"PUSHMAIL_SMTP_OUTBOUND": "0"}},
        )
        alpha, beta = cluster["alpha"], cluster["beta"]
        gateway = None
        try:
            # alpha knows where LATE's instance would be, and has one worker process, whose cache a
            # legacy answer stays in (with two, a task could meet the process that never asked).
            alpha.stop()
            alpha.peers[LATE] = beta.base_url
            alpha.worker_concurrency = 1
            alpha.start()
            gateway_port = free_port()
            gateway = subprocess.Popen(
                [PYTHON, "manage.py", "smtpd", "--listen", f"127.0.0.1:{gateway_port}"],
                cwd=ROOT,
                env={**alpha.env(), "PUSHMAIL_DNS_RESOLVER": resolver, "PUSHMAIL_SMTP_HOSTNAME": "mx.alpha.test"},
                stdout=open(alpha.data_dir / "smtpd.log", "ab"),  # noqa: SIM115 - handed to the child
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            wait_for_greeting(gateway_port, "manage.py smtpd", gateway)
            yield Setup(alpha, beta, zone, gateway_port)
        finally:
            if gateway is not None:
                gateway.terminate()
                gateway.wait(timeout=30)
            cluster.stop()


def _delivery_settled(api: Api, message_id: str, domain: str) -> dict:
    return wait_for(
        f"the delivery of {message_id} to {domain} to settle",
        lambda: (d := api.delivery(message_id, domain))["state"] in ("notified", "failed") and d,
        timeout=60,
    )


def _hosts(inst: Instance, domain: str) -> bool:
    document = requests.get(inst.base_url + "/.well-known/pushmail", timeout=10).json()
    return domain in document["domains"]


def _smtp_message(*, sender: str, to: str, subject: str, pushmail: str, zone: Zone) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Carol <{sender}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = "Thu, 03 Dec 2026 10:00:00 +0000"
    msg["Message-ID"] = f"<{unique()}@{pushmail}>"
    msg["Pushmail"] = pushmail
    msg.set_content("Are you coming to the launch on Friday?\n")
    raw = msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    private, public = dkim_key()
    zone.add(f"mail._domainkey.{pushmail}", "TXT", public)
    return dkim_sign(raw, domain=pushmail, selector="mail", private_key=private)


def test_an_smtp_message_with_the_pushmail_header_makes_the_reply_go_over_the_federation_api(
    setup: Setup, tmp_path: Path
) -> None:
    [alice] = mailboxes(setup.alpha, 1, prefix="alice")
    carol_address = f"carol-{unique()}@{LATE}"

    # alpha asks about LATE before beta hosts it: a legacy domain, and alpha caches that answer.
    early = alice.send(to=[carol_address], subject=unique("Before "), text="Anyone there?")
    first = _delivery_settled(alice, early["id"], LATE)
    assert (first["state"], first["last_error"]) == ("failed", "legacy domain")

    setup.beta.manage("adddomain", LATE)
    [carol] = mailboxes(setup.beta, 1, prefix="carol", domain=LATE)
    # Each of beta's web processes caches its hosted domains for seconds: restarted, every one lists LATE.
    setup.beta.stop_web()
    setup.beta.start_web()
    assert _hosts(setup.beta, LATE)
    # Nothing has told alpha yet: its cached answer still says legacy.
    again = alice.send(to=[carol.address], subject=unique("Still "), text="Anyone there now?")
    assert _delivery_settled(alice, again["id"], LATE)["last_error"] == "legacy domain"

    subject = unique("Launch ")
    raw = _smtp_message(sender=carol.address, to=alice.address, subject=subject, pushmail=LATE, zone=setup.zone)
    with smtplib.SMTP("127.0.0.1", setup.gateway_port, local_hostname="mail.beta.test", timeout=60) as client:
        client.ehlo()
        client.sendmail(carol.address, [alice.address], raw)
    entry = alice.entry_with_subject(subject)
    _, opened = alice.open(entry["id"])
    assert "launch on Friday" in opened["body"]["text"]
    query = f"SELECT state, heard_from, last_error FROM federation_learneddomain WHERE domain = '{LATE}'"
    learned = wait_for(
        f"alpha to check {LATE} by discovery",
        lambda: (rows := sql(setup.alpha, query)) and rows[0][0] != "pending" and rows,
    )
    assert learned == [("confirmed", carol.address, "")]

    reply = alice.session.post(
        alice.url("messages/"),
        json={
            "to": [carol.address],
            "subject": f"Re: {subject}",
            "text": "Yes, see you there.",
            "in_reply_to": opened["body"]["message_id"],
        },
        timeout=30,
    )
    assert reply.status_code == 201, reply.text
    delivery = _delivery_settled(alice, reply.json()["id"], LATE)
    assert (delivery["state"], delivery["last_error"]) == ("notified", "")
    assert [r["status"] for r in delivery["recipients"]] == ["accepted"]

    got = carol.entry_with_subject(f"Re: {subject}")
    assert got["sender"] == alice.address
    body = carol.read_until(got["id"], "fetched")
    assert body["body"]["text"] == "Yes, see you there."
