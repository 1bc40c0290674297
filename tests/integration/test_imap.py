"""Mail programs read and file bob's mail over IMAP: mbsync and imaplib against a real ``manage.py mailaccess``.

Started once for the module: two instances (alpha.test sends, beta.test holds
bob's mailbox) and beta's mail-access process as its own process, with a
certificate for STARTTLS on its IMAP port and a second port with implicit TLS.
The clients sign in with an app password (an API token). Fetches from the
sender are counted on alpha (``outbox_bodyfetch``, one row per body served).
Changes "in the webmail" are made by the services the webmail's views call.
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import Api, Cluster, mailboxes, shell_json, sql, start_cluster, unique, wait_for
from tests.integration.test_submission import _non_loopback_address
from tests.smtp_support import free_port, self_signed
from tools.cluster import PYTHON, ROOT

FETCH_WAIT = 5
ACCOUNT_FAILURES = 3


@dataclass
class Imap:
    cluster: Cluster
    port: int
    tls_port: int
    cert: str

    @property
    def alpha(self):  # type: ignore[no-untyped-def]
        return self.cluster["imap_alpha"]

    @property
    def beta(self):  # type: ignore[no-untyped-def]
        return self.cluster["imap_beta"]


def _wait_greeting(port: int, proc: subprocess.Popen[bytes]) -> None:
    def greeted() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"manage.py mailaccess exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                return sock.makefile("rb").readline().startswith(b"* OK")
        except OSError:
            return False

    wait_for(f"the IMAP server on port {port}", greeted, timeout=60)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Imap]:
    base = tmp_path_factory.mktemp("imap")
    cert, key = self_signed(base, "mail.beta.test")
    cluster = start_cluster(base, {"imap_alpha": ["alpha.test"], "imap_beta": ["beta.test"]})
    beta = cluster["imap_beta"]
    port, tls_port = free_port(), free_port()
    env = {
        **beta.env(),
        "PUSHMAIL_POP3_LISTEN": f"127.0.0.1:{free_port()}",
        "PUSHMAIL_IMAP_LISTEN": f"0.0.0.0:{port}",
        "PUSHMAIL_IMAP_TLS_LISTEN": f"127.0.0.1:{tls_port}",
        "PUSHMAIL_MAILACCESS_TLS_CERT": cert,
        "PUSHMAIL_MAILACCESS_TLS_KEY": key,
        "PUSHMAIL_LEGACY_FETCH_WAIT": str(FETCH_WAIT),
        "PUSHMAIL_IMAP_IDLE_POLL": "1",
        "PUSHMAIL_IMAP_MAX_LITERAL": str(1024 * 1024),
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
        yield Imap(cluster, port, tls_port, cert)
    finally:
        server.terminate()
        server.wait(timeout=30)
        cluster.stop()


def _pair(setup: Imap) -> tuple[Api, Api]:
    (ann,) = mailboxes(setup.alpha, 1, prefix="ann")
    (bob,) = mailboxes(setup.beta, 1, prefix="bob")
    return ann, bob


def _send(ann: Api, bob: Api, subject: str, text: str) -> dict:
    ann.send(to=[bob.address], subject=subject, text=text)
    return bob.entry_with_subject(subject)


def _fetches(setup: Imap, sender: Api) -> int:
    """Bodies alpha has served for this sender's messages."""
    rows = sql(
        setup.alpha,
        "SELECT count(*) FROM outbox_bodyfetch f JOIN outbox_message m ON m.id = f.message_id "
        f"JOIN accounts_user u ON u.id = m.sender_id WHERE u.email = '{sender.address}'",
    )
    return int(rows[0][0])


def _imap(setup: Imap, user: Api) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", setup.port, timeout=FETCH_WAIT + 30)
    client.login(user.address, user.token)
    return client


def _entries(setup: Imap, user: Api) -> dict[str, dict]:
    """Bob's entries by subject with their folder, read and starred state (as the webmail shows them)."""
    rows = shell_json(
        setup.beta,
        "import json\nfrom mailbox.models import InboxEntry\n"
        f"print(json.dumps(list(InboxEntry.objects.filter(owner__email={user.address!r})"
        ".values('id', 'subject', 'folder', 'read', 'starred'))))",
    )
    return {row["subject"]: row for row in rows}


