"""Open latency: from opening an unfetched entry to its body being available.

Two real instances on loopback (PostgreSQL, Redis as broker and cache; gunicorn
web and a Celery worker with beat each). alpha.test sends N messages to
reader@beta.test through the user API; once every notification has arrived,
the reader opens each entry in turn:

1. ``GET /api/v1/inbox/{id}/`` answers 202 (the body is still at alpha's; the
   open queued one fetch on beta's broker);
2. the client polls the same URL every 10 ms until it answers 200 with a body.

Latency is the time from sending the first GET to receiving the 200. Beta's
database says when the fetch task claimed the message (``last_attempt_at``)
and when the body was stored (``fetched_at``), which splits each open into:
web + commit + broker + worker pickup, the signed fetch itself, and the time
until the next poll saw it.

    python -m bench.open_latency                 # 200 opens
    python -m bench.open_latency --opens 200 --poll-ms 10 --worker-concurrency 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench.common import (
    PRODUCTION_ENV,
    ROOT,
    cpu_report,
    cpu_sample,
    create_mailboxes_code,
    emit,
    http_json,
    log,
    machine,
    mean,
    percentile,
    pgid_of,
    server_backend,
    table,
    wait_for_quiet,
)
from tools.cluster import Instance

SENDER = "sender@alpha.test"
READER = "reader@beta.test"


def body_text(size: int, n: int) -> str:
    line = f"Message {n}: the quick brown fox jumps over the lazy dog, again and again.\n"
    return (line * (size // len(line) + 1))[:size]


def wait_for_inbox(beta: Instance, token: str, count: int, timeout: float = 300) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        status, data = http_json("GET", f"{beta.base_url}/api/v1/inbox/?page=1", token=token)
        total = data.get("count", 0) if isinstance(data, dict) else 0
        if total >= count:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {total} of {count} notifications arrived within {timeout}s")
        time.sleep(0.5)
    ids: list[int] = []
    page = 1
    while True:
        status, data = http_json("GET", f"{beta.base_url}/api/v1/inbox/?page={page}", token=token)
        assert isinstance(data, dict) and status == 200
        ids += [e["id"] for e in data["results"] if e["state"] == "notified"]
        if not data.get("next"):
            break
        page += 1
    return sorted(ids)


def open_once(url: str, token: str, poll: float, timeout: float = 60) -> dict[str, object]:
    started_wall = time.time()
    started = time.perf_counter()
    status, data = http_json("GET", url, token=token)
    first_status = status
    first_answer = time.perf_counter() - started
    polls = 0
    while not (status == 200 and isinstance(data, dict) and data.get("body")):
        if time.perf_counter() - started > timeout:
            return {"ok": False, "error": f"no body after {timeout}s; last {status} {data}"}
        time.sleep(poll)
        polls += 1
        status, data = http_json("GET", url, token=token)
    return {
        "ok": first_status == 202,
        "first_status": first_status,
        "latency": time.perf_counter() - started,
        "first_answer": first_answer,
        "polls": polls,
        "opened_at": started_wall,
        "done_at": started_wall + (time.perf_counter() - started),
        "state": data.get("state") if isinstance(data, dict) else None,
    }


def server_times(beta: Instance, entry_ids: list[int]) -> dict[int, dict[str, float | int | None]]:
    """When the fetch task claimed each entry's message, when the body was stored, and attempts."""
    out = beta.shell(
        "import json\n"
        "from mailbox.models import InboxEntry\n"
        f"ids = {entry_ids!r}\n"
        "rows = {}\n"
        "for e in InboxEntry.objects.filter(pk__in=ids).select_related('remote'):\n"
        "    r = e.remote\n"
        "    rows[e.pk] = {'claimed': r.last_attempt_at.timestamp() if r.last_attempt_at else None,\n"
        "                  'fetched': r.fetched_at.timestamp() if r.fetched_at else None,\n"
        "                  'attempts': r.attempts}\n"
        "print(json.dumps(rows))\n"
    )
    return {int(k): v for k, v in json.loads(out.splitlines()[-1]).items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--opens", type=int, default=200)
    parser.add_argument("--poll-ms", type=float, default=10.0)
    parser.add_argument("--size", type=int, default=10 * 1024, help="message text bytes")
    parser.add_argument("--worker-concurrency", type=int, default=2)
    parser.add_argument("--web-workers", type=int, default=3)
    parser.add_argument(
        "--quiet", type=float, default=25.0, help="wait (up to 3 min) until the machine is below this %% busy"
    )
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    base_dir = Path(tempfile.mkdtemp(prefix="pushmail-bench-latency-"))
    backend = server_backend()
    common = {
        "backend": backend,
        "web_workers": args.web_workers,
        "worker_concurrency": args.worker_concurrency,
        "extra_env": dict(PRODUCTION_ENV),
    }
    alpha = Instance(name="bench_latency_alpha", domains=["alpha.test"], data_dir=base_dir / "alpha", **common)  # type: ignore[arg-type]
    beta = Instance(name="bench_latency_beta", domains=["beta.test"], data_dir=base_dir / "beta", **common)  # type: ignore[arg-type]
    peers = {"alpha.test": alpha.base_url, "beta.test": beta.base_url}
    alpha.peers, beta.peers = dict(peers), dict(peers)
    info = machine()
    log(f"machine: {info}")
    results: list[dict[str, object]] = []
    try:
        log("setting up alpha and beta on", backend.description)
        alpha.setup([])
        beta.setup([])
        sender_token = json.loads(alpha.shell(create_mailboxes_code([SENDER], tokens=True)).splitlines()[-1])[SENDER]
        reader_token = json.loads(beta.shell(create_mailboxes_code([READER], tokens=True)).splitlines()[-1])[READER]
        alpha.start()
        beta.start()
        log(f"sending {args.opens} messages of {args.size} bytes from {SENDER} to {READER}")
        for n in range(args.opens):
            status, data = http_json(
                "POST",
                f"{alpha.base_url}/api/v1/messages/",
                token=sender_token,
                payload={"to": [READER], "subject": f"Latency {n}", "text": body_text(args.size, n)},
            )
            if status != 201:
                raise RuntimeError(f"send failed: {status} {data}")
        entry_ids = wait_for_inbox(beta, reader_token, args.opens)
        if len(entry_ids) < args.opens:
            raise RuntimeError(f"only {len(entry_ids)} unopened entries")
        time.sleep(2)  # let the last deliveries' work settle
        busy_before = wait_for_quiet(args.quiet, 180)
        sample = cpu_sample()
        log(f"opening {len(entry_ids)} entries one after another, polling every {args.poll_ms} ms")
        poll = args.poll_ms / 1000
        for entry_id in entry_ids:
            result = open_once(f"{beta.base_url}/api/v1/inbox/{entry_id}/", reader_token, poll)
            result["entry"] = entry_id
            results.append(result)
            time.sleep(0.02)
        cpu = cpu_report(
            sample,
            {
                "receiver (beta) web + worker": pgid_of(beta.web) + pgid_of(beta.worker),
                "sender (alpha) web + worker": pgid_of(alpha.web) + pgid_of(alpha.worker),
            },
        )
        times = server_times(beta, entry_ids)
    finally:
        alpha.stop()
        beta.stop()
        if not args.keep:
            shutil.rmtree(base_dir, ignore_errors=True)

    good = [r for r in results if r.get("ok")]
    failures = [r for r in results if not r.get("ok")]
    latencies = [float(r["latency"]) for r in good]  # type: ignore[arg-type]
    queue, fetch, seen = [], [], []
    attempts_over_one = 0
    for r in good:
        t = times.get(int(r["entry"]))  # type: ignore[arg-type]
        if not t or t["claimed"] is None or t["fetched"] is None:
            continue
        if int(t["attempts"] or 0) > 1:  # type: ignore[arg-type]
            attempts_over_one += 1
        queue.append(float(t["claimed"]) - float(r["opened_at"]))  # type: ignore[arg-type]
        fetch.append(float(t["fetched"]) - float(t["claimed"]))  # type: ignore[arg-type]
        seen.append(float(r["done_at"]) - float(t["fetched"]))  # type: ignore[arg-type]

    def ms(values: list[float], pct: float) -> float:
        return round(1000 * percentile(values, pct), 1)

    p95 = ms(latencies, 95)
    record = {
        "benchmark": "open_latency",
        "machine": info,
        "opens": len(results),
        "ok": len(good),
        "failures": [str(r.get("error") or r.get("first_status")) for r in failures][:10],
        "poll_interval_ms": args.poll_ms,
        "message_text_bytes": args.size,
        "worker_concurrency": args.worker_concurrency,
        "broker": "redis",
        "database": "postgresql",
        "latency_ms": {
            "p50": ms(latencies, 50),
            "p95": p95,
            "p99": ms(latencies, 99),
            "max": ms(latencies, 100),
            "mean": round(1000 * mean(latencies), 1),
        },
        "breakdown_ms_p50_p95": {
            "open -> fetch task claims (web, commit, broker, worker pickup)": [ms(queue, 50), ms(queue, 95)],
            "claim -> body stored (signed GET to the sender, digest check, store)": [ms(fetch, 50), ms(fetch, 95)],
            "stored -> client sees 200 (polling)": [ms(seen, 50), ms(seen, 95)],
        },
        "first_answer_ms_p50": ms([float(r["first_answer"]) for r in good], 50),  # type: ignore[arg-type]
        "polls_mean": round(mean([float(r["polls"]) for r in good]), 1),  # type: ignore[arg-type]
        "fetches_with_more_than_one_attempt": attempts_over_one,
        "machine_busy_pct_before": round(busy_before, 1),
        "cpu": cpu.to_json(),
        "target": "p95 < 200 ms",
        "met": bool(latencies) and p95 < 200 and not failures,
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    emit(record)
    print(
        table(
            ["opens", "ok", "p50 ms", "p95 ms", "p99 ms", "max ms", "target", "met"],
            [
                [
                    len(results),
                    len(good),
                    record["latency_ms"]["p50"],  # type: ignore[index]
                    p95,
                    record["latency_ms"]["p99"],  # type: ignore[index]
                    record["latency_ms"]["max"],  # type: ignore[index]
                    "p95 < 200 ms",
                    record["met"],
                ]
            ],
        )
    )
    print()
    print(
        table(
            ["phase", "p50 ms", "p95 ms"],
            [[k, *v] for k, v in record["breakdown_ms_p50_p95"].items()],  # type: ignore[union-attr]
        )
    )
    return 0 if good else 1


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
