"""Mail programs send through submission: swaks against a real ``manage.py submission`` of alpha.test.

Started once for the module: two instances (alpha.test, beta.test), a web site
for legacy.invalid without a Pushmail discovery document, and alpha's
submission server as its own process, listening on every address with a
certificate (STARTTLS) and on a second port with implicit TLS. swaks signs in
with an app password (an API token) and sends; what a recipient and the sender
see is read back through the user API.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import smtplib
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Api, Cluster, mailboxes, sql, start_cluster, unique, wait_for
from tests.integration.test_federation import legacy_site  # noqa: F401 - the module's legacy.invalid site
from tests.integration.test_smtp_inbound import swaks
from tests.smtp_support import free_port, self_signed
from tools.cluster import PYTHON, ROOT

pytestmark = pytest.mark.skipif(
    os.environ.get("CI", "").lower() not in {"1", "true", "yes"} and shutil.which("swaks") is None,
    reason="Debian's swaks is not installed (apt-get install swaks)",
)

MAX_BYTES = 300_000
ACCOUNT_FAILURES = 3


class Submission:
    def __init__(self, cluster: Cluster, port: int, tls_port: int) -> None:
        self.cluster, self.port, self.tls_port = cluster, port, tls_port
        self.alpha, self.beta = cluster["sub_alpha"], cluster["sub_beta"]

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"


def _wait_greeting(port: int, proc: subprocess.Popen[bytes]) -> None:
    def greeted() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"manage.py submission exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                return sock.makefile("rb").readline().startswith(b"220")
        except OSError:
            return False

    wait_for(f"the submission server on port {port}", greeted, timeout=60)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, legacy_site: str) -> Iterator[Submission]:  # noqa: F811
    base = tmp_path_factory.mktemp("submission")
    cert, key = self_signed(base, "mail.alpha.test")
    cluster = start_cluster(
        base,
        {"sub_alpha": ["alpha.test"], "sub_beta": ["beta.test"]},
        extra_peers={"sub_alpha": {"legacy.invalid": legacy_site}},
    )
    alpha = cluster["sub_alpha"]
    port, tls_port = free_port(), free_port()
    env = {
        **alpha.env(),
        "PUSHMAIL_SMTP_HOSTNAME": "mail.alpha.test",
        "PUSHMAIL_SUBMISSION_TLS_CERT": cert,
        "PUSHMAIL_SUBMISSION_TLS_KEY": key,
        "PUSHMAIL_SUBMISSION_MAX_BYTES": str(MAX_BYTES),
        "PUSHMAIL_SUBMISSION_AUTH_FAILURES_PER_CLIENT": "1000",  # every test here connects from loopback
        "PUSHMAIL_SUBMISSION_AUTH_FAILURES_PER_ACCOUNT": str(ACCOUNT_FAILURES),
    }
    server = subprocess.Popen(
        [PYTHON, "manage.py", "submission", "--listen", f"0.0.0.0:{port}", "--tls-listen", f"127.0.0.1:{tls_port}"],
        cwd=ROOT,
        env=env,
        stdout=open(alpha.data_dir / "submission.log", "ab"),  # noqa: SIM115 - handed to the child
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_greeting(port, server)
        yield Submission(cluster, port, tls_port)
    finally:
        server.terminate()
        server.wait(timeout=30)
        cluster.stop()


@pytest.fixture
def ann(setup: Submission) -> Api:
    return mailboxes(setup.alpha, 1, prefix="ann")[0]


def _submit(setup: Submission, user: Api, *args: str, password: str | None = None) -> str:
    result = swaks(
        *("--auth", "PLAIN", "--auth-user", user.address, "--auth-password", password or user.token),
        *args,
        server=setup.server,
    )
    return result.stdout


def _queued_id(output: str) -> str:
    """The Sent message's id from ``250 2.0.0 Queued as <uuid@domain>``."""
    line = next(line for line in output.splitlines() if "Queued as <" in line)
    return str(uuid.UUID(line.split("Queued as <", 1)[1].split("@", 1)[0]))


def _stored(setup: Submission, subject: str) -> list[tuple]:
    return sql(setup.alpha, f"SELECT id FROM outbox_message WHERE subject = '{subject}'")


