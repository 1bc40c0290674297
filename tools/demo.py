"""Two instances side by side on the embedded default: ``make demo``.

alpha.localhost on port 8001 and beta.localhost on port 8002, each with its own
SQLite database, its own filesystem broker folder, and a real Celery worker
with beat. Each also runs its SMTP gateway (``manage.py smtpd``: ordinary mail
in) and its submission server (``manage.py submission``: mail programs send) on
the ports printed. Distinct host names keep their login cookies apart. Ctrl-C
stops both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tools.cluster import PYTHON, ROOT, Backend, Instance, make_cluster, stop_all

PASSWORD = os.environ.get("DEMO_PASSWORD", "pushmail-demo")
PORTS = {"alpha": 8001, "beta": 8002}
SMTP_PORTS = {"alpha": 2525, "beta": 2526}  # manage.py smtpd: port 25 in production
SUBMISSION_PORTS = {"alpha": 5870, "beta": 5871}  # manage.py submission: 587 and 465 in production
MAILBOXES = {
    "alpha": ["ann@alpha.localhost", "al@alpha.localhost"],
    "beta": ["bob@beta.localhost", "bea@beta.localhost"],
}


def start_mail_servers(inst: Instance, name: str) -> list[subprocess.Popen[bytes]]:
    """The instance's SMTP gateway and submission server, each its own process logging to its data folder."""
    servers = []
    for command, port in (("smtpd", SMTP_PORTS[name]), ("submission", SUBMISSION_PORTS[name])):
        servers.append(
            subprocess.Popen(
                [PYTHON, "manage.py", command, "--listen", f"127.0.0.1:{port}"],
                cwd=ROOT,
                env={**inst.env(), "PUSHMAIL_SMTP_HOSTNAME": f"mail.{name}.localhost"},
                stdout=open(inst.data_dir / f"{command}.log", "ab"),  # noqa: SIM115 - handed to the child
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    return servers


def main() -> int:
    base = Path(os.environ.get("DEMO_DIR", ROOT / "var" / "demo"))
    specs = {name: [f"{name}.localhost"] for name in PORTS}
    instances = make_cluster(base, specs, backend=Backend(), extra_env={"DEBUG": "1"})
    for name, inst in instances.items():
        inst.port = PORTS[name]
    peers = {f"{name}.localhost": f"http://127.0.0.1:{port}" for name, port in PORTS.items()}
    tokens = {}
    for name, inst in instances.items():
        inst.peers = peers
        fresh = not (inst.data_dir / "pushmail.sqlite3").exists()
        if fresh:
            print(f"setting up {name}.localhost …", flush=True)
            inst.setup(MAILBOXES[name], password=PASSWORD)
            inst.manage("addmailbox", f"admin@{name}.localhost", "--password", PASSWORD, "--superuser")
        else:
            inst.manage("migrate", "--noinput", "-v", "0")
        tokens[name] = inst.manage("apitoken", MAILBOXES[name][0], "--name", "demo")
    for inst in instances.values():
        inst.start()
    mail_servers = {name: start_mail_servers(inst, name) for name, inst in instances.items()}

    ann, bob = MAILBOXES["alpha"][0], MAILBOXES["beta"][0]
    print(
        f"""
Pushmail demo is running (SQLite, filesystem broker, a Celery worker and beat per instance).

  alpha: http://alpha.localhost:8001/   mailboxes {", ".join(MAILBOXES["alpha"])}
         SMTP gateway 127.0.0.1:{SMTP_PORTS["alpha"]}, submission 127.0.0.1:{SUBMISSION_PORTS["alpha"]}
  beta:  http://beta.localhost:8002/    mailboxes {", ".join(MAILBOXES["beta"])}
         SMTP gateway 127.0.0.1:{SMTP_PORTS["beta"]}, submission 127.0.0.1:{SUBMISSION_PORTS["beta"]}
  password for every mailbox: {PASSWORD}
  Django admin: /admin/ as admin@alpha.localhost or admin@beta.localhost (same password)

Send from alpha to beta with the user API ({ann}'s token):

  curl -s -X POST http://127.0.0.1:8001/api/v1/messages/ \\
    -H 'Authorization: Bearer {tokens["alpha"]}' -H 'Content-Type: application/json' \\
    -d '{{"to": ["{bob}"], "subject": "Hello", "text": "Pulled on read."}}'

Then read it on beta ({bob}'s token); the first GET answers 202 while the body is
pulled from alpha, the next one 200 with the body:

  curl -s http://127.0.0.1:8002/api/v1/inbox/ -H 'Authorization: Bearer {tokens["beta"]}'
  curl -s http://127.0.0.1:8002/api/v1/inbox/1/ -H 'Authorization: Bearer {tokens["beta"]}'

Send to bob over SMTP as a mail program would, through alpha's submission server
({ann} signs in with the same token, her app password for this program):

  swaks --server 127.0.0.1:{SUBMISSION_PORTS["alpha"]} --auth PLAIN --auth-user {ann} \\
    --auth-password '{tokens["alpha"]}' --from {ann} --to {bob} \\
    --header 'Subject: Hello by SMTP' --body 'Sent from a mail program.'

or as an ordinary mail server would, straight to beta's SMTP gateway:

  swaks --server 127.0.0.1:{SMTP_PORTS["beta"]} --from someone@example.org --to {bob}

Logs: {base}/<instance>/web.log, worker.log, smtpd.log and submission.log.  Ctrl-C stops both instances.
""",
        flush=True,
    )
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop:
            for name, inst in instances.items():
                if inst.web and inst.web.poll() is not None:
                    print(f"{name} web server exited; see {inst.data_dir / 'web.log'}", file=sys.stderr)
                    stop = True
                if any(server.poll() is not None for server in mail_servers[name]):
                    print(f"{name}'s smtpd or submission exited; see their logs in {inst.data_dir}", file=sys.stderr)
                    stop = True
            time.sleep(0.5)
    finally:
        print("stopping …", flush=True)
        for server in (s for servers in mail_servers.values() for s in servers):
            server.terminate()
        stop_all(instances.values())
        for server in (s for servers in mail_servers.values() for s in servers):
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