def _webmail(setup: Imap, user: Api, call: str) -> None:
    """Run one of mailbox.folders' services (what the webmail's buttons call) as ``user``."""
    setup.beta.shell(
        "from accounts.models import User\nfrom mailbox import folders\n"
        f"user = User.objects.get(email={user.address!r})\nfolders.{call}\n"
    )


def _fetch_items(data: list) -> list[bytes]:
    """The FETCH response lines imaplib returns, literals joined in."""
    items: list[bytes] = []
    follows = False
    for part in data:
        if isinstance(part, tuple):
            items.append(part[0] + part[1])
            follows = True
        elif part and follows:
            items[-1] += part  # what comes after a literal, up to the closing parenthesis
            follows = False
        elif part:
            items.append(part)
    return items


def _uids(client: imaplib.IMAP4) -> list[int]:
    status, data = client.uid("SEARCH", "ALL")
    assert status == "OK", data
    return [int(n) for n in data[0].split()]


# --- Fetch accounting -------------------------------------------------------------------------


def test_listing_fetches_nothing_from_the_sender_and_one_download_fetches_one_body(setup: Imap) -> None:
    ann, bob = _pair(setup)
    subjects = [unique("Many ") for _ in range(25)]
    for subject in subjects:
        ann.send(to=[bob.address], subject=subject, text=f"Body of {subject}\n")
    wait_for("every message in bob's inbox", lambda: len(bob.inbox()) == len(subjects), timeout=60)

    client = _imap(setup, bob)
    status, data = client.select("INBOX")
    assert (status, data) == ("OK", [b"25"])
    status, data = client.uid(
        "FETCH", "1:*", "(FLAGS ENVELOPE RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])"
    )
    assert status == "OK", data
    items = _fetch_items(data)
    assert len(items) == 25
    assert _fetches(setup, ann) == 0
    listed = sorted(re.search(rb"Subject: ([^\r\n]+)", item).group(1).decode() for item in items)  # type: ignore[union-attr]
    assert listed == sorted(subjects)
    assert all(b"\\Seen" not in item.split(b"ENVELOPE")[0] for item in items)
    assert all(ann.address.encode() in item for item in items)

    uid = _uids(client)[0]
    status, data = client.uid("FETCH", str(uid), "(BODY.PEEK[])")
    assert status == "OK", data
    assert _fetches(setup, ann) == 1
    message = email.message_from_bytes(data[0][1], policy=email.policy.default)
    text = message.get_content().replace("\r\n", "\n")  # type: ignore[attr-defined]
    assert text.endswith(f"Body of {message['Subject']}\n")
    # BODY.PEEK leaves it unread; BODY[TEXT] reads it (and fetches nothing more).
    assert not _entries(setup, bob)[str(message["Subject"])]["read"]
    status, data = client.uid("FETCH", str(uid), "(BODY[TEXT] FLAGS)")
    assert status == "OK" and f"Body of {message['Subject']}".encode() in data[0][1], data
    assert _fetches(setup, ann) == 1
    assert _entries(setup, bob)[str(message["Subject"])]["read"]
    client.logout()


def test_a_body_whose_sender_is_offline_is_no_unavailable_and_comes_once_it_is_back(setup: Imap) -> None:
    ann, bob = _pair(setup)
    subject, text = unique("Offline "), f"Sent while you slept {unique()}\n"
    _send(ann, bob, subject, text)
    client = _imap(setup, bob)
    client.select("INBOX")

    setup.alpha.stop_web()
    try:
        status, data = client.fetch("1", "(BODY.PEEK[])")
        assert status == "NO" and b"[UNAVAILABLE]" in data[0], data
        # The session goes on: listing still answers from the notification.
        status, data = client.fetch("1", "(ENVELOPE)")
        assert status == "OK" and subject.encode() in data[0], data
    finally:
        setup.alpha.start_web()

    # As a mail program does after "try again later": ask again until the body is here. An attempt
    # that was already under way against the stopped server may still end in NO first.
    def body_here() -> tuple[str, list[object]] | None:
        status, data = client.fetch("1", "(BODY.PEEK[])")
        return (status, data) if status == "OK" else None

    status, data = wait_for("the body once its sender is back", body_here, timeout=60, interval=2)
    assert text.replace("\n", "\r\n").encode() in data[0][1]
    client.logout()