def test_a_mail_program_sends_to_a_pushmail_and_a_legacy_recipient_at_once(
    setup: Submission, ann: Api, tmp_path: Path
) -> None:
    bob, carol = mailboxes(setup.beta, 2, prefix="bob")
    legacy = f"someone-{unique()}@legacy.invalid"
    subject = unique("Minutes of Monday ")
    minutes = tmp_path / "minutes.pdf"
    minutes.write_bytes(b"%PDF-1.4 the minutes " + os.urandom(2000))
    output = _submit(
        setup,
        ann,
        *("--from", ann.address, "--to", f"{bob.address},{legacy},{carol.address}"),
        # carol is only in the envelope: a Bcc; the Bcc header the program wrote must not reach anyone.
        *("--header", f"To: Bob <{bob.address}>", "--header", f"Cc: {legacy}"),
        *("--header", f"Bcc: {carol.address}", "--header", f"Subject: {subject}"),
        *("--body", "Dear Bob, the minutes are attached.", "--attach-type", "application/pdf"),
        *("--attach", f"@{minutes}"),
    )
    assert "<-  235 2.7.0" in output and "<-  250 2.0.0 Queued as <" in output, output[-3000:]

    entry = bob.entry_with_subject(subject)
    assert entry["sender"] == ann.address
    opened = bob.read_until(entry["id"], "fetched")
    assert "the minutes are attached" in opened["body"]["text"]
    [attachment] = opened["attachments"]
    assert attachment["name"] == "minutes.pdf"
    got = wait_for(  # 202 while beta fetches the file from alpha
        "the attachment at beta",
        lambda: (
            (r := bob.session.get(bob.url(f"inbox/{entry['id']}/attachments/0/"), timeout=30)).status_code == 200 and r
        ),
    )
    assert got.content == minutes.read_bytes()
    assert carol.address not in json.dumps(opened)  # Bcc: not shown to bob

    carols = carol.read_until(carol.entry_with_subject(subject)["id"], "fetched")
    assert "the minutes are attached" in carols["body"]["text"]

    sent = ann.message(_queued_id(output))  # the copy in Sent
    assert (sent["subject"], sent["to"], sent["cc"], sent["bcc"]) == (subject, [bob.address], [legacy], [carol.address])
    recipients = {r["address"] for d in sent["deliveries"] for r in d["recipients"]}
    assert recipients == {bob.address, legacy, carol.address}
    assert {d["domain"] for d in sent["deliveries"]} == {"beta.test", "legacy.invalid"}


def test_a_wrong_app_password_and_an_unknown_address_get_the_same_535(setup: Submission, ann: Api) -> None:
    wrong = swaks(
        *("--auth", "LOGIN", "--auth-user", ann.address, "--auth-password", "pm_not-a-token"),
        *("--quit-after", "AUTH"),
        server=setup.server,
    ).stdout
    unknown = swaks(
        *("--auth", "LOGIN", "--auth-user", f"nobody-{unique()}@alpha.test", "--auth-password", ann.token),
        *("--quit-after", "AUTH"),
        server=setup.server,
    ).stdout
    assert "<** 535 5.7.8 Authentication credentials invalid" in wrong, wrong[-2000:]
    assert "<** 535 5.7.8 Authentication credentials invalid" in unknown, unknown[-2000:]
    # The sign-in password of the account is not an app password.
    password = swaks(
        *("--auth", "PLAIN", "--auth-user", ann.address, "--auth-password", "correct-horse-battery"),
        *("--quit-after", "AUTH"),
        server=setup.server,
    ).stdout
    assert "<** 535 5.7.8" in password


def test_an_envelope_sender_that_is_not_the_users_is_refused(setup: Submission, ann: Api) -> None:
    bob = mailboxes(setup.beta, 1, prefix="bob")[0]
    subject = unique("Spoofed ")
    output = _submit(
        setup, ann, "--from", f"ceo-{unique()}@alpha.test", "--to", bob.address, "--header", f"Subject: {subject}"
    )
    assert "<-  235 2.7.0" in output
    assert "<** 553 5.7.1 Sender address" in output and f"send as <{ann.address}>" in output, output[-2000:]
    assert _stored(setup, subject) == []


