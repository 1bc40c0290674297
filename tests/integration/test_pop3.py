"""Mail programs read bob's Inbox over POP3: getmail6, fetchmail and poplib against a real ``manage.py mailaccess``.

Started once for the module: two instances (alpha.test sends, beta.test holds
bob's mailbox) and beta's mail-access process as its own process, with a
certificate for STLS on its POP3 port and a second port with implicit TLS. The
clients sign in with an app password (an API token). Fetches from the sender
are counted on alpha (``outbox_bodyfetch``, one row per body served).
"""

from __future__ import annotations

import email
import email.policy
import os
import poplib
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import Api, Cluster, mailboxes, shell_json, sql, start_cluster, unique, wait_for
from tests.integration.test_submission import _non_loopback_address
from tests.smtp_support import free_port, self_signed
from tools.cluster import PYTHON, ROOT

pytestmark = pytest.mark.skipif(
    os.environ.get("CI", "").lower() not in {"1", "true", "yes"}
    and (shutil.which("getmail") is None or shutil.which("fetchmail") is None),
    reason="Debian's getmail6 and fetchmail are not installed (apt-get install getmail6 fetchmail)",
)

FETCH_WAIT = 5
ACCOUNT_FAILURES = 3


@dataclass
class Pop3:
    cluster: Cluster
    port: int
    tls_port: int
    cert: str

    @property
    def alpha(self):  # type: ignore[no-untyped-def]
        return self.cluster["pop_alpha"]

    @property
    def beta(self):  # type: ignore[no-untyped-def]
        return self.cluster["pop_beta"]