# --- Flags, folders and UIDs both ways --------------------------------------------------------


def test_flags_and_folders_change_both_ways_and_uids_stay_stable(setup: Imap) -> None:
    ann, bob = _pair(setup)
    first, second, third = unique("One "), unique("Two "), unique("Three ")
    for subject in (first, second, third):
        _send(ann, bob, subject, "text\n")

    client = _imap(setup, bob)
    status, data = client.select("INBOX")
    validity = client.untagged_responses.get("UIDVALIDITY", [b"0"])[0]
    uids = _uids(client)
    assert len(uids) == 3 and uids == sorted(uids)

    # Mail program -> webmail: \Seen is read, \Flagged is starred.
    assert client.uid("STORE", str(uids[0]), "+FLAGS", r"(\Seen \Flagged)")[0] == "OK"
    entries = _entries(setup, bob)
    assert (entries[first]["read"], entries[first]["starred"]) == (True, True)
    assert (entries[second]["read"], entries[second]["starred"]) == (False, False)

    # Webmail -> mail program: shown at the next NOOP.
    _webmail(setup, bob, f"mark_read(user=user, entry_ids=[{entries[first]['id']}], read=False)")
    _webmail(setup, bob, f"move_entries(user=user, entry_ids=[{entries[second]['id']}], folder='archive')")
    client.noop()
    assert client.untagged_responses.pop("EXPUNGE") == [b"2"]  # the second message left for Archive
    status, data = client.uid("FETCH", "1:*", "(FLAGS)")
    flags = {int(re.search(rb"UID (\d+)", d).group(1)): d for d in data}  # type: ignore[union-attr]
    assert set(flags) == {uids[0], uids[2]}
    assert b"\\Seen" not in flags[uids[0]] and b"\\Flagged" in flags[uids[0]]

    # \Deleted and EXPUNGE move to Trash, where the message has a UID of Trash's own.
    assert client.uid("STORE", str(uids[2]), "+FLAGS", r"(\Deleted)")[0] == "OK"
    status, data = client.expunge()
    assert status == "OK" and data == [b"2"], data
    assert _entries(setup, bob)[third]["folder"] == "trash"

    # MOVE to Archive: COPYUID names the new UID there, higher than the one moved in by the webmail.
    status, data = client.select("Archive")
    archived = _uids(client)
    client.select("INBOX")
    status, data = client._simple_command("UID", "MOVE", str(uids[0]), "Archive")
    assert status == "OK", data
    codes = b" ".join(client.untagged_responses.get("OK", []))
    _validity, source, target = re.search(rb"\[COPYUID (\d+) (\S+) (\S+)\]", codes).groups()  # type: ignore[union-attr]
    assert int(source) == uids[0] and int(target) > max(archived)
    assert _entries(setup, bob)[first]["folder"] == "archive"
    client.logout()

    # A new session sees the same UIDVALIDITY and the same UIDs.
    client = _imap(setup, bob)
    client.select("Archive")
    assert client.untagged_responses.get("UIDVALIDITY", [b""])[0] != b""
    assert _uids(client) == [*archived, int(target)]
    client.select("INBOX")
    assert client.untagged_responses.get("UIDVALIDITY", [b"0"])[0] == validity
    client.logout()


def test_mailboxes_are_listed_with_their_special_use_and_labels(setup: Imap) -> None:
    _ann, bob = _pair(setup)
    client = _imap(setup, bob)
    assert client.create("Projects")[0] == "OK"
    status, data = client.list()
    assert status == "OK"
    listed = {line.rsplit(b' "/" ', 1)[1].strip(b'"'): line for line in data}  # type: ignore[union-attr]
    assert set(listed) == {b"INBOX", b"Archive", b"Sent", b"Drafts", b"Spam", b"Trash", b"Projects"}
    assert b"\\Junk" in listed[b"Spam"] and b"\\Sent" in listed[b"Sent"] and b"\\Trash" in listed[b"Trash"]
    assert b"\\Archive" in listed[b"Archive"] and b"\\Drafts" in listed[b"Drafts"]
    # Thunderbird asks with RFC 5258's selection option.
    status, data = client._simple_command("LIST", "(SPECIAL-USE)", '""', '"*"')
    assert status == "OK" and len(client.untagged_responses.pop("LIST")) == 7
    status, data = client.select("Nowhere")
    assert status == "NO" and b"[NONEXISTENT]" in data[0]
    status, data = client.status("INBOX", "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN)")
    assert status == "OK" and b"MESSAGES 0" in data[0]
    client.logout()


