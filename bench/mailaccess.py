"""Mail programs reading a mailbox: Pushmail's ``manage.py mailaccess`` against Dovecot.

One mailbox, reader@beta.test, holds the same 10,000 received messages in both
servers, every body already fetched (the pull on read is not measured here: the
open-latency benchmark does that). The script

1. creates its own PostgreSQL database (``pushmail_bench_mailaccess``, dropped
   at the end unless ``--keep``), migrates it and fills the mailbox: 10,000
   entries from carol@peer.test with their bodies stored, as after a fetch;
2. writes each message's download, exactly the bytes Pushmail's POP3 sends,
   into a Maildir, and starts a private Dovecot (Debian's dovecot-imapd and
   dovecot-pop3d) on loopback ports with its own configuration, state and log
   in a temporary folder, serving that Maildir;
3. starts ``python manage.py mailaccess`` on the database, on loopback ports;
4. times, for each server, alternating, after one untimed warm-up run each:
   - POP3 (poplib): a download session of the first 1,000 messages, as a mail
     program does it: sign in, ``STAT``, ``UIDL``, ``RETR`` 1 to 1,000, ``QUIT``;
   - IMAP (imaplib): ``UID FETCH 1:* (FLAGS ENVELOPE)`` on the 10,000 messages,
     after sign-in and ``SELECT INBOX`` (not timed). When Pushmail's IMAP port
     does not answer with an IMAP greeting, its half is skipped with a line
     saying so, and Dovecot is measured anyway.

Target: Pushmail within 3x Dovecot's time on each. Run as root (Dovecot drops
to the ``nobody`` user to read the Maildir).

    python -m bench.mailaccess                       # 10,000 messages, 1,000 downloaded, 5 rounds
    python -m bench.mailaccess --rounds 5 --messages 10000 --downloads 1000 --size 2048 --keep
"""

from __future__ import annotations

import argparse
import imaplib
import os
import poplib
import pwd
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import ROOT, emit, log, machine, port_is_free, table, wait_for_quiet

DB_NAME = "pushmail_bench_mailaccess"
READER = "reader@beta.test"
DOVECOT_PASSWORD = "bench-dovecot-pw"  # noqa: S105 - the private Dovecot's only account
TARGET = 3.0
IMAP_FETCH = "1:* (FLAGS ENVELOPE)"


def _server() -> str:
    return os.environ.get("PUSHMAIL_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432").rstrip("/")


def _recreate_database() -> str:
    import psycopg

    with psycopg.connect(_server() + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}"')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    return f"{_server()}/{DB_NAME}"


def _drop_database() -> None:
    import psycopg
    from django.db import connections

    connections.close_all()
    with psycopg.connect(_server() + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}"')


