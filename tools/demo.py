"""Two instances side by side on the embedded default: ``make demo``.

alpha.localhost on port 8001 and beta.localhost on port 8002, each with its own
SQLite database, its own filesystem broker folder, and a real Celery worker
with beat. Each also runs its SMTP gateway (``manage.py smtpd``: ordinary mail
in) and its submission server (``manage.py submission``: mail programs send) on
the ports printed, and its mail access (``manage.py mailaccess``: mail programs
read over POP3 and IMAP). Distinct host names keep their login cookies apart.

Every setup step is printed as it starts and ends. While it runs, one instance
can be stopped and started alone, so "the sender goes offline" can be tried:
type ``stop alpha`` / ``start alpha`` in the demo's terminal, or run
``python -m tools.demo stop alpha`` / ``start alpha`` from another one. Ctrl-C
stops both. The API tokens are kept in each instance's data folder and printed
again on the next run.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tools.cluster import PYTHON, ROOT, Backend, Instance, make_cluster, stop_all

PASSWORD = os.environ.get("DEMO_PASSWORD", "pushmail-demo")
PORTS = {"alpha": 8001, "beta": 8002}
SMTP_PORTS = {"alpha": 2525, "beta": 2526}  # manage.py smtpd: port 25 in production
SUBMISSION_PORTS = {"alpha": 5870, "beta": 5871}  # manage.py submission: 587 and 465 in production
POP3_PORTS = {"alpha": 1110, "beta": 1111}  # manage.py mailaccess: 110 and 995 in production
IMAP_PORTS = {"alpha": 1143, "beta": 1144}  # manage.py mailaccess: 143 and 993 in production
MAILBOXES = {
    "alpha": ["ann@alpha.localhost", "al@alpha.localhost"],
    "beta": ["bob@beta.localhost", "bea@beta.localhost"],
}
TOKEN_FILE = "demo-api-token"  # noqa: S105 - the name of the file that keeps it
ACTIONS = ("stop", "start")


def demo_dir() -> Path:
    return Path(os.environ.get("DEMO_DIR", ROOT / "var" / "demo"))


@contextmanager
def step(label: str) -> Iterator[None]:
    """Print a setup step as it starts and as it ends, with how long it took."""
    print(f"  {label} …", flush=True)
    started = time.monotonic()
    yield
    print(f"  {label}: done ({time.monotonic() - started:.1f} s)", flush=True)


def stored_token(data_dir: Path, issue: Callable[[], str]) -> str:
    """The demo's API token kept in ``data_dir``; a new one is issued (and kept) only when none is."""
    path = data_dir / TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    token = issue().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return token


MAIL_SERVERS = ("smtpd", "submission", "mailaccess")


