"""Two instances side by side on the embedded default: ``make demo``.

alpha.localhost on port 8001 and beta.localhost on port 8002, each with its own
SQLite database, its own filesystem broker folder, and a real Celery worker
with beat. Distinct host names keep their login cookies apart. Ctrl-C stops both.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from tools.cluster import ROOT, Backend, make_cluster, stop_all

PASSWORD = os.environ.get("DEMO_PASSWORD", "pushmail-demo")
PORTS = {"alpha": 8001, "beta": 8002}
MAILBOXES = {
    "alpha": ["ann@alpha.localhost", "al@alpha.localhost"],
    "beta": ["bob@beta.localhost", "bea@beta.localhost"],
}


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

    ann, bob = MAILBOXES["alpha"][0], MAILBOXES["beta"][0]
    print(
        f"""
Pushmail demo is running (SQLite, filesystem broker, a Celery worker and beat per instance).

  alpha: http://alpha.localhost:8001/   mailboxes {", ".join(MAILBOXES["alpha"])}
  beta:  http://beta.localhost:8002/    mailboxes {", ".join(MAILBOXES["beta"])}
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

Logs: {base}/<instance>/web.log and worker.log.  Ctrl-C stops both instances.
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
            time.sleep(0.5)
    finally:
        print("stopping …", flush=True)
        stop_all(instances.values())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