def test_append_to_drafts_makes_a_draft_and_sent_refuses_a_stranger(setup: Imap) -> None:
    _ann, bob = _pair(setup)
    client = _imap(setup, bob)
    draft = f"To: carol@alpha.test\r\nSubject: Plan {unique()}\r\n\r\nHalf written\r\n".encode()
    status, data = client.append("Drafts", r"(\Draft)", None, draft)
    assert status == "OK" and b"[APPENDUID" in data[0], data
    client.select("Drafts")
    status, data = client.fetch("1", "(BODY.PEEK[])")
    assert status == "OK" and b"Half written" in data[0][1]
    status, data = client.append("Sent", None, None, b"Subject: never sent here\r\nMessage-ID: <x@y>\r\n\r\nhi\r\n")
    assert status == "NO" and b"[CANNOT]" in data[0]
    client.logout()


# --- IDLE -------------------------------------------------------------------------------------


def test_idle_announces_new_mail_and_webmail_changes(setup: Imap) -> None:
    ann, bob = _pair(setup)
    first = unique("Before ")
    _send(ann, bob, first, "one\n")
    with socket.create_connection(("127.0.0.1", setup.port), timeout=60) as sock:
        reader = sock.makefile("rb")

        def command(line: str) -> list[bytes]:
            tag = line.split()[0].encode()
            sock.sendall(line.encode() + b"\r\n")
            answer = []
            while not (got := reader.readline()).startswith(tag + b" "):
                answer.append(got)
            assert got.startswith(tag + b" OK"), got
            return answer

        assert reader.readline().startswith(b"* OK")
        command(f'a LOGIN "{bob.address}" "{bob.token}"')
        assert b"* 1 EXISTS\r\n" in command("b SELECT INBOX")
        sock.sendall(b"c IDLE\r\n")
        assert reader.readline().startswith(b"+")
        _send(ann, bob, unique("During "), "two\n")
        assert reader.readline() == b"* 2 EXISTS\r\n"
        entry = _entries(setup, bob)[first]
        _webmail(setup, bob, f"star(user=user, entry_ids=[{entry['id']}])")
        assert reader.readline().startswith(b"* 1 FETCH (FLAGS (\\Flagged)")
        sock.sendall(b"DONE\r\n")
        assert reader.readline().startswith(b"c OK")
        command("d LOGOUT")


# --- Bad input and protocol corners -----------------------------------------------------------


def test_wrong_password_and_unknown_user_get_the_same_refusal_then_the_limit(setup: Imap) -> None:
    _ann, bob = _pair(setup)

    def refusal(user: str, password: str) -> str:
        client = imaplib.IMAP4("127.0.0.1", setup.port, timeout=30)
        with pytest.raises(imaplib.IMAP4.error) as refused:
            client.login(user, password)
        client.shutdown()
        return str(refused.value)

    wrong = refusal(bob.address, bob.token + "x")
    unknown = refusal(f"nobody-{unique()}@beta.test", bob.token)
    assert wrong == unknown and "[AUTHENTICATIONFAILED]" in wrong
    for _ in range(ACCOUNT_FAILURES - 1):
        refusal(bob.address, "pm_wrong")
    assert "[UNAVAILABLE]" in refusal(bob.address, bob.token)


def _raw(setup: Imap, user: Api | None) -> tuple[socket.socket, object]:
    sock = socket.create_connection(("127.0.0.1", setup.port), timeout=30)
    reader = sock.makefile("rb")
    assert reader.readline().startswith(b"* OK")
    if user is not None:
        sock.sendall(f'a LOGIN "{user.address}" "{user.token}"\r\n'.encode())
        assert reader.readline().startswith(b"a OK")
    return sock, reader