def start_mail_servers(inst: Instance, name: str) -> list[subprocess.Popen[bytes]]:
    """The instance's SMTP gateway, submission server and mail access (POP3, IMAP), each its own
    process logging to its data folder."""
    listen = {
        "smtpd": ["--listen", f"127.0.0.1:{SMTP_PORTS[name]}"],
        "submission": ["--listen", f"127.0.0.1:{SUBMISSION_PORTS[name]}"],
        "mailaccess": [],
    }
    env = {
        **inst.env(),
        "PUSHMAIL_SMTP_HOSTNAME": f"mail.{name}.localhost",
        "PUSHMAIL_POP3_LISTEN": f"127.0.0.1:{POP3_PORTS[name]}",
        "PUSHMAIL_IMAP_LISTEN": f"127.0.0.1:{IMAP_PORTS[name]}",
    }
    servers = []
    for command in MAIL_SERVERS:
        servers.append(
            subprocess.Popen(
                [PYTHON, "manage.py", command, *listen[command]],
                cwd=ROOT,
                env=env,
                stdout=open(inst.data_dir / f"{command}.log", "ab"),  # noqa: SIM115 - handed to the child
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    return servers


def stop_mail_servers(servers: list[subprocess.Popen[bytes]]) -> None:
    for server in servers:
        if server.poll() is None:
            server.terminate()
    for server in servers:
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def answers(port: int, greeting: bytes, timeout: float = 20.0) -> bool:
    """Whether a server on this loopback port greets with ``greeting`` (waiting for it to start)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.settimeout(2)
                return sock.makefile("rb").readline().startswith(greeting)
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)


def mail_program_settings(tokens: dict[str, str], imap: dict[str, bool]) -> str:
    """The settings a mail program needs for each instance's first mailbox (the README says where they go)."""
    lines = []
    for name in PORTS:
        address = MAILBOXES[name][0]
        imap_port = f"{IMAP_PORTS[name]}" if imap[name] else f"{IMAP_PORTS[name]} (not served by this version)"
        lines.append(
            f"  {address}: server 127.0.0.1, no encryption (this machine only), normal password\n"
            f"    user {address}, app password {tokens[name]}\n"
            f"    IMAP port {imap_port}, POP3 port {POP3_PORTS[name]}, SMTP (submission) port {SUBMISSION_PORTS[name]}"
        )
    return "\n".join(lines)


def usage(tokens: dict[str, str], base: Path, imap: dict[str, bool] | None = None) -> str:
    """What the demo prints once it runs: where to sign in, commands that send and read a message,
    and the settings for a mail program (``imap``: whether each instance serves IMAP)."""
    ann, bob = MAILBOXES["alpha"][0], MAILBOXES["beta"][0]
    alpha_auth = f"-H 'Authorization: Bearer {tokens['alpha']}'"
    beta_auth = f"-H 'Authorization: Bearer {tokens['beta']}'"
    return f"""
Pushmail demo is running (SQLite, filesystem broker, a Celery worker and beat per instance).

  alpha: http://alpha.localhost:8001/   mailboxes {", ".join(MAILBOXES["alpha"])}
         SMTP gateway 127.0.0.1:{SMTP_PORTS["alpha"]}, submission 127.0.0.1:{SUBMISSION_PORTS["alpha"]}
         POP3 127.0.0.1:{POP3_PORTS["alpha"]}, IMAP 127.0.0.1:{IMAP_PORTS["alpha"]}
  beta:  http://beta.localhost:8002/    mailboxes {", ".join(MAILBOXES["beta"])}
         SMTP gateway 127.0.0.1:{SMTP_PORTS["beta"]}, submission 127.0.0.1:{SUBMISSION_PORTS["beta"]}
         POP3 127.0.0.1:{POP3_PORTS["beta"]}, IMAP 127.0.0.1:{IMAP_PORTS["beta"]}
  password for every mailbox: {PASSWORD}
  Django admin: /admin/ as admin@alpha.localhost or admin@beta.localhost (same password)

Send from alpha to beta with the user API ({ann}'s token); MID keeps the new message's Message-ID:

  MID=$(curl -s -X POST http://127.0.0.1:8001/api/v1/messages/ {alpha_auth} \\
    -H 'Content-Type: application/json' \\
    -d '{{"to": ["{bob}"], "subject": "Hello", "text": "Pulled on read."}}' \\
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["message_id"])'); echo "$MID"

Then read that message on beta ({bob}'s token): find bob's entry for it (its conversation is
the Message-ID), then open it. The first GET answers 202 while the body is pulled from alpha,
the next one 200 with the body:

  ENTRY=$(curl -s -G http://127.0.0.1:8002/api/v1/inbox/ --data-urlencode "conversation=$MID" {beta_auth} \\
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["results"][0]["id"])'); echo "$ENTRY"
  curl -s http://127.0.0.1:8002/api/v1/inbox/$ENTRY/ {beta_auth}

The sender goes offline: send a message, then type `stop alpha` here (or run
`python -m tools.demo stop alpha` in another terminal) before bob opens it. Beta still lists it,
at the sender's; opening it says the sender cannot be reached and retries. `start alpha` brings
alpha back and the body arrives. `stop beta` / `start beta` do the same for beta.

Send to bob over SMTP as a mail program would, through alpha's submission server
({ann} signs in with the same token, her app password for this program):

  swaks --server 127.0.0.1:{SUBMISSION_PORTS["alpha"]} --auth PLAIN --auth-user {ann} \\
    --auth-password '{tokens["alpha"]}' --from {ann} --to {bob} \\
    --header 'Subject: Hello by SMTP' --body 'Sent from a mail program.'

or as an ordinary mail server would, straight to beta's SMTP gateway:

  swaks --server 127.0.0.1:{SMTP_PORTS["beta"]} --from someone@example.org --to {bob}

Read mail in a mail program (Thunderbird: see the README, "Reading the demo's mail in Thunderbird"):

{mail_program_settings(tokens, imap or dict.fromkeys(PORTS, True))}

Logs: {base}/<instance>/web.log, worker.log, smtpd.log, submission.log and mailaccess.log.
Commands: stop <instance>, start <instance>. Ctrl-C stops both instances.
"""


def parse_command(line: str) -> tuple[str, str] | None:
    """``stop beta`` -> ("stop", "beta"); None for anything that is not an action on a known instance."""
    words = line.split()
    if len(words) == 2 and words[0] in ACTIONS and words[1] in PORTS:
        return words[0], words[1]
    return None


class Demo:
    def __init__(self, base: Path) -> None:
        self.base = base
        specs = {name: [f"{name}.localhost"] for name in PORTS}
        self.instances = make_cluster(base, specs, backend=Backend(), extra_env={"DEBUG": "1"})
        peers = {f"{name}.localhost": f"http://127.0.0.1:{port}" for name, port in PORTS.items()}
        for name, inst in self.instances.items():
            inst.port = PORTS[name]
            inst.peers = peers
        self.mail_servers: dict[str, list[subprocess.Popen[bytes]]] = {name: [] for name in PORTS}
        self.imap: dict[str, bool] = {name: False for name in PORTS}  # whether this version serves IMAP
        self.running: set[str] = set()

    def prepare(self) -> dict[str, str]:
        """Create or migrate each instance's database; the API tokens (kept from an earlier run)."""
        tokens = {}
        for name, inst in self.instances.items():
            if not (inst.data_dir / "pushmail.sqlite3").exists():
                inst.data_dir.mkdir(parents=True, exist_ok=True)
                (inst.data_dir / TOKEN_FILE).unlink(missing_ok=True)  # a new database knows no old token
                with step(f"{name}: creating the database (the longest step)"):
                    inst.manage("migrate", "--noinput", "-v", "0")
                with step(f"{name}: adding the domain and the demo mailboxes"):
                    inst.manage("adddomain", f"{name}.localhost")
                    for address in MAILBOXES[name]:
                        inst.manage("addmailbox", address, "--password", PASSWORD)
                    inst.manage("addmailbox", f"admin@{name}.localhost", "--password", PASSWORD, "--superuser")
            else:
                with step(f"{name}: bringing the database up to date"):
                    inst.manage("migrate", "--noinput", "-v", "0")
            with step(f"{name}: API token for {MAILBOXES[name][0]}"):
                tokens[name] = stored_token(
                    inst.data_dir,
                    lambda inst=inst, name=name: inst.manage("apitoken", MAILBOXES[name][0], "--name", "demo"),
                )
        return tokens

    def start(self, name: str) -> None:
        inst = self.instances[name]
        with step(f"{name}: starting the web server on port {PORTS[name]}"):
            inst.start_web()
        with step(f"{name}: starting the Celery worker and beat"):
            inst.start_worker()
        with step(f"{name}: starting the SMTP gateway, submission and mail access (POP3, IMAP)"):
            self.mail_servers[name] = start_mail_servers(inst, name)
            if not answers(POP3_PORTS[name], b"+OK"):
                print(f"  {name}: POP3 did not answer on port {POP3_PORTS[name]}; see mailaccess.log", flush=True)
            self.imap[name] = answers(IMAP_PORTS[name], b"* OK", timeout=2)
        self.running.add(name)

    def stop(self, name: str) -> None:
        with step(f"{name}: stopping"):
            stop_mail_servers(self.mail_servers[name])
            self.mail_servers[name] = []
            stop_all([self.instances[name]])
        self.running.discard(name)

    def act(self, action: str, name: str) -> str:
        if action == "stop":
            if name not in self.running:
                return f"{name} is already stopped"
            self.stop(name)
            return f"{name} stopped; `start {name}` brings it back"
        if name in self.running:
            return f"{name} is already running"
        self.start(name)
        return f"{name} is running again"

    def exited(self) -> str | None:
        """Why a running instance's process ended on its own, if one did."""
        for name in sorted(self.running):
            inst = self.instances[name]
            if inst.web is not None and inst.web.poll() is not None:
                return f"{name} web server exited; see {inst.data_dir / 'web.log'}"
            for command, server in zip(MAIL_SERVERS, self.mail_servers[name], strict=False):
                if server.poll() is not None:
                    return f"{name}'s {command} exited; see {inst.data_dir / (command + '.log')}"
        return None

    def stop_everything(self) -> None:
        print("stopping …", flush=True)
        for name in PORTS:
            for server in self.mail_servers[name]:
                if server.poll() is None:
                    server.terminate()
        stop_all(self.instances.values())
        for name in PORTS:
            stop_mail_servers(self.mail_servers[name])
        self.running.clear()


def control_dir(base: Path) -> Path:
    return base / "control"


def request_action(base: Path, action: str, name: str, timeout: float = 120.0) -> int:
    """``python -m tools.demo stop beta``: ask the running demo to stop (or start) one instance."""
    pid_file = base / "demo.pid"
    if not pid_file.exists():
        print(f"no demo is running from {base}: start it with `make demo`", file=sys.stderr)
        return 1
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (ProcessLookupError, ValueError):
        print(f"no demo is running from {base}: start it with `make demo`", file=sys.stderr)
        return 1
    request = control_dir(base) / f"{action}-{name}"
    request.parent.mkdir(parents=True, exist_ok=True)
    request.write_text("")
    deadline = time.monotonic() + timeout
    while request.exists():
        if time.monotonic() > deadline:
            print(f"the demo did not {action} {name} within {timeout:.0f} s", file=sys.stderr)
            return 1
        time.sleep(0.2)
    print(f"{name}: {action} done")
    return 0


def pending_requests(base: Path) -> list[tuple[str, str, Path]]:
    found = []
    directory = control_dir(base)
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            parsed = parse_command(path.name.replace("-", " ", 1))
            if parsed:
                found.append((*parsed, path))
            else:
                path.unlink(missing_ok=True)
    return found


def run(base: Path) -> int:
    demo = Demo(base)
    print("Setting up the Pushmail demo (the first run creates the databases) …", flush=True)
    tokens = demo.prepare()
    for name in PORTS:
        demo.start(name)
    (base / "demo.pid").write_text(str(os.getpid()))
    for stale in pending_requests(base):
        stale[2].unlink(missing_ok=True)
    print(usage(tokens, base, demo.imap), flush=True)

    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    interactive = sys.stdin.isatty()
    try:
        while not stop:
            for action, name, path in pending_requests(base):
                print(demo.act(action, name), flush=True)
                path.unlink(missing_ok=True)
            if interactive:
                ready, _, _ = select.select([sys.stdin], [], [], 0.5)
                if ready:
                    line = sys.stdin.readline()
                    if not line:
                        interactive = False
                    elif line.strip():
                        parsed = parse_command(line)
                        print(
                            demo.act(*parsed) if parsed else "commands: stop <alpha|beta>, start <alpha|beta>",
                            flush=True,
                        )
            else:
                time.sleep(0.5)
            problem = demo.exited()
            if problem:
                print(problem, file=sys.stderr)
                stop = True
    finally:
        demo.stop_everything()
        (base / "demo.pid").unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    base = demo_dir()
    if not args:
        return run(base)
    parsed = parse_command(" ".join(args))
    if parsed is None:
        print(f"usage: python -m tools.demo [{'|'.join(ACTIONS)} {'|'.join(PORTS)}]", file=sys.stderr)
        return 2
    return request_action(base, *parsed)


if __name__ == "__main__":
    raise SystemExit(main())