def _wait_greeting(port: int, proc: subprocess.Popen[bytes]) -> None:
    def greeted() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"manage.py mailaccess exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                return sock.makefile("rb").readline().startswith(b"+OK")
        except OSError:
            return False

    wait_for(f"the POP3 server on port {port}", greeted, timeout=60)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pop3]:
    base = tmp_path_factory.mktemp("pop3")
    cert, key = self_signed(base, "mail.beta.test")
    cluster = start_cluster(base, {"pop_alpha": ["alpha.test"], "pop_beta": ["beta.test"]})
    beta = cluster["pop_beta"]
    port, tls_port = free_port(), free_port()
    env = {
        **beta.env(),
        "PUSHMAIL_POP3_LISTEN": f"0.0.0.0:{port}",
        "PUSHMAIL_POP3_TLS_LISTEN": f"127.0.0.1:{tls_port}",
        "PUSHMAIL_MAILACCESS_TLS_CERT": cert,
        "PUSHMAIL_MAILACCESS_TLS_KEY": key,
        "PUSHMAIL_LEGACY_FETCH_WAIT": str(FETCH_WAIT),
        "PUSHMAIL_SUBMISSION_AUTH_FAILURES_PER_CLIENT": "1000",  # every test here connects from loopback
        "PUSHMAIL_SUBMISSION_AUTH_FAILURES_PER_ACCOUNT": str(ACCOUNT_FAILURES),
    }
    server = subprocess.Popen(
        [PYTHON, "manage.py", "mailaccess"],
        cwd=ROOT,
        env=env,
        stdout=open(beta.data_dir / "mailaccess.log", "ab"),  # noqa: SIM115 - handed to the child
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_greeting(port, server)
        yield Pop3(cluster, port, tls_port, cert)
    finally:
        server.terminate()
        server.wait(timeout=30)
        cluster.stop()


def _pair(setup: Pop3) -> tuple[Api, Api]:
    (ann,) = mailboxes(setup.alpha, 1, prefix="ann")
    (bob,) = mailboxes(setup.beta, 1, prefix="bob")
    return ann, bob


def _send(ann: Api, bob: Api, subject: str, text: str) -> dict:
    ann.send(to=[bob.address], subject=subject, text=text)
    return bob.entry_with_subject(subject)


def _fetches(setup: Pop3, sender: Api) -> int:
    """Bodies alpha has served for this sender's messages."""
    rows = sql(
        setup.alpha,
        "SELECT count(*) FROM outbox_bodyfetch f JOIN outbox_message m ON m.id = f.message_id "
        f"JOIN accounts_user u ON u.id = m.sender_id WHERE u.email = '{sender.address}'",
    )
    return int(rows[0][0])


def _joined(lines: list[bytes]) -> bytes:
    """A message as poplib hands it (lines without their ends) back as bytes."""
    return b"".join(line + b"\n" for line in lines)


def _pop(setup: Pop3, user: Api) -> poplib.POP3:
    pop = poplib.POP3("127.0.0.1", setup.port, timeout=FETCH_WAIT + 30)
    pop.user(user.address)
    pop.pass_(user.token)
    return pop


# --- getmail6 ---------------------------------------------------------------------------------


def _getmail(setup: Pop3, user: Api, home: Path) -> tuple[list[email.message.EmailMessage], str]:
    """Run getmail6 once (kept on the server, unseen messages only); the messages it delivered this run.

    Each message goes to a file of its own through getmail's external-MDA destination (its Maildir
    destination refuses to run as root, as CI does).
    """
    out = home / "delivered"
    out.mkdir(exist_ok=True)
    rc = home / "getmailrc"
    rc.write_text(
        "[retriever]\ntype = SimplePOP3Retriever\nserver = 127.0.0.1\n"
        f"port = {setup.port}\nusername = {user.address}\npassword = {user.token}\n"
        "[destination]\ntype = MDA_external\npath = /bin/sh\nallow_root_commands = true\n"
        f'arguments = ("-c", "cat > $(mktemp -p {out} msg.XXXXXX)")\n'
        "[options]\nread_all = false\ndelete = false\nverbose = 2\n"
    )
    before = set(out.iterdir())
    result = subprocess.run(
        ["getmail", "--getmaildir", str(home), "--rcfile", str(rc)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    new = sorted(set(out.iterdir()) - before)
    messages = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in new]
    return messages, output  # type: ignore[return-value]


def _text(message: email.message.EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return part.get_content()


def test_getmail_downloads_bobs_mail_once_and_a_second_run_finds_nothing_new(setup: Pop3, tmp_path: Path) -> None:
    ann, bob = _pair(setup)
    sent = {unique("Agenda "): f"Item one.\n.Leading dot kept\n{unique()}\n" for _ in range(3)}
    for subject, text in sent.items():
        _send(ann, bob, subject, text)

    messages, output = _getmail(setup, bob, tmp_path)
    assert sorted(str(m["Subject"]) for m in messages) == sorted(sent), output
    for message in messages:
        assert _text(message) == sent[str(message["Subject"])]
        assert ann.address in str(message["From"]) and bob.address in str(message["To"])

    again, output = _getmail(setup, bob, tmp_path)
    assert again == [], output
    # Downloading is reading: the webmail shows them read, still in the Inbox.
    assert all(e["read"] for e in bob.inbox())


def test_a_message_whose_sender_is_offline_waits_for_the_next_run(setup: Pop3, tmp_path: Path) -> None:
    ann, bob = _pair(setup)
    subject, text = unique("Offline "), f"Sent while you slept {unique()}\n"
    _send(ann, bob, subject, text)

    setup.alpha.stop_web()
    try:
        messages, output = _getmail(setup, bob, tmp_path)
        assert messages == [], output
        assert "SYS/TEMP" in output, output
    finally:
        setup.alpha.start_web()

    messages, output = _getmail(setup, bob, tmp_path)
    assert [str(m["Subject"]) for m in messages] == [subject], output
    assert _text(messages[0]) == text
    assert _getmail(setup, bob, tmp_path)[0] == []


# --- fetchmail --------------------------------------------------------------------------------


def _fetchmail(setup: Pop3, user: Api, home: Path) -> tuple[list[bytes], str]:
    """Run fetchmail once over implicit TLS, keeping mail on the server; the messages it delivered."""
    out = home / "delivered"
    out.mkdir(exist_ok=True)
    deliver = home / "deliver.sh"
    deliver.write_text(f'#!/bin/sh\ncat > "$(mktemp -p {out} msg.XXXXXX)"\n')
    deliver.chmod(0o700)
    rc = home / "fetchmailrc"
    rc.write_text(
        f"set idfile {home / 'fetchids'}\nset no bouncemail\n"
        f"poll 127.0.0.1 service {setup.tls_port} protocol pop3 uidl\n"
        f'  user "{user.address}" password "{user.token}" is "nobody" here\n'
        f"  ssl sslcertfile {setup.cert} sslcertck sslcommonname mail.beta.test keep\n"
        f'  mda "{deliver}"\n'
    )
    rc.chmod(0o600)
    before = set(out.iterdir())
    result = subprocess.run(
        ["fetchmail", "--fetchmailrc", str(rc), "--pidfile", str(home / "pid"), "--nodetach", "--nosyslog", "-v"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(home), "FETCHMAILHOME": str(home)},
    )
    output = result.stdout + result.stderr
    return [p.read_bytes() for p in sorted(set(out.iterdir()) - before)], output


def test_fetchmail_downloads_over_tls_and_a_second_run_finds_nothing_new(setup: Pop3, tmp_path: Path) -> None:
    ann, bob = _pair(setup)
    subject, text = unique("Invoice "), f"Please find the figures: {unique()}\n"
    _send(ann, bob, subject, text)

    delivered, output = _fetchmail(setup, bob, tmp_path)
    assert len(delivered) == 1, output
    message = email.message_from_bytes(delivered[0], policy=email.policy.default)
    assert str(message["Subject"]) == subject
    assert _text(message) == text  # type: ignore[arg-type]

    again, output = _fetchmail(setup, bob, tmp_path)
    assert again == [], output


# --- Fetch accounting -------------------------------------------------------------------------

MANY = 1000


def _send_many(setup: Pop3, ann: Api, readers: list[list[str]], prefix: str) -> list[str]:
    """Send one message per reader list from ann, in one shell on alpha through ``send_message``
    (the service the API calls); the notifications go out through alpha's worker as usual."""
    subjects = [f"{prefix}{n:04d}" for n in range(len(readers))]
    shell_json(
        setup.alpha,
        "import json\n"
        "from accounts.models import User\n"
        "from outbox.services import send_message\n"
        f"ann = User.objects.get(email={ann.address!r})\n"
        f"for subject, to in zip({subjects!r}, {readers!r}):\n"
        "    send_message(sender=ann, to=to, subject=subject, text='Body of ' + subject + '\\n')\n"
        "print(json.dumps(True))\n",
    )
    return subjects


def _inbox_count(setup: Pop3, reader: Api) -> int:
    rows = sql(
        setup.beta,
        "SELECT count(*) FROM mailbox_inboxentry e JOIN accounts_user u ON u.id = e.owner_id "
        f"WHERE u.email = '{reader.address}'",
    )
    return int(rows[0][0])


def test_listing_a_thousand_messages_fetches_nothing_and_a_download_fetches_one_body_per_domain(
    setup: Pop3,
) -> None:
    ann, bob = _pair(setup)
    (bea,) = mailboxes(setup.beta, 1, prefix="bea")
    # The last message goes to bob and bea, both on beta.test: one domain, so one fetch for both.
    readers = [[bob.address]] * (MANY - 1) + [[bob.address, bea.address]]
    subjects = _send_many(setup, ann, readers, unique("Many ") + " ")
    wait_for(f"{MANY} notifications in bob's inbox", lambda: _inbox_count(setup, bob) == MANY, timeout=240)

    pop = _pop(setup, bob)
    count, _size = pop.stat()
    assert count == MANY
    assert len(pop.list()[1]) == MANY and len(pop.uidl()[1]) == MANY
    headers = [b"\n".join(pop.top(n, 0)[1]) for n in range(1, count + 1)]
    listed = sorted(h.split(b"Subject: ", 1)[1].split(b"\n", 1)[0].decode() for h in headers)
    assert listed == subjects
    assert _fetches(setup, ann) == 0  # listing 1,000 messages took no body from alpha

    last = next(n for n, h in enumerate(headers, start=1) if subjects[-1].encode() in h)
    message = email.message_from_bytes(_joined(pop.retr(last)[1]), policy=email.policy.default)
    assert _text(message) == f"Body of {subjects[-1]}\n"
    assert _fetches(setup, ann) == 1
    pop.quit()

    pop = _pop(setup, bea)
    message = email.message_from_bytes(_joined(pop.retr(1)[1]), policy=email.policy.default)
    pop.quit()
    assert _text(message) == f"Body of {subjects[-1]}\n"
    assert _fetches(setup, ann) == 1  # bea's copy came from beta's: one fetch per domain

    pop = _pop(setup, bob)
    assert pop.stat()[0] == MANY
    pop.quit()
    assert _fetches(setup, ann) == 1


# --- Sizes ------------------------------------------------------------------------------------


def test_list_gives_the_octets_retr_sends_once_a_message_was_downloaded(setup: Pop3) -> None:
    """RFC 1939: a mail program expects LIST's size to be what RETR delivers.

    Before a message's first download the listing has only the notification (no body may be
    fetched to list): LIST then gives the size the notification announced, which the MIME
    rendering may differ from. After a download, LIST and STAT give exactly what RETR sends.
    """
    ann, bob = _pair(setup)
    texts = [f"Dear Bob,\nthe figures are in: {unique()}.\n" * 30, f"Short note {unique()}\n"]
    for text in texts:
        _send(ann, bob, unique("Sizes "), text)

    pop = _pop(setup, bob)
    before = {n: size for n, size in (map(int, line.split()) for line in pop.list()[1])}
    assert len(before) == 2 and all(size > 0 for size in before.values())
    assert _fetches(setup, ann) == 0
    octets = {n: pop.retr(n)[2] for n in before}
    pop.quit()
    assert before != octets  # the notification's size is not the rendering's

    pop = _pop(setup, bob)
    listed = {n: size for n, size in (map(int, line.split()) for line in pop.list()[1])}
    assert listed == octets
    assert pop.stat() == (2, sum(octets.values()))
    for n, size in listed.items():
        assert int(pop.list(n).split()[2]) == size
        resp, lines, got = pop.retr(n)
        assert got == size and resp == f"+OK {size} octets".encode()
    pop.quit()


def test_lines_that_are_a_lone_dot_come_through_a_long_message_intact(setup: Pop3) -> None:
    """Dot-stuffing (RFC 1939 §3) holds for every line of a message longer than one write."""
    ann, bob = _pair(setup)
    text = ".\n" * 30000 + f"end {unique()}\n"
    _send(ann, bob, unique("Dots "), text)

    pop = _pop(setup, bob)
    resp, lines, octets = pop.retr(1)
    pop.quit()
    message = email.message_from_bytes(_joined(lines), policy=email.policy.default)
    assert _text(message) == text
    assert resp == f"+OK {octets} octets".encode()


# --- Protocol corners with poplib -------------------------------------------------------------


def test_wrong_password_and_unknown_user_get_the_same_refusal_then_the_limit(setup: Pop3) -> None:
    _ann, bob = _pair(setup)

    def refusal(user: str, password: str) -> str:
        pop = poplib.POP3("127.0.0.1", setup.port, timeout=30)
        pop.user(user)
        with pytest.raises(poplib.error_proto) as refused:
            pop.pass_(password)
        pop.close()
        return str(refused.value)

    wrong = refusal(bob.address, bob.token + "x")
    unknown = refusal(f"nobody-{unique()}@beta.test", bob.token)
    assert wrong == unknown and "[AUTH]" in wrong
    for _ in range(ACCOUNT_FAILURES - 1):
        refusal(bob.address, "pm_wrong")
    # Past the limit even the right password is not checked.
    assert "[SYS/TEMP]" in refusal(bob.address, bob.token)


def test_commands_out_of_state_and_bad_arguments_get_errors_and_the_session_goes_on(setup: Pop3) -> None:
    ann, bob = _pair(setup)
    _send(ann, bob, unique("State "), "text\n")
    pop = poplib.POP3("127.0.0.1", setup.port, timeout=30)
    for command in ("STAT", "RETR 1", "LIST", "DELE 1"):
        with pytest.raises(poplib.error_proto, match="Sign in first"):
            pop._shortcmd(command)
    with pytest.raises(poplib.error_proto, match="USER required"):
        pop.pass_(bob.token)
    with pytest.raises(poplib.error_proto, match="APOP is not offered"):
        pop._shortcmd(f"APOP {bob.address} 0123456789abcdef")
    pop.user(bob.address)
    pop.pass_(bob.token)
    with pytest.raises(poplib.error_proto, match="Already signed in"):
        pop.user(bob.address)
    for command, problem in (
        ("RETR 9", "No such message"),
        ("RETR x", "Not a message number"),
        ("TOP 1 -1", "Not a line count"),
        ("FROB", "Unknown command"),
        ("RETR", "Wrong number of arguments"),
        ("NOOP " + "x" * 300, "Command line too long"),
    ):
        with pytest.raises(poplib.error_proto, match=problem):
            pop._shortcmd(command)
    assert pop.stat()[0] == 1
    pop.quit()


def test_pipelined_commands_are_answered_in_order_even_behind_a_download(setup: Pop3) -> None:
    ann, bob = _pair(setup)
    subject = unique("Pipelined ")
    _send(ann, bob, subject, "first\n")
    with socket.create_connection(("127.0.0.1", setup.port), timeout=30) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        sock.sendall(f"USER {bob.address}\r\nPASS {bob.token}\r\nRETR 1\r\nFROB\r\nSTAT 1\r\nSTAT\r\nQUIT\r\n".encode())
        answer = b""
        while chunk := reader.read(4096):
            answer += chunk
    lines = answer.split(b"\r\n")
    assert lines[0].startswith(b"+OK") and lines[1] == b"+OK 1 messages"
    assert f"Subject: {subject}".encode() in lines
    end = lines.index(b".")
    assert lines[end + 1 : end + 5] == [
        b"-ERR Unknown command",
        b"-ERR Wrong number of arguments for this command",
        lines[end + 3],
        b"+OK Bye",
    ]
    assert lines[end + 3].startswith(b"+OK 1 ")


def test_uidl_is_stable_and_dele_moves_to_trash_at_quit_only(setup: Pop3) -> None:
    ann, bob = _pair(setup)
    first, second = unique("Keep "), unique("Drop ")
    _send(ann, bob, first, "keep\n")
    _send(ann, bob, second, "drop\n")

    pop = _pop(setup, bob)
    uids = pop.uidl()[1]
    pop.dele(2)
    with pytest.raises(poplib.error_proto, match="already deleted"):
        pop.retr(2)
    assert pop.stat()[0] == 1
    pop.rset()
    assert pop.stat()[0] == 2
    pop.dele(2)
    pop.close()  # the connection drops without QUIT: nothing moves (RFC 1939 §6)
    assert {e["subject"] for e in bob.inbox() if e["folder"] == "inbox"} == {first, second}

    pop = _pop(setup, bob)
    assert pop.uidl()[1] == uids
    pop.dele(2)
    pop.quit()
    folders = {e["subject"]: e["folder"] for e in bob.inbox()}
    assert folders == {first: "inbox", second: "trash"}
    pop = _pop(setup, bob)
    assert pop.uidl()[1] == uids[:1]
    pop.quit()


def test_top_gives_headers_and_the_first_lines(setup: Pop3) -> None:
    ann, bob = _pair(setup)
    subject = unique("Top ")
    _send(ann, bob, subject, "line one\nline two\nline three\n")
    pop = _pop(setup, bob)
    head = pop.top(1, 0)[1]
    assert f"Subject: {subject}".encode() in head and head[-1] == b""
    assert _fetches(setup, ann) == 0
    top = pop.top(1, 1)[1]
    assert b"line one" in top and b"line three" not in top
    pop.quit()


def test_withdrawn_message_is_a_short_system_message(setup: Pop3) -> None:
    ann, bob = _pair(setup)
    subject = unique("Oops ")
    sent = ann.send(to=[bob.address], subject=subject, text="never to be read\n")
    entry = bob.entry_with_subject(subject)
    ann.withdraw(sent["id"])
    wait_for("the withdrawal to reach bob", lambda: bob.listed_state(entry["id"]) == "withdrawn")

    pop = _pop(setup, bob)
    message = email.message_from_bytes(_joined(pop.retr(1)[1]), policy=email.policy.default)
    pop.quit()
    assert str(message["Subject"]) == f"[Not available] {subject}"
    assert "withdrew this message" in _text(message)  # type: ignore[arg-type]
    assert "never to be read" not in _text(message)  # type: ignore[arg-type]


def test_sign_in_in_the_clear_is_refused_off_loopback_and_taken_after_stls(setup: Pop3) -> None:
    _ann, bob = _pair(setup)
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no address but loopback to connect from")
    pop = poplib.POP3(address, setup.port, timeout=30)
    assert "USER" not in pop.capa() and "STLS" in pop.capa()
    with pytest.raises(poplib.error_proto, match="needs TLS"):
        pop.user(bob.address)
    context = ssl.create_default_context(cafile=setup.cert)
    context.check_hostname = False
    pop.stls(context)
    assert "USER" in pop.capa()
    pop.user(bob.address)
    pop.pass_(bob.token)
    assert pop.stat()[0] == 0
    pop.quit()


def test_implicit_tls_port_serves_the_same_maildrop(setup: Pop3) -> None:
    ann, bob = _pair(setup)
    subject = unique("Secure ")
    _send(ann, bob, subject, "over TLS\n")
    context = ssl.create_default_context(cafile=setup.cert)
    context.check_hostname = False
    pop = poplib.POP3_SSL("127.0.0.1", setup.tls_port, context=context, timeout=30)
    assert "STLS" not in pop.capa()
    pop.user(bob.address)
    pop.pass_(bob.token)
    message = email.message_from_bytes(_joined(pop.retr(1)[1]), policy=email.policy.default)
    pop.quit()
    assert str(message["Subject"]) == subject


# --- The demo -----------------------------------------------------------------------------------


def test_the_demo_starts_mail_access_and_the_settings_it_prints_sign_a_mail_program_in(
    setup: Pop3, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tools import demo

    ann, bob = _pair(setup)
    subject = unique("Demo ")
    _send(ann, bob, subject, "Read in a mail program.\n")
    for ports in ("SMTP_PORTS", "SUBMISSION_PORTS", "POP3_PORTS", "IMAP_PORTS"):
        monkeypatch.setattr(demo, ports, {"alpha": free_port(), "beta": free_port()})
    monkeypatch.setattr(demo, "MAILBOXES", {"alpha": [ann.address], "beta": [bob.address]})

    servers = demo.start_mail_servers(setup.beta, "beta")
    try:
        assert demo.answers(demo.POP3_PORTS["beta"], b"+OK")
        printed = demo.usage({"alpha": ann.token, "beta": bob.token}, setup.beta.data_dir)
        user, password, pop3_port = re.search(  # type: ignore[union-attr]
            rf"user ({re.escape(bob.address)}), app password (\S+)\n.*POP3 port (\d+)", printed
        ).groups()
        pop = poplib.POP3("127.0.0.1", int(pop3_port), timeout=30)
        pop.user(user)
        pop.pass_(password)
        message = email.message_from_bytes(_joined(pop.retr(1)[1]), policy=email.policy.default)
        pop.quit()
        assert str(message["Subject"]) == subject
        assert f"SMTP (submission) port {demo.SUBMISSION_PORTS['beta']}" in printed
    finally:
        demo.stop_mail_servers(servers)
    assert all(server.returncode is not None for server in servers)