def test_commands_out_of_state_malformed_commands_and_huge_literals_get_errors_and_the_session_goes_on(
    setup: Imap,
) -> None:
    ann, bob = _pair(setup)
    _send(ann, bob, unique("State "), "text\n")
    sock, reader = _raw(setup, None)
    answers = []
    for line in (b"a SELECT INBOX", b"b FETCH 1 FLAGS", b"c FROB", b"d", b"e LOGIN {5000000000}"):
        sock.sendall(line + b"\r\n")
        answers.append(reader.readline())  # type: ignore[attr-defined]
    assert answers[0] == b"a BAD Sign in first (LOGIN)\r\n"
    assert answers[1] == b"b BAD Sign in first (LOGIN)\r\n"
    assert answers[2].startswith(b"c BAD")
    assert answers[3].startswith(b"d BAD")
    assert answers[4].startswith(b"e BAD") and b"Literal too long" in answers[4]
    sock.sendall(f'f LOGIN "{bob.address}" "{bob.token}"\r\n'.encode())
    assert reader.readline().startswith(b"f OK")  # type: ignore[attr-defined]
    sock.sendall(b"g FETCH 1 FLAGS\r\n")
    assert reader.readline() == b"g BAD Select a mailbox first (SELECT)\r\n"  # type: ignore[attr-defined]
    # An APPEND claiming gigabytes is refused before any of it is read.
    sock.sendall(b"h APPEND Drafts {4000000000}\r\n")
    refused = reader.readline()  # type: ignore[attr-defined]
    assert refused.startswith(b"h BAD") and b"TOOBIG" in refused
    sock.sendall(b"i SELECT INBOX\r\n")
    while not (line := reader.readline()).startswith(b"i "):  # type: ignore[attr-defined]
        pass
    assert line.startswith(b"i OK [READ-WRITE]")
    sock.close()


def test_uid_ranges_and_a_uid_set_of_a_million_ranges(setup: Imap) -> None:
    ann, bob = _pair(setup)
    for n in range(3):
        _send(ann, bob, unique(f"Range{n} "), "text\n")
    client = _imap(setup, bob)
    client.select("INBOX")
    uids = _uids(client)
    status, data = client.uid("FETCH", f"{uids[1]}:*", "(FLAGS)")
    assert status == "OK" and len(data) == 2
    status, data = client.uid("FETCH", f"{uids[2]}:{uids[0]},{uids[1]},999999", "(UID)")
    assert sorted(int(re.search(rb"UID (\d+)", d).group(1)) for d in data) == uids  # type: ignore[union-attr]
    many = ",".join(f"{uids[0]}:{uids[2]}" for _ in range(5000))
    status, data = client.uid("FETCH", many, "(UID)")
    assert status == "OK" and len(data) == 3
    client.logout()

    # A million ranges in one command line (14 MB): refused, and the session goes on.
    sock, reader = _raw(setup, bob)
    sock.sendall(b"b SELECT INBOX\r\n")
    while not reader.readline().startswith(b"b "):  # type: ignore[attr-defined]
        pass
    sock.sendall(b"c UID FETCH " + b",".join(b"%d:%d" % (n, n + 1) for n in range(1, 2_000_000, 2)) + b" (UID)\r\n")
    assert reader.readline() == b"c BAD Command line too long (at most 65536 octets)\r\n"  # type: ignore[attr-defined]
    sock.sendall(b"d UID FETCH 1:* (UID)\r\n")
    answer = [reader.readline() for _ in range(4)]  # type: ignore[attr-defined]
    assert [line.split(b" (")[0] for line in answer[:3]] == [b"* 1 FETCH", b"* 2 FETCH", b"* 3 FETCH"]
    assert answer[3].startswith(b"d OK")
    sock.close()


def test_sign_in_in_the_clear_is_refused_off_loopback_and_taken_after_starttls(setup: Imap) -> None:
    _ann, bob = _pair(setup)
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no address but loopback to connect from")
    client = imaplib.IMAP4(address, setup.port, timeout=30)
    assert "LOGINDISABLED" in client.capabilities and "STARTTLS" in client.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        client.login(bob.address, bob.token)
    context = ssl.create_default_context(cafile=setup.cert)
    context.check_hostname = False
    client.starttls(context)
    assert "LOGINDISABLED" not in client.capabilities
    client.login(bob.address, bob.token)
    assert client.select("INBOX")[0] == "OK"
    client.logout()