def test_a_from_header_that_is_not_the_users_is_refused(setup: Submission, ann: Api) -> None:
    bob = mailboxes(setup.beta, 1, prefix="bob")[0]
    subject = unique("Forged From ")
    output = _submit(
        setup,
        ann,
        *("--from", ann.address, "--to", bob.address, "--header", f"Subject: {subject}"),
        *("--header", "From: The Boss <boss@alpha.test>"),
    )
    assert "<** 553 5.7.1 From: boss@alpha.test is not your address" in output, output[-2000:]
    assert _stored(setup, subject) == []


def test_mail_before_auth_is_refused(setup: Submission, ann: Api) -> None:
    output = swaks("--from", ann.address, "--to", "bob@beta.test", server=setup.server).stdout
    assert "<** 530 5.7.0 Authentication required" in output, output[-2000:]


def test_an_oversized_message_gets_552_and_nothing_is_stored(setup: Submission, ann: Api, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(MAX_BYTES))
    subject = unique("Too big ")
    output = _submit(
        setup,
        ann,
        *("--from", ann.address, "--to", "bob@beta.test", "--header", f"Subject: {subject}", "--attach", f"@{big}"),
    )
    assert "<** 552" in output, output[-2000:]
    assert _stored(setup, subject) == []


def test_broken_mime_gets_554_naming_the_problem(setup: Submission, ann: Api, tmp_path: Path) -> None:
    subject = unique("Broken ")
    data = tmp_path / "broken.eml"
    data.write_bytes(
        (
            f"From: {ann.address}\r\nTo: bob@beta.test\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="never-there"\r\n\r\n'
            "This body has no parts at all.\r\n"
        ).encode()
    )
    output = _submit(setup, ann, "--from", ann.address, "--to", "bob@beta.test", "--data", f"@{data}")
    assert "<** 554 5.6.0 Malformed MIME: a multipart part's boundary never appears in its body" in output, output
    assert _stored(setup, subject) == []


def test_implicit_tls_port_takes_auth(setup: Submission, ann: Api) -> None:
    output = swaks(
        *("--tls-on-connect", "--auth", "PLAIN", "--auth-user", ann.address, "--auth-password", ann.token),
        *("--quit-after", "AUTH"),
        server=f"127.0.0.1:{setup.tls_port}",
    ).stdout
    assert "=== TLS started" in output and "<~  235 2.7.0" in output, output[-2000:]


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))  # no packet is sent: this only picks the outgoing interface
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


def test_plain_text_auth_is_refused_off_loopback_and_taken_after_starttls(setup: Submission, ann: Api) -> None:
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no address but loopback to connect from")
    server = f"{address}:{setup.port}"
    plain = swaks(
        *("--auth", "PLAIN", "--auth-user", ann.address, "--auth-password", ann.token, "--quit-after", "AUTH"),
        server=server,
    ).stdout
    assert "250-AUTH" not in plain and "250 AUTH" not in plain, plain[-2000:]
    assert "250-STARTTLS" in plain
    assert "<-  235" not in plain
    # A program that tries anyway is told encryption is required, whatever the password.
    with smtplib.SMTP(address, setup.port, timeout=30) as client:
        client.ehlo("mail.example.org")
        credentials = base64.b64encode(f"\0{ann.address}\0{ann.token}".encode()).decode()
        code, text = client.docmd("AUTH", f"PLAIN {credentials}")
    assert (code, text.decode()) == (538, "5.7.11 Encryption required for requested authentication mechanism")
    secured = swaks(
        *("--tls", "--auth", "PLAIN", "--auth-user", ann.address, "--auth-password", ann.token),
        *("--quit-after", "AUTH"),
        server=server,
    ).stdout
    assert "=== TLS started" in secured and "<~  235 2.7.0" in secured, secured[-2000:]


def test_repeated_failures_for_an_account_are_refused_without_checking(setup: Submission, ann: Api) -> None:
    def attempt(password: str) -> str:
        return swaks(
            *("--auth", "PLAIN", "--auth-user", ann.address, "--auth-password", password, "--quit-after", "AUTH"),
            server=setup.server,
        ).stdout

    for _ in range(ACCOUNT_FAILURES):
        assert "<** 535 5.7.8" in attempt("pm_guess")
    blocked = attempt(ann.token)  # even the right app password, until the window ends
    assert "<** 454 4.7.0 Too many failed logins" in blocked, blocked[-2000:]
