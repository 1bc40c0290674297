"""Inbound SMTP: messages a second through the gateway against Postfix delivering to a Maildir.

In one run, on the same machine:

1. ``manage.py smtpd`` of one instance (PostgreSQL), with a DNS server on loopback
   answering its SPF, DKIM and DMARC questions (records for the sender's domain);
   ``smtp-source`` (from Debian's postfix package) sends N messages of SIZE bytes over
   SESSIONS parallel sessions, one message per connection; timed from the first
   connection until the last message is filed in the mailbox (the gateway answers 250
   once a message is committed to its spool and files the spool in batches: the script
   watches the mailbox's count in the database until it holds them all).
2. bench/postfix_baseline.sh: the same load from smtp-source to a private Postfix,
   timed until the last message is in the recipient's Maildir/new.
3. Memory: the gateway's peak RSS (VmHWM) before and after it receives one 25 MB message.

Steps 1 and 2 alternate for ``--rounds`` rounds (default 3), so that on a shared machine each
pair is measured under the same load; the ratio reported is the median of the rounds'.

``--dialogue-only`` measures the ceiling instead: the gateway's own SMTP server (aiosmtpd with the
gateway's DATA spooling and limits), in as many processes, with a handler that answers 250 to every
RCPT TO and DATA and keeps nothing: what the SMTP dialogue alone costs in Python, against Postfix.

Run as root (Postfix): ``python -m bench.smtp_inbound [--messages 2000] [--sessions 10] [--processes 2]``.
Prints JSON lines and a table. ``--profile FILE`` runs the gateway under cProfile (every thread:
the event loop's and the workers'), writes the merged pstats to FILE and prints where the time
goes; the figures of a profiled run are slower and are not the benchmark's.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import signal
import smtplib
import statistics
import subprocess
import threading
import time
from email.message import EmailMessage
from pathlib import Path

import psycopg

from bench.common import PRODUCTION_ENV, ROOT, create_mailboxes_code, emit, log, machine, server_backend, table
from tests.smtp_support import dns_server, free_port
from tools.cluster import PYTHON, Instance

HOSTED = "alpha.test"
BOB = f"bob@{HOSTED}"
SENDER = "sender@example.org"


def _vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (and their reaped children)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += sum(int(value) for value in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def _with_children(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid, *(int(child) for child in children)]


def _postgres_cpu() -> dict[int, float]:
    """CPU seconds of every PostgreSQL process, by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    found[int(entry.name)] = _cpu_seconds([int(entry.name)])
            except OSError:
                continue
    return found


def _backends(inst: Instance) -> list[int]:
    """The PostgreSQL backends serving the instance's database (the gateway keeps its connections)."""
    code = (
        "from django.db import connection\n"
        "with connection.cursor() as c:\n"
        "    c.execute('SELECT pid FROM pg_stat_activity WHERE datname = current_database()')\n"
        "    print(' '.join(str(row[0]) for row in c.fetchall()))"
    )
    return [int(pid) for pid in inst.shell(code).split()]


def _stored(inst: Instance) -> int:
    code = "from mailbox.models import InboxEntry; print(InboxEntry.objects.count())"
    return int(inst.shell(code).split()[-1])