def _setup_django(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ["DEBUG"] = "0"  # production-like: no query log kept in memory
    os.environ.setdefault("SECRET_KEY", "bench-only-" + uuid.uuid4().hex)
    os.environ.setdefault("PUSHMAIL_KEY_ENCRYPTION_KEY", "bench-only-key-encryption-" + uuid.uuid4().hex)
    os.environ.setdefault("PUSHMAIL_BASE_URL", "https://beta.test")
    os.environ.setdefault("CELERY_BROKER_URL", "memory://")
    # As in production: the shared cache (failed sign-ins are counted there) in Redis.
    os.environ.setdefault("CACHE_URL", os.environ.get("PUSHMAIL_BENCH_REDIS", "redis://127.0.0.1:6379") + "/13")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["DJANGO_SETTINGS_MODULE"] = "pushmail_site.settings"
    import django

    django.setup()


def _text(n: int, size: int) -> str:
    line = f"Message {n}: the quick brown fox jumps over the lazy dog, and then writes back about it.\n"
    return (line * (size // len(line) + 1))[:size]


def populate(*, messages: int, text_bytes: int, seed: int) -> tuple[int, str]:
    """Fill the reader's Inbox with fetched messages; return (reader id, an app password)."""
    from django.core.management import call_command
    from django.test.utils import override_settings

    from accounts.services import create_domain, create_mailbox, issue_api_token
    from federation import payloads
    from mailbox.models import EntryState, FetchState, InboxEntry, RemoteMessage
    from mailbox.threads import thread_key

    call_command("migrate", verbosity=0)
    call_command("createcachetable", verbosity=0)
    create_domain(name="beta.test")
    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        reader = create_mailbox(address=READER, password="bench-pw-1")  # noqa: S106 - benchmark fixture
    token = issue_api_token(user=reader, name="bench")

    rng = random.Random(seed)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=90)
    step = timedelta(days=90) / max(messages, 1)
    senders = [f"{name}@peer.test" for name in ("carol", "dave", "erin", "frank", "grace")]
    remotes: list[RemoteMessage] = []
    entries: list[InboxEntry] = []
    for n in range(messages):
        date = start + step * n
        global_id = uuid.uuid4()
        message_id = f"<{global_id}@peer.test>"
        sender = rng.choice(senders)
        subject = f"Report {n}: figures for week {n % 52 + 1}"
        content = payloads.canonical_body(
            global_id=global_id,
            message_id=message_id,
            sender=sender,
            to=[READER],
            cc=[],
            subject=subject,
            date=date,
            text=_text(n, text_bytes),
            html=None,
            in_reply_to="",
            references=[],
        )
        remote = RemoteMessage(
            origin_domain="peer.test",
            global_id=global_id,
            message_id=message_id,
            sender=sender,
            subject=subject,
            date=date,
            size=len(content),
            digest=payloads.digest(content),
            in_reply_to="",
            references=[],
            expires_at=date + timedelta(days=365),
            local_domain="beta.test",
            state=FetchState.FETCHED,
            content=content,
            fetched_at=date + timedelta(minutes=1),
        )
        remotes.append(remote)
        entries.append(
            InboxEntry(
                owner=reader,
                remote=remote,
                sender=sender,
                subject=subject,
                size=len(content),
                state=EntryState.FETCHED,
                thread_key=thread_key(message_id=message_id, in_reply_to="", references=[]),
                search_document=f"{subject}\n{sender}",
            )
        )
        if len(remotes) >= 2000:
            RemoteMessage.objects.bulk_create(remotes)
            InboxEntry.objects.bulk_create(entries)
            remotes.clear()
            entries.clear()
    RemoteMessage.objects.bulk_create(remotes)
    InboxEntry.objects.bulk_create(entries)
    from django.db import connection

    with connection.cursor() as cursor:
        # received_at is auto_now_add: spread it over the 90 days as real mail would be.
        cursor.execute(
            "UPDATE mailbox_inboxentry e SET received_at = r.date FROM mailbox_remotemessage r WHERE e.remote_id = r.id"
        )
        cursor.execute("ANALYZE")
    return reader.pk, token


def write_maildir(reader_id: int, maildir: Path) -> int:
    """The reader's Inbox as a Maildir: each message's POP3 download bytes, oldest first; returns the count."""
    from mailaccess.maildrop import on_the_wire
    from mailbox.eml_entries import entry_eml
    from mailbox.models import Folder, InboxEntry

    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    entries = (
        InboxEntry.objects.filter(owner_id=reader_id, folder=Folder.INBOX)
        .select_related("remote", "local", "owner")
        .order_by("received_at", "pk")
    )
    count = 0
    for entry in entries.iterator(chunk_size=500):
        eml = entry_eml(entry)
        assert eml is not None, f"entry {entry.pk} has no body"
        data = on_the_wire(eml)
        stamp = int(entry.received_at.timestamp())
        # Maildir names sort as the Inbox does; S= saves Dovecot a stat, as a delivery agent writes it.
        path = maildir / "cur" / f"{stamp}.M{count:06d}P1.bench,S={len(data)}:2,"
        path.write_bytes(data)
        os.utime(path, (stamp, stamp))
        count += 1
    return count


# --- servers ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_greeting(port: int, greeting: bytes, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                if sock.makefile("rb").readline().startswith(greeting):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer on port {port} within {timeout:.0f}s")
        time.sleep(0.2)


def answers_imap(port: int) -> bool:
    """Whether something on the port greets as an IMAP server does (``* OK``)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            sock.settimeout(3)
            return sock.makefile("rb").readline().startswith(b"* OK")
    except OSError:
        return False


def start_dovecot(work: Path, maildir: Path, pop3_port: int, imap_port: int) -> subprocess.Popen[bytes]:
    """A private Dovecot on loopback with one account, serving ``maildir``; nothing of the system's is used."""
    if shutil.which("dovecot") is None:
        raise RuntimeError("Dovecot is not installed (apt-get install dovecot-imapd dovecot-pop3d)")
    nobody = pwd.getpwnam("nobody")
    for path in (maildir, *maildir.rglob("*")):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    (work / "passwd").write_text(f"{READER}:{{PLAIN}}{DOVECOT_PASSWORD}\n")
    (work / "run").mkdir()
    (work / "state").mkdir()
    conf = work / "dovecot.conf"
    conf.write_text(
        f"""
base_dir = {work}/run
state_dir = {work}/state
instance_name = pushmail-bench-dovecot
log_path = {work}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{maildir}
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = {work}/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={maildir}
}}
service imap-login {{
  inet_listener imap {{
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
pop3_uidl_format = %08Xu%08Xv
"""
    )
    proc = subprocess.Popen(
        ["dovecot", "-F", "-c", str(conf)],
        stdout=open(work / "dovecot.out", "ab"),  # noqa: SIM115 - handed to the child
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_greeting(pop3_port, b"+OK", proc, "Dovecot")
    wait_greeting(imap_port, b"* OK", proc, "Dovecot")
    return proc


def start_pushmail(work: Path, pop3_port: int, imap_port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PUSHMAIL_POP3_LISTEN": f"127.0.0.1:{pop3_port}",
        "PUSHMAIL_POP3_TLS_LISTEN": "",
        "PUSHMAIL_IMAP_LISTEN": f"127.0.0.1:{imap_port}",
        "PUSHMAIL_IMAP_TLS_LISTEN": "",
        "PUSHMAIL_MAILACCESS_TLS_CERT": "",
        "PUSHMAIL_MAILACCESS_TLS_KEY": "",
    }
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "mailaccess"],
        cwd=ROOT,
        env=env,
        stdout=open(work / "mailaccess.log", "ab"),  # noqa: SIM115 - handed to the child
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_greeting(pop3_port, b"+OK", proc, "manage.py mailaccess")
    return proc


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


# --- clients ---------------------------------------------------------------------------


def pop3_session(port: int, password: str, downloads: int) -> tuple[float, int]:
    """A mail program's download: sign in, STAT, UIDL, RETR 1..downloads, QUIT; (seconds, octets)."""
    started = time.perf_counter()
    pop = poplib.POP3("127.0.0.1", port, timeout=120)
    pop.user(READER)
    pop.pass_(password)
    count, _size = pop.stat()
    if count < downloads:
        raise RuntimeError(f"the POP3 server on port {port} lists {count} messages, fewer than {downloads}")
    pop.uidl()
    octets = 0
    for n in range(1, downloads + 1):
        octets += pop.retr(n)[2]
    pop.quit()
    return time.perf_counter() - started, octets


def imap_fetch(port: int, password: str, messages: int) -> float:
    """``UID FETCH 1:* (FLAGS ENVELOPE)`` after sign-in and SELECT INBOX; seconds of the FETCH alone."""
    imap = imaplib.IMAP4("127.0.0.1", port, timeout=300)
    try:
        imap.login(READER, password)
        status, data = imap.select("INBOX", readonly=True)
        if status != "OK" or int(data[0] or 0) != messages:
            raise RuntimeError(f"the IMAP server on port {port} selected INBOX with {data!r}, not {messages}")
        started = time.perf_counter()
        status, fetched = imap.uid("FETCH", *IMAP_FETCH.split(" ", 1))
        elapsed = time.perf_counter() - started
        answered = sum(1 for item in fetched if isinstance(item, bytes | tuple))
        if status != "OK" or answered < messages:
            raise RuntimeError(f"UID FETCH on port {port}: {status}, {answered} answers for {messages} messages")
    except BaseException:
        imap.shutdown()
        raise
    imap.logout()
    return elapsed


# --- main ----------------------------------------------------------------------------------


def _median_ms(values: list[float]) -> float:
    return round(1000 * statistics.median(values), 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000, help="messages in the mailbox")
    parser.add_argument("--downloads", type=int, default=1_000, help="messages a POP3 session downloads")
    parser.add_argument("--size", type=int, default=2048, help="text bytes per message")
    parser.add_argument("--rounds", type=int, default=5, help="timed runs per server and protocol")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the database and the Maildir afterwards")
    parser.add_argument(
        "--quiet", type=float, default=25.0, help="wait (up to 3 min) until the machine is below this %% busy"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        log("run as root: the private Dovecot switches to the nobody user to read its Maildir")
        return 2

    info = machine()
    log(f"machine: {info}")
    work = Path(tempfile.mkdtemp(prefix="pushmail-bench-mailaccess-"))
    os.chmod(work, 0o755)  # Dovecot's processes (nobody, dovenull) reach the Maildir below
    database_url = _recreate_database()
    _setup_django(database_url)
    dovecot = pushmail = None
    try:
        log(f"filling {DB_NAME} with {args.messages} fetched messages of {args.size} text bytes")
        started = time.monotonic()
        reader_id, token = populate(messages=args.messages, text_bytes=args.size, seed=args.seed)
        maildir = work / "Maildir"
        written = write_maildir(reader_id, maildir)
        log(f"filled, and wrote {written} messages to the Maildir, in {time.monotonic() - started:.0f}s")

        ports = {name: free_port() for name in ("d_pop3", "d_imap", "p_pop3", "p_imap")}
        if not all(port_is_free(p) for p in ports.values()):
            raise RuntimeError(f"a port is taken: {ports}")
        dovecot = start_dovecot(work, maildir, ports["d_pop3"], ports["d_imap"])
        pushmail = start_pushmail(work, ports["p_pop3"], ports["p_imap"])
        pushmail_imap = answers_imap(ports["p_imap"])
        servers = {
            "dovecot": (ports["d_pop3"], ports["d_imap"], DOVECOT_PASSWORD, True),
            "pushmail": (ports["p_pop3"], ports["p_imap"], token, pushmail_imap),
        }
        if not pushmail_imap:
            log(
                f"SKIPPED: Pushmail IMAP: nothing answers IMAP on 127.0.0.1:{ports['p_imap']} "
                "(PUSHMAIL_IMAP_LISTEN); Dovecot's IMAP is measured alone"
            )

        log("warm-up: one untimed run of each (Dovecot builds its index; Pushmail marks the downloads read)")
        octets: dict[str, int] = {}
        first: dict[str, float] = {}  # the first download: Pushmail marks read, Dovecot builds its index
        for name, (pop3_port, imap_port, password, imap) in servers.items():
            first[name], octets[name] = pop3_session(pop3_port, password, args.downloads)
            if imap:
                imap_fetch(imap_port, password, args.messages)
        log("first (warm-up) POP3 downloads: " + ", ".join(f"{n} {1000 * t:.0f} ms" for n, t in first.items()))
        if octets["dovecot"] != octets["pushmail"]:
            log(f"note: the two servers sent different octets: {octets}")

        busy_before = wait_for_quiet(args.quiet, 180)
        pop3: dict[str, list[float]] = {name: [] for name in servers}
        imap_times: dict[str, list[float]] = {name: [] for name in servers if servers[name][3]}
        for round_ in range(1, args.rounds + 1):
            for name, (pop3_port, imap_port, password, imap) in servers.items():
                seconds, _ = pop3_session(pop3_port, password, args.downloads)
                pop3[name].append(seconds)
                if imap:
                    imap_times[name].append(imap_fetch(imap_port, password, args.messages))
            log(
                f"round {round_}: POP3 "
                + ", ".join(f"{n} {1000 * t[-1]:.0f} ms" for n, t in pop3.items())
                + "; IMAP "
                + ", ".join(f"{n} {1000 * t[-1]:.0f} ms" for n, t in imap_times.items())
            )

        rows = []
        records = []
        for what, times, count in (
            (f"POP3 download of {args.downloads} messages", pop3, args.downloads),
            (f"IMAP UID FETCH {IMAP_FETCH} on {args.messages}", imap_times, args.messages),
        ):
            base = _median_ms(times["dovecot"])
            if "pushmail" in times:
                ours = _median_ms(times["pushmail"])
                ratio = round(ours / base, 2)
                verdict = "met" if ratio <= TARGET else "missed"
                rows.append([what, f"{ours} ms", f"{base} ms", f"{ratio} x", verdict])
            else:
                ours = ratio = None
                verdict = "skipped: Pushmail does not serve IMAP here yet"
                rows.append([what, "(skipped)", f"{base} ms", "-", verdict])
            records.append(
                {
                    "benchmark": "mailaccess",
                    "measure": what,
                    "messages": count,
                    "pushmail_ms": [round(1000 * t, 1) for t in times.get("pushmail", [])],
                    "dovecot_ms": [round(1000 * t, 1) for t in times["dovecot"]],
                    "pushmail_median_ms": ours,
                    "dovecot_median_ms": base,
                    "ratio": ratio,
                    "target": f"<= {TARGET} x Dovecot",
                    "verdict": verdict,
                    "octets_per_pop3_session": octets.get("pushmail"),
                    "first_pop3_session_ms": {n: round(1000 * t, 1) for n, t in first.items()},
                    "machine_busy_pct_before": round(busy_before, 1),
                    "machine": info,
                }
            )
        for record in records:
            emit(record)
        print(table(["Measure", "Pushmail (median)", "Dovecot (median)", "Ratio", "Target <= 3 x"], rows))
        return 0
    finally:
        stop(pushmail)
        stop(dovecot)
        if args.keep:
            log(f"kept the database {DB_NAME} and {work} (Maildir, Dovecot's configuration and log)")
        else:
            _drop_database()
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
