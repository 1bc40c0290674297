"""The gateway's spool: a message answered 250 is committed first and filed in batches (gateway.filing).

Nothing answered 250 is lost, even when the process that took it is killed while
filing it; a message that cannot be filed does not hold up the rest of its batch.
"""

from __future__ import annotations

import io
import os
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import IntegrityError, connection

from accounts.models import User
from attachments import services as attachment_services
from attachments.models import Blob
from federation import payloads
from gateway import auth, filing, services, spool
from gateway.models import SpooledMessage, SpoolState
from gateway.server import GatewayController
from gateway.states import SPOOLED_MESSAGE
from mailbox.models import InboxEntry, RemoteMessage
from tests.factories import DomainFactory, MailboxFactory
from tests.smtp_support import Zone, dns_server, free_port

HOSTED = "alpha.test"
BOB = f"bob@{HOSTED}"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def dns() -> Iterator[tuple[Zone, str]]:
    with dns_server() as running:
        yield running


@pytest.fixture
def zone(dns: tuple[Zone, str], settings: Any) -> Iterator[Zone]:
    found, address = dns
    settings.PUSHMAIL_DNS_RESOLVER = address
    settings.PUSHMAIL_DNS_TIMEOUT = 2.0
    settings.PUSHMAIL_SMTP_HOSTNAME = "mx.alpha.test"
    found.clear()
    cache = auth.resolver().cache
    if cache is not None:
        cache.flush()
    found.add("example.org", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    yield found
    found.clear()


@pytest.fixture
def bob(zone: Zone) -> User:
    return MailboxFactory(domain=DomainFactory(name=HOSTED), local_part="bob")


def _raw(subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Alice <alice@example.org>"
    msg["To"] = BOB
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@example.org>"
    msg.set_content("Plain words.\n")
    return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _receive(subject: str, *, mail_from: str = "alice@example.org") -> services.Reply:
    taken = services.recipient_reply(BOB)
    assert taken.user is not None
    envelope = services.Envelope(
        client_ip="127.0.0.1",
        helo="mail.example.org",
        mail_from=mail_from,
        recipients=[BOB],
        used_bytes={BOB: taken.used_bytes or 0},
        users={BOB: taken.user},
    )
    return services.receive_message(envelope=envelope, raw=_raw(subject))


def _subjects(bob: User) -> set[str]:
    return set(InboxEntry.objects.filter(owner=bob, remote__isnull=False).values_list("subject", flat=True))


def test_a_message_answered_250_is_filed_even_if_the_gateway_is_killed_while_filing_it(
    zone: Zone, bob: User, settings: Any, tmp_path: Path
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("a real gateway process shares the test database: PostgreSQL only")
    database = connection.settings_dict
    url = f"postgresql://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}"
    port = free_port()
    env = {
        **os.environ,
        "DEBUG": "1",
        "DATABASE_URL": url,
        "PUSHMAIL_DATA_DIR": str(tmp_path),
        "PUSHMAIL_DNS_RESOLVER": settings.PUSHMAIL_DNS_RESOLVER,
        "PUSHMAIL_SMTP_HOSTNAME": "mx.alpha.test",
    }
    command = [sys.executable, "manage.py", "smtpd", "--listen", f"127.0.0.1:{port}"]
    # Filing inserts the messages: while another session holds this lock it waits, its batch open.
    blocker = psycopg.connect(url, autocommit=False)
    gateway = subprocess.Popen(
        command, cwd=settings.BASE_DIR, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert gateway.stdout is not None
        assert "SMTP gateway listening" in gateway.stdout.readline()
        blocker.execute("LOCK TABLE mailbox_remotemessage IN SHARE MODE")
        with smtplib.SMTP("127.0.0.1", port, local_hostname="mail.example.org", timeout=30) as client:
            refused = client.sendmail("alice@example.org", [BOB], _raw("Killed before filed"))
        assert refused == {}  # 250: taken
        # The filing loop has the row locked, waiting for the table: found by a lock-skipping claim, nothing.
        with blocker.cursor() as cursor:
            cursor.execute("SELECT state FROM gateway_spooledmessage")
            assert cursor.fetchall() == [("queued",)]
        os.killpg(gateway.pid, signal.SIGKILL)  # mid-batch: no chance to finish, commit or clean up
        gateway.wait(timeout=30)
    finally:
        blocker.rollback()
        blocker.close()
        if gateway.poll() is None:
            os.killpg(gateway.pid, signal.SIGKILL)
            gateway.wait(timeout=30)
    assert not RemoteMessage.objects.exists()
    spooled = SpooledMessage.objects.get()
    assert spooled.state == SpoolState.QUEUED and bytes(spooled.head).endswith(b"Plain words.\r\n")

    assert filing.file_due() == 1  # what any gateway's filing loop does at its next sweep
    assert _subjects(bob) == {"Killed before filed"}
    spooled.refresh_from_db()
    assert spooled.state == SpoolState.FILED and bytes(spooled.head) == b""


def test_a_batch_with_a_message_that_cannot_be_read_files_the_others_and_tells_the_recipient(
    bob: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    for subject in ("First", "Unreadable", "Third"):
        assert _receive(subject).code == 250
    read = services.file_spooled

    def unreadable(*, row: SpooledMessage, **kwargs: Any) -> Any:
        if b"Subject: Unreadable" in bytes(row.head):
            raise payloads.PayloadError("subject", "not what a body may hold")
        return read(row=row, **kwargs)

    monkeypatch.setattr(services, "file_spooled", unreadable)
    assert filing.file_due() == 3
    assert _subjects(bob) == {"First", "Third"}
    failed = SpooledMessage.objects.get(state=SpoolState.FAILED)
    assert "cannot be read as mail" in failed.last_error and bytes(failed.head)  # kept for the admin
    notice = InboxEntry.objects.get(owner=bob, remote__isnull=True)
    assert notice.subject == "A message to you could not be filed"
    assert "alice@example.org" in notice.notice_text and "not what a body may hold" in notice.notice_text
    assert SpooledMessage.objects.filter(state=SpoolState.FILED).count() == 2


def test_a_batch_that_fails_as_a_whole_is_filed_one_by_one_and_the_failing_message_retried(
    bob: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    for subject in ("First", "Breaks filing", "Third"):
        assert _receive(subject).code == 250
    read = services.file_spooled

    def breaking(*, row: SpooledMessage, **kwargs: Any) -> Any:
        if b"Subject: Breaks filing" in bytes(row.head):
            raise RuntimeError("the database went away")
        return read(row=row, **kwargs)

    monkeypatch.setattr(services, "file_spooled", breaking)
    assert filing.file_due() == 3
    assert _subjects(bob) == {"First", "Third"}
    waiting = SpooledMessage.objects.get(state=SpoolState.QUEUED)
    assert waiting.attempts == 1 and "Breaks filing" in bytes(waiting.head).decode()
    assert filing.file_due() == 0  # not due again before its backoff

    monkeypatch.setattr(services, "file_spooled", read)  # the passing failure passed
    SpooledMessage.objects.filter(pk=waiting.pk).update(next_attempt_at=waiting.received_at)
    assert filing.file_due() == 1
    assert _subjects(bob) == {"First", "Breaks filing", "Third"}
    assert not SpooledMessage.objects.exclude(state=SpoolState.FILED).exists()


def test_the_spool_graph_covers_the_states_and_lets_nothing_leave_filed_or_failed() -> None:
    assert set(SPOOLED_MESSAGE.values) == set(SpoolState.values)
    assert SPOOLED_MESSAGE.edge_set() == {
        (SpoolState.QUEUED, SpoolState.QUEUED),
        (SpoolState.QUEUED, SpoolState.FILED),
        (SpoolState.QUEUED, SpoolState.FAILED),
    }


def test_raw_messages_saved_together_keep_one_row_and_file_for_the_same_bytes(bob: User) -> None:
    """A batch's raw messages are inserted at once: the same bytes twice (or stored before) are still one blob."""
    twice, earlier, new = os.urandom(16), os.urandom(16), os.urandom(16)  # no file of an earlier run
    before = attachment_services.store_upload(file=io.BytesIO(earlier))
    with attachment_services.storing_atomically():
        blobs = [
            attachment_services.written_upload(file=io.BytesIO(content), max_bytes=100)
            for content in (twice, twice, earlier, new)
        ]
        attachment_services.save_written(blobs)
    assert blobs[0].pk == blobs[1].pk and blobs[0].file.name == blobs[1].file.name
    assert blobs[2].pk == before.pk and blobs[2].file.name == before.file.name
    assert Blob.objects.count() == 3
    storage = Blob._meta.get_field("file").storage
    for blob in Blob.objects.all():
        assert storage.exists(blob.file.name)
    for blob in blobs:  # no stray copies beside the kept file
        folder = Path(storage.path(blob.file.name)).parent
        assert [name for name in os.listdir(folder) if name.startswith(blob.sha256)] == [blob.sha256]


# --- Group commit: the spool rows of sessions that end DATA together --------------------------------


def _row(subject: str, **fields: Any) -> SpooledMessage:
    head = _raw(subject)
    return SpooledMessage(client_ip="127.0.0.1", mail_from="alice@example.org", head=head, size=len(head), **fields)


def _committing(group: spool.GroupCommit, rows: list[SpooledMessage]) -> tuple[list[threading.Thread], list[object]]:
    """Each row handed to ``group`` by a thread of its own, as the sessions' worker threads do; their outcomes."""
    outcomes: list[object] = [None] * len(rows)

    def one(index: int) -> None:
        try:
            outcomes[index] = group.commit(rows[index])
        except Exception as exc:  # noqa: BLE001 - the outcome the session would answer from
            outcomes[index] = exc

    threads = [threading.Thread(target=one, args=(index,)) for index in range(len(rows))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while group.waiting() < len(rows) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert group.waiting() == len(rows)
    return threads, outcomes


def test_sessions_ending_data_together_are_committed_in_one_transaction_and_each_told_only_after_it(bob: User) -> None:
    group = spool.GroupCommit()
    threads, outcomes = _committing(group, [_row(f"Together {n}") for n in range(3)])
    # Handed over, not yet committed: no session has its answer, and nothing is stored.
    time.sleep(0.2)
    assert all(thread.is_alive() for thread in threads) and outcomes == [None, None, None]
    assert not SpooledMessage.objects.exists()
    group.start()
    try:
        for thread in threads:
            thread.join(timeout=30)
        rows = SpooledMessage.objects.order_by("pk")
        assert sorted(outcomes) == [row.pk for row in rows]  # type: ignore[type-var]
        assert {bytes(row.head).split(b"Subject: ")[1][:10] for row in rows} == {
            b"Together 0",
            b"Together 1",
            b"Together 2",
        }
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT count(DISTINCT xmin::text) FROM gateway_spooledmessage")
                assert cursor.fetchone() == (1,)  # one transaction wrote all three
    finally:
        group.stop()


def test_a_failed_group_commit_fails_every_session_in_it_and_stores_none_of_them(bob: User) -> None:
    group = spool.GroupCommit()
    # One row the database refuses (a negative count of attempts) in a group of four.
    rows = [_row("Good 1"), _row("Good 2"), _row("Refused", attempts=-1), _row("Good 3")]
    threads, outcomes = _committing(group, rows)
    group.start()
    try:
        for thread in threads:
            thread.join(timeout=30)
        assert all(isinstance(outcome, IntegrityError) for outcome in outcomes), outcomes
        assert not SpooledMessage.objects.exists()
        # The next group is committed as usual.
        assert SpooledMessage.objects.filter(pk=group.commit(_row("Later"))).exists()
    finally:
        group.stop()


def test_a_failed_spool_commit_answers_451_to_each_session_and_keeps_nothing(bob: User) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the refusing trigger is PostgreSQL's")
    controller = GatewayController(host="127.0.0.1", port=free_port(), filing=False)
    controller.start()
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION refuse_spool() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'the disk is full'; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER refuse_spool BEFORE INSERT ON gateway_spooledmessage "
            "FOR EACH ROW EXECUTE FUNCTION refuse_spool()"
        )
    answers: list[tuple[int, bytes]] = []

    def send(subject: str) -> None:
        with smtplib.SMTP("127.0.0.1", controller.port, local_hostname="mail.example.org", timeout=30) as client:
            client.ehlo()
            client.mail("alice@example.org")
            client.rcpt(BOB)
            answers.append(client.data(_raw(subject)))

    try:
        senders = [threading.Thread(target=send, args=(f"Refused {n}",)) for n in range(3)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(timeout=60)
        assert [code for code, _ in answers] == [451, 451, 451], answers
        assert not SpooledMessage.objects.exists()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER refuse_spool ON gateway_spooledmessage")
            cursor.execute("DROP FUNCTION refuse_spool()")
    try:
        send("Taken")
        assert answers[-1][0] == 250
        assert SpooledMessage.objects.count() == 1
    finally:
        controller.stop()