def test_implicit_tls_port_serves_the_same_mailbox(setup: Imap) -> None:
    ann, bob = _pair(setup)
    subject = unique("Secure ")
    _send(ann, bob, subject, "over TLS\n")
    context = ssl.create_default_context(cafile=setup.cert)
    context.check_hostname = False
    client = imaplib.IMAP4_SSL("127.0.0.1", setup.tls_port, ssl_context=context, timeout=30)
    assert "STARTTLS" not in client.capabilities
    client.login(bob.address, bob.token)
    client.select("INBOX")
    status, data = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert status == "OK" and subject.encode() in data[0][1]
    client.logout()


# --- mbsync -----------------------------------------------------------------------------------


def _mbsync(setup: Imap, user: Api, home: Path) -> str:
    """Mirror the user's IMAP account to ``home``/mail (a Maildir per mailbox) and back, once."""
    (home / "mail").mkdir(exist_ok=True)
    config = home / "mbsyncrc"
    config.write_text(
        f"IMAPAccount pushmail\nHost 127.0.0.1\nPort {setup.port}\nUser {user.address}\nPass {user.token}\n"
        "SSLType None\nAuthMechs LOGIN\n\n"
        "IMAPStore remote\nAccount pushmail\n\n"
        f"MaildirStore local\nPath {home}/mail/\nInbox {home}/mail/INBOX\nSubFolders Verbatim\n\n"
        "Channel mirror\nFar :remote:\nNear :local:\nPatterns INBOX Archive Trash\nCreate Near\n"
        "Sync All\nExpunge Both\nSyncState *\n"
    )
    result = subprocess.run(
        ["mbsync", "-c", str(config), "mirror"], capture_output=True, text=True, timeout=120, env={**os.environ}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def _maildir(home: Path, mailbox: str) -> dict[str, Path]:
    """The mirrored messages of one mailbox by subject."""
    found = {}
    for sub in ("cur", "new"):
        folder = home / "mail" / mailbox / sub
        for path in folder.iterdir() if folder.is_dir() else []:
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            found[str(message["Subject"])] = path
    return found


@pytest.mark.skipif(
    os.environ.get("CI", "").lower() not in {"1", "true", "yes"} and shutil.which("mbsync") is None,
    reason="Debian's isync (mbsync) is not installed (apt-get install isync)",
)
def test_mbsync_mirrors_bobs_account_and_flags_and_moves_go_both_ways(setup: Imap, tmp_path: Path) -> None:
    ann, bob = _pair(setup)
    kept, starred, archived = unique("Kept "), unique("Starred "), unique("Archived ")
    for subject in (kept, starred, archived):
        _send(ann, bob, subject, f"Text of {subject}\n")

    _mbsync(setup, bob, tmp_path)
    inbox = _maildir(tmp_path, "INBOX")
    assert set(inbox) == {kept, starred, archived}
    assert f"Text of {kept}" in inbox[kept].read_text()

    # Locally: flag one (Maildir flag F) and read it (S); the webmail shows it starred and read.
    path = inbox[starred]
    path.rename(path.parent.parent / "cur" / (path.name.split(":2,")[0] + ":2,FS"))
    # In the webmail: archive one; the mirror moves it.
    entries = _entries(setup, bob)
    _webmail(setup, bob, f"move_entries(user=user, entry_ids=[{entries[archived]['id']}], folder='archive')")
    time.sleep(1)  # mbsync compares modification times of whole seconds
    _mbsync(setup, bob, tmp_path)

    entries = _entries(setup, bob)
    assert (entries[starred]["starred"], entries[starred]["read"]) == (True, True)
    assert set(_maildir(tmp_path, "INBOX")) == {kept, starred}
    assert set(_maildir(tmp_path, "Archive")) == {archived}

    # In the webmail: star another; the mirror's copy gets the flag.
    _webmail(setup, bob, f"star(user=user, entry_ids=[{entries[kept]['id']}])")
    _mbsync(setup, bob, tmp_path)
    flags = _maildir(tmp_path, "INBOX")[kept].name.split(":2,")[1]
    assert "F" in flags