def _wait_stored(inst: Instance, count: int, timeout: float = 600) -> None:
    """Until the mailbox holds ``count`` entries (every spooled message filed), asked 50 times a second."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(inst.database_url, autocommit=True) as db:
        while time.monotonic() < deadline:
            row = db.execute("SELECT count(*) FROM mailbox_inboxentry").fetchone()
            if row is not None and row[0] >= count:
                return
            time.sleep(0.02)


def _wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
                client.noop()
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"the gateway did not answer on {port}")


def gateway_run(
    inst: Instance, port: int, *, messages: int, sessions: int, size: int, pids: list[int]
) -> dict[str, object]:
    before = _stored(inst)
    postgres_before = _postgres_cpu()
    cpu_gateway = _cpu_seconds(pids)
    start = time.monotonic()
    result = subprocess.run(
        ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size)]
        + ["-f", SENDER, "-t", BOB, "-M", "mail.example.org", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    answered = time.monotonic() - start
    # Answered 250 once spooled: the time that counts is until the last one is filed in the mailbox.
    _wait_stored(inst, before + messages if result.returncode == 0 else 0)
    seconds = time.monotonic() - start
    cpu_gateway = _cpu_seconds(pids) - cpu_gateway
    # Only the backends of this database: other databases on the server are not this run's work.
    postgres_after = _postgres_cpu()
    cpu_postgres = sum(postgres_after.get(pid, 0.0) - postgres_before.get(pid, 0.0) for pid in _backends(inst))
    stored = _stored(inst) - before
    if result.returncode != 0 or stored != messages:
        log("smtp-source:", result.returncode, result.stdout[-500:], result.stderr[-1500:])
    return {
        "tool": "pushmail-smtpd",
        "messages": messages,
        "stored": stored,
        "seconds": round(seconds, 3),
        "messages_per_second": round(stored / seconds, 1),
        "answered_250_per_second": round(messages / answered, 1),
        "size_bytes": size,
        "sessions": sessions,
        "gateway_processes": len(pids),
        "gateway_cpu_ms_per_message": round(cpu_gateway * 1000 / max(stored, 1), 2),
        "postgres_cpu_ms_per_message": round(cpu_postgres * 1000 / max(stored, 1), 2),
    }


def postfix_run(*, messages: int, sessions: int, size: int) -> dict[str, object]:
    env = {**os.environ, "N": str(messages), "SESSIONS": str(sessions), "SIZE": str(size)}
    env["POSTFIX_PORT"] = str(free_port())
    result = subprocess.run(
        ["bash", str(ROOT / "bench" / "postfix_baseline.sh")], capture_output=True, text=True, timeout=1800, env=env
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        return {"tool": "postfix", "error": (result.stderr or result.stdout)[-2000:], "rc": result.returncode}
    return dict(json.loads(lines[-1]))


def memory_run(pids: list[int], port: int, *, megabytes: int) -> dict[str, object]:
    """Peak RSS of the gateway process that takes one large message (of several: the one whose peak grew most)."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SENDER, BOB, "A large file"
    msg.set_content("See the attachment.")
    msg.add_attachment(os.urandom(megabytes * 1024 * 1024 * 3 // 4), maintype="application", subtype="octet-stream")
    raw = msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    before = {pid: (_vm(pid, "VmRSS"), _vm(pid, "VmHWM")) for pid in pids}
    start = time.monotonic()
    with smtplib.SMTP("127.0.0.1", port, local_hostname="mail.example.org", timeout=300) as client:
        client.sendmail(SENDER, [BOB], raw)
    seconds = time.monotonic() - start
    pid = max(pids, key=lambda pid: _vm(pid, "VmHWM") - before[pid][1])
    rss_before, peak_before = before[pid]
    peak_after = _vm(pid, "VmHWM")
    return {
        "tool": "pushmail-smtpd-memory",
        "message_bytes": len(raw),
        "seconds": round(seconds, 3),
        "rss_before_bytes": rss_before,
        "peak_rss_before_bytes": peak_before,
        "peak_rss_after_bytes": peak_after,
        "peak_growth_per_message_byte": round((peak_after - peak_before) / len(raw), 2),
    }


def serve_profiled(listen: str, out: str) -> None:
    """``manage.py smtpd`` in this process, each thread under its own profiler, merged on SIGTERM."""
    import django

    django.setup()
    from gateway import database_threads, filing, server

    profiles: list[cProfile.Profile] = []
    own = threading.local()

    def profiler() -> cProfile.Profile:
        if not hasattr(own, "profile"):
            # CPU time of the thread (PUSHMAIL_PROFILE_CPU=1), or wall time, waits on PostgreSQL included.
            cpu = os.environ.get("PUSHMAIL_PROFILE_CPU") == "1"
            own.profile = cProfile.Profile(time.thread_time) if cpu else cProfile.Profile()
            profiles.append(own.profile)
        found: cProfile.Profile = own.profile
        return found

    def profiled(function, /, **kwargs):  # type: ignore[no-untyped-def]
        profile = profiler()
        profile.enable()
        try:
            return unprofiled(function, **kwargs)
        finally:
            profile.disable()

    unprofiled = database_threads._with_database
    database_threads._with_database = profiled  # type: ignore[assignment]
    unprofiled_filing = filing.file_due

    def profiled_filing(**kwargs):  # type: ignore[no-untyped-def]
        profile = profiler()
        profile.enable()
        try:
            return unprofiled_filing(**kwargs)
        finally:
            profile.disable()

    filing.file_due = profiled_filing  # type: ignore[assignment]

    class Profiled(server.GatewayController):
        def _run(self, ready_event: threading.Event) -> None:
            profile = profiler()
            profile.enable()
            try:
                super()._run(ready_event)
            finally:
                profile.disable()

    host, port = server.listen_address(listen)
    controller = Profiled(host=host, port=port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    controller.start()
    print(f"SMTP gateway listening on {listen} (profiled)", flush=True)
    stop.wait()
    controller.stop()
    stats = pstats.Stats(*profiles)  # type: ignore[arg-type]
    stats.dump_stats(out)
    text = io.StringIO()
    pstats.Stats(out, stream=text).sort_stats("cumulative").print_stats(60)
    pstats.Stats(out, stream=text).sort_stats("tottime").print_stats(40)
    Path(out + ".txt").write_text(text.getvalue())


class _KeepNothing:
    """A handler that takes every recipient and message and keeps nothing (``--dialogue-only``)."""

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]  # noqa: N802
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]  # noqa: N802
        return "250 2.0.0 OK: kept nothing"

    def close(self) -> None:
        pass


def serve_dialogue_only(listen: str) -> None:
    """The gateway's SMTP server with :class:`_KeepNothing` for a handler, until SIGTERM."""
    import django

    django.setup()
    from gateway import server

    host, port = server.listen_address(listen)
    controller = server.GatewayController(host=host, port=port, reuse_port=True, filing=False)
    controller.handler.close()
    controller.handler = _KeepNothing()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    controller.start()
    print(f"SMTP dialogue only, listening on {listen}", flush=True)
    stop.wait()
    controller.stop()


def dialogue_run(port: int, *, messages: int, sessions: int, size: int, pids: list[int]) -> dict[str, object]:
    """smtp-source against the dialogue-only servers: timed until it exits (every message answered 250)."""
    cpu = _cpu_seconds(pids)
    start = time.monotonic()
    result = subprocess.run(
        ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size)]
        + ["-f", SENDER, "-t", BOB, "-M", "mail.example.org", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    seconds = time.monotonic() - start
    cpu = _cpu_seconds(pids) - cpu
    answered = messages if result.returncode == 0 else 0
    if result.returncode != 0:
        log("smtp-source:", result.returncode, result.stdout[-500:], result.stderr[-1500:])
    return {
        "tool": "smtp-dialogue-only",
        "messages": messages,
        "answered": answered,
        "seconds": round(seconds, 3),
        "messages_per_second": round(answered / seconds, 1),
        "size_bytes": size,
        "sessions": sessions,
        "gateway_processes": len(pids),
        "gateway_cpu_ms_per_message": round(cpu * 1000 / max(answered, 1), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument("--large-mb", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=3, help="gateway and Postfix runs, alternated (default 3)")
    parser.add_argument("--processes", type=int, default=1, help="gateway processes (smtpd --processes)")
    parser.add_argument("--profile", default="", help="profile the gateway; write pstats to this file")
    parser.add_argument("--no-postfix", action="store_true", help="skip the Postfix baseline")
    parser.add_argument(
        "--dialogue-only", action="store_true", help="the ceiling: the SMTP server with a handler that keeps nothing"
    )
    parser.add_argument("--serve-profiled", nargs=2, metavar=("LISTEN", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--serve-dialogue-only", metavar="LISTEN", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_profiled:
        serve_profiled(*args.serve_profiled)
        return
    if args.serve_dialogue_only:
        serve_dialogue_only(args.serve_dialogue_only)
        return
    if args.dialogue_only:
        dialogue_only(args)
        return

    data = ROOT / "var" / "bench-smtp"
    inst = Instance(name="smtpbench", domains=[HOSTED], data_dir=data, backend=server_backend())
    inst.extra_env = dict(PRODUCTION_ENV)
    log("setting up the instance")
    inst.setup()
    inst.shell(create_mailboxes_code([BOB]))
    port = free_port()
    records: list[dict[str, object]] = []
    with dns_server() as (zone, resolver):
        zone.ttl = 300  # as real zones have: the gateway caches the answers this long
        zone.add("example.org", "TXT", "v=spf1 ip4:127.0.0.1 -all")
        zone.add("_dmarc.example.org", "TXT", "v=DMARC1; p=none")
        env = {
            **inst.env(),
            "PUSHMAIL_DNS_RESOLVER": resolver,
            "PUSHMAIL_SMTP_HOSTNAME": "mx.alpha.test",
            "PUSHMAIL_SMTP_MESSAGES_PER_MINUTE": str(args.messages * 10),
            "PUSHMAIL_SMTP_MAX_CONNECTIONS_PER_CLIENT": str(args.sessions * 2),
        }
        with open(data / "smtpd.log", "ab") as out:
            command = [PYTHON, "manage.py", "smtpd", "--listen", f"127.0.0.1:{port}"]
            if args.processes > 1:
                command += ["--processes", str(args.processes)]
            if args.profile:
                command = [PYTHON, "-m", "bench.smtp_inbound", "--serve-profiled", f"127.0.0.1:{port}"]
                command.append(str(Path(args.profile).resolve()))
            gateway = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_port(port)
            log("warm-up: 50 messages")
            gateway_run(
                inst, port, messages=50, sessions=args.sessions, size=args.size, pids=_with_children(gateway.pid)
            )
            for round_ in range(1, args.rounds + 1):
                # Gateway, then Postfix, round after round: on a shared machine, each pair sees the same load.
                log(f"round {round_}: gateway, {args.messages} messages of {args.size} bytes, {args.sessions} sessions")
                record = gateway_run(
                    inst,
                    port,
                    messages=args.messages,
                    sessions=args.sessions,
                    size=args.size,
                    pids=_with_children(gateway.pid),
                )
                records.append({**record, "round": round_, "loadavg": os.getloadavg()[0]})
                if not args.no_postfix:
                    log(f"round {round_}: postfix, the same load to a Maildir")
                    record = postfix_run(messages=args.messages, sessions=args.sessions, size=args.size)
                    records.append({**record, "round": round_, "loadavg": os.getloadavg()[0]})
            if args.large_mb:
                log(f"memory: one {args.large_mb} MB message")
                records.append(memory_run(_with_children(gateway.pid), port, megabytes=args.large_mb))
        finally:
            gateway.terminate()
            gateway.wait(timeout=60)
    if args.profile:
        log(f"profile: {args.profile} and {args.profile}.txt")
    emit({"machine": machine()})
    for record in records:
        emit(record)
    rows, ratios = [], []
    for round_ in range(1, args.rounds + 1):
        rates = {str(r["tool"]): r.get("messages_per_second") for r in records if r.get("round") == round_}
        gateway_rate, postfix_rate = rates.get("pushmail-smtpd"), rates.get("postfix")
        ratio = ""
        if isinstance(gateway_rate, float) and isinstance(postfix_rate, float) and postfix_rate:
            ratios.append(gateway_rate / postfix_rate)
            ratio = f"{ratios[-1]:.2f}x"
        rows.append([round_, gateway_rate, postfix_rate, ratio])
    print(table(["round", "gateway messages/s", "postfix messages/s", "gateway / postfix"], rows))
    if ratios:
        print(f"gateway / postfix, median of {len(ratios)} rounds: {statistics.median(ratios):.2f}x")


def dialogue_only(args: argparse.Namespace) -> None:
    """``--dialogue-only``: the SMTP dialogue's ceiling against Postfix, alternated for ``--rounds``."""
    port = free_port()
    # The benchmark instance's settings, as in production (its database is not used: nothing is kept).
    inst = Instance(name="smtpbench", domains=[HOSTED], data_dir=ROOT / "var" / "bench-smtp", backend=server_backend())
    inst.extra_env = dict(PRODUCTION_ENV)
    env = inst.env()
    env["PUSHMAIL_SMTP_HOSTNAME"] = "mx.alpha.test"
    env["PUSHMAIL_SMTP_MESSAGES_PER_MINUTE"] = str(args.messages * 10)
    env["PUSHMAIL_SMTP_MAX_CONNECTIONS_PER_CLIENT"] = str(args.sessions * 2)
    command = [PYTHON, "-m", "bench.smtp_inbound", "--serve-dialogue-only", f"127.0.0.1:{port}"]
    servers = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL) for _ in range(args.processes)]
    records: list[dict[str, object]] = []
    try:
        _wait_port(port)
        time.sleep(2)  # every process listening
        pids = [server.pid for server in servers]
        dialogue_run(port, messages=50, sessions=args.sessions, size=args.size, pids=pids)
        for round_ in range(1, args.rounds + 1):
            log(f"round {round_}: dialogue only, then postfix")
            record = dialogue_run(port, messages=args.messages, sessions=args.sessions, size=args.size, pids=pids)
            records.append({**record, "round": round_, "loadavg": os.getloadavg()[0]})
            if not args.no_postfix:
                record = postfix_run(messages=args.messages, sessions=args.sessions, size=args.size)
                records.append({**record, "round": round_, "loadavg": os.getloadavg()[0]})
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=60)
    emit({"machine": machine()})
    for record in records:
        emit(record)
    rows = []
    for round_ in range(1, args.rounds + 1):
        rates = {str(r["tool"]): r.get("messages_per_second") for r in records if r.get("round") == round_}
        rows.append([round_, rates.get("smtp-dialogue-only"), rates.get("postfix")])
    print(table(["round", "dialogue only messages/s", "postfix messages/s"], rows))


if __name__ == "__main__":
    main()
