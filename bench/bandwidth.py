"""Bandwidth: one 50 KB message to 1,000 recipients over 50 domains, against SMTP.

Real instances on loopback: the sender alpha.test (PostgreSQL + Redis), and 50
receiving instances, one per recipient domain corp00.example ... corp49.example
(20 mailboxes each), so that every domain gets its own notification and does its
own fetch. The receivers run on SQLite with the embedded broker: 50 instances
would need more Redis databases (16) and PostgreSQL connections (100) than the
shared servers have, and the backend does not change a byte on the wire.

Every instance sits behind its own byte-counting TCP proxy (bench/proxy.py),
and every instance reaches every other only through those proxies (the peers'
base URLs and the published API URLs point at them). The proxies count all
HTTP request and response bytes, headers included, per connection. The users'
own API calls (sending, reading) go straight to the instances and are not
counted, as SMTP's submission and IMAP are not.

For each read rate (0 %, 20 %, 100 % of recipients, picked at random with a
fixed seed, then 0 % again), alpha sends one message (all recipients Bcc), the
readers open it through the user API, and the receiving instances' workers
fetch. The first message is the first contact between alpha and each peer, so
it carries the discovery documents both ways. The last 0 % message is one
between peers that know each other: every process of every instance is
restarted before it, so only what the instances' shared caches hold can spare
a discovery request. HTTP
compression is whatever the instances negotiate (the client sends
``Accept-Encoding: gzip``, docs/protocol.md §5.1); the proxies count the bytes as sent and
report which answers were gzip-coded. The message text is real English prose
(see ``message_text``). The SMTP figures come from bench/smtp_model.py.

    python -m bench.bandwidth
    python -m bench.bandwidth --rates 0,20,100,0 --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import textwrap
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import (
    PRODUCTION_ENV,
    ROOT,
    create_mailboxes_code,
    emit,
    http_json,
    log,
    machine,
    server_backend,
    table,
)
from bench.proxy import Connection, Proxies, hold_ports
from bench.smtp_model import build_message, smtp_cost
from tools.cluster import Backend, Instance

SENDER = "sender@alpha.test"
SMTP_MESSAGE_ID = "<9e5f72c9-d3bd-4ab9-a851-c6972cb84642@alpha.test>"  # as long as Pushmail's message ids
# Recipients look like real addresses (first.last@corpNN.example, 27 characters on
# average): the notification and its answer carry every address, as SMTP's RCPT TO does.
FIRST = (
    "maria james sofia david emma lucas olivia noah mia liam anna elias laura jonas sara peter julia tomas nina oscar"
).split()
LAST = (
    "garcia smith muller rossi martin silva novak jensen kowalski dubois fischer moreau "
    "larsen costa weber bianchi horvat nielsen schmidt petit"
).split()


def message_text(size: int) -> str:
    """Real English prose, exactly ``size`` bytes of ASCII in lines of at most 72 characters.

    The text is the start of the Python documentation's topic help that ships with
    every Python (``pydoc_data``): it compresses about as well as ordinary mail text
    (gzip: about 3.2 times), unlike generated filler, which would flatter compression.
    """
    from pydoc_data.topics import topics

    paragraphs = [" ".join(p.split()) for key in sorted(topics) for p in topics[key].split("\n\n") if p.strip()]
    text = "\n\n".join(textwrap.fill(p, 72) for p in paragraphs).encode("ascii", "replace").decode()
    if len(text) < size:
        raise RuntimeError(f"only {len(text)} bytes of text available")
    return text[: size - 1] + "\n"


def addresses_of(domain: str, count: int) -> list[str]:
    shift = int("".join(c for c in domain if c.isdigit()) or 0)
    return [
        f"{FIRST[j % len(FIRST)]}.{LAST[(j + shift) % len(LAST)]}{j // len(FIRST) or ''}@{domain}" for j in range(count)
    ]


def setup_receivers(receivers: list[Instance], per_domain: int, template: Path) -> dict[str, str]:
    """Copy the migrated template database to each receiver, add its domain and mailboxes; return tokens."""

    def one(inst: Instance) -> dict[str, str]:
        inst.data_dir.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal"):
            if Path(f"{template}{suffix}").exists():
                shutil.copyfile(f"{template}{suffix}", f"{inst.data_dir / 'pushmail.sqlite3'}{suffix}")
        domain = inst.domains[0]
        addresses = addresses_of(domain, per_domain)
        code = f"from accounts.services import create_domain\ncreate_domain(name={domain!r})\n" + create_mailboxes_code(
            addresses, tokens=True
        )
        return json.loads(inst.shell(code).splitlines()[-1])

    tokens: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=4) as pool:
        for result in pool.map(one, receivers):
            tokens.update(result)
    return tokens


def wait_notified(alpha: Instance, token: str, message_id: str, domains: int, timeout: float = 300) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        status, data = http_json("GET", f"{alpha.base_url}/api/v1/messages/{message_id}/", token=token)
        deliveries = data.get("deliveries", []) if isinstance(data, dict) else []
        pending = [d for d in deliveries if d["state"] in ("pending", "retrying")]
        if len(deliveries) == domains and not pending:
            return deliveries
        if time.monotonic() > deadline:
            raise RuntimeError(f"deliveries not done after {timeout}s: {pending[:3]}")
        time.sleep(0.5)


def entry_of(inst: Instance, token: str, subject: str) -> int:
    status, data = http_json("GET", f"{inst.base_url}/api/v1/inbox/?page=1", token=token)
    assert status == 200 and isinstance(data, dict), (status, data)
    for entry in data["results"]:
        if entry["subject"] == subject:
            return int(entry["id"])
    raise RuntimeError(f"no entry {subject!r} at {inst.name}")


def read_all(
    by_instance: dict[str, Instance], readers: list[str], tokens: dict[str, str], subject: str, batch: int
) -> dict[str, int]:
    """Open every reader's entry, start the reading domains' workers a batch at a time, wait for the
    bodies, and check every reader then gets the body. Returns readers per domain."""
    per_domain: dict[str, list[str]] = defaultdict(list)
    for address in readers:
        per_domain[address.rpartition("@")[2]].append(address)
    domains = sorted(per_domain)
    for start in range(0, len(domains), batch):
        group = domains[start : start + batch]
        entries: dict[str, int] = {}
        for domain in group:
            inst = by_instance[domain]
            for address in per_domain[domain]:
                entries[address] = entry_of(inst, tokens[address], subject)
                status, data = http_json(
                    "GET", f"{inst.base_url}/api/v1/inbox/{entries[address]}/", token=tokens[address]
                )
                if status not in (200, 202):
                    raise RuntimeError(f"open failed for {address}: {status} {data}")
        for domain in group:
            by_instance[domain].start_worker()
        try:
            for domain in group:
                inst = by_instance[domain]
                for address in per_domain[domain]:
                    deadline = time.monotonic() + 120
                    while True:
                        status, data = http_json(
                            "GET", f"{inst.base_url}/api/v1/inbox/{entries[address]}/", token=tokens[address]
                        )
                        if status == 200 and isinstance(data, dict) and data.get("body"):
                            break
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"{address} has no body after 120 s: {status} {data}")
                        time.sleep(0.1)
        finally:
            for domain in group:
                by_instance[domain].kill_worker()
    return {d: len(a) for d, a in per_domain.items()}


def summarize(conns: list[Connection]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for c in conns:
        row = out.setdefault(c.kind, {"requests": 0, "request_bytes": 0, "response_bytes": 0, "non_2xx": 0})
        row["requests"] += max(1, c.requests)
        row["request_bytes"] += c.up
        row["response_bytes"] += c.down
        if not 200 <= c.status < 300:
            row["non_2xx"] += 1
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", type=int, default=50)
    parser.add_argument("--per-domain", type=int, default=20)
    parser.add_argument("--size", type=int, default=50 * 1024, help="message text bytes")
    parser.add_argument(
        "--rates", default="0,20,100,0", help="percent of recipients reading, comma list (one message each, in order)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=10, help="receiving workers running at once")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]

    base_dir = Path(tempfile.mkdtemp(prefix="pushmail-bench-bandwidth-"))
    proxies = Proxies()
    alpha = Instance(
        name="bench_bw_alpha",
        domains=["alpha.test"],
        data_dir=base_dir / "alpha",
        backend=server_backend(),
        web_workers=2,
        worker_concurrency=2,
        extra_env=dict(PRODUCTION_ENV),
    )
    embedded = Backend()
    receivers = [
        Instance(
            name=f"bench_bw_corp{i:02d}",
            domains=[f"corp{i:02d}.example"],
            data_dir=base_dir / f"corp{i:02d}",
            backend=embedded,
            web_workers=1,
            worker_concurrency=1,
            extra_env=dict(PRODUCTION_ENV),
        )
        for i in range(args.domains)
    ]
    instances = [alpha, *receivers]
    # Distinct ports for 51 web servers and 51 proxies: hold the web ports while the proxies bind.
    held = hold_ports(len(instances))
    for inst, sock in zip(instances, held, strict=True):
        inst.port = int(sock.getsockname()[1])
    peers = {inst.domains[0]: f"http://127.0.0.1:{proxies.add(inst.domains[0], inst.port)}" for inst in instances}
    for sock in held:
        sock.close()
    for inst in instances:
        inst.peers = dict(peers)
        inst.extra_env["PUSHMAIL_BASE_URL"] = peers[inst.domains[0]]
    by_domain = {inst.domains[0]: inst for inst in receivers}
    recipients = {d: addresses_of(d, args.per_domain) for d in sorted(by_domain)}
    everyone = [a for addresses in recipients.values() for a in addresses]
    text = message_text(args.size)
    info = machine()
    log(f"machine: {info}")
    scenarios: list[dict[str, object]] = []
    samples: dict[str, tuple[str, str]] = {}
    try:
        log(f"setting up alpha and {len(receivers)} receiving instances")
        alpha.setup([])
        sender_token = json.loads(alpha.shell(create_mailboxes_code([SENDER], tokens=True)).splitlines()[-1])[SENDER]
        template = Instance(name="bench_bw_template", domains=[], data_dir=base_dir / "template", backend=embedded)
        template.setup([])
        tokens = setup_receivers(receivers, args.per_domain, template.data_dir / "pushmail.sqlite3")
        alpha.start()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda inst: inst.start_web(), receivers))
        proxies.take()
        rng = random.Random(args.seed)
        for number, rate in enumerate(rates):
            # As long as the SMTP model's subject, and distinct per message.
            subject = f"Bandwidth {args.size} bytes to {len(everyone)}, {rate}% read #{number + 1}"
            if number and number == len(rates) - 1:
                log("restarting every process of every instance: only the shared caches remain")
                alpha.kill_worker()
                alpha.stop_web()
                alpha.start()
                for inst in receivers:
                    inst.stop_web()
                with ThreadPoolExecutor(max_workers=8) as pool:
                    list(pool.map(lambda inst: inst.start_web(), receivers))
            log(f"scenario {rate}% reading: sending")
            status, data = http_json(
                "POST",
                f"{alpha.base_url}/api/v1/messages/",
                token=sender_token,
                payload={"bcc": everyone, "subject": subject, "text": text},
            )
            if status != 201 or not isinstance(data, dict):
                raise RuntimeError(f"send failed: {status} {data}")
            message_id = str(data["id"])
            size = int(data["size"])
            wait_notified(alpha, sender_token, message_id, len(recipients))
            readers = rng.sample(everyone, round(len(everyone) * rate / 100))
            log(f"scenario {rate}% reading: {len(readers)} readers open")
            readers_per_domain = read_all(by_domain, readers, tokens, subject, args.batch)
            time.sleep(1)
            conns = proxies.take()
            deliveries = wait_notified(alpha, sender_token, message_id, len(recipients))
            fetch_counts = {d["domain"]: d["fetch_count"] for d in deliveries}
            accepted = sum(1 for d in deliveries for r in d["recipients"] if r["status"] == "accepted")
            traffic = summarize(conns)
            notified = traffic.get("notification", {}).get("requests", 0)
            fetched = traffic.get("fetch", {}).get("requests", 0)
            samples.update({c.kind: c.heads() for c in conns if c.kind not in samples})
            scenarios.append(
                {
                    "rate": rate,
                    "first_contact": number == 0,
                    "discovery_not_modified": sum(1 for c in conns if c.kind == "discovery" and c.status == 304),
                    "counts_confirmed": notified == len(recipients)
                    and fetched == len(readers_per_domain) == sum(fetch_counts.values())
                    and all(v == (1 if d in readers_per_domain else 0) for d, v in fetch_counts.items()),
                    "readers": len(readers),
                    "domains_with_readers": len(readers_per_domain),
                    "sender_counted_fetches": sum(fetch_counts.values()),
                    "domains_fetched_more_than_once": sum(1 for v in fetch_counts.values() if v > 1),
                    "recipients_accepted": accepted,
                    "canonical_body_bytes": size,
                    "traffic": traffic,
                    "gzip_coded_responses": {
                        kind: sum(1 for c in conns if c.kind == kind and c.content_coded)
                        for kind in ("notification", "fetch", "discovery")
                    },
                }
            )
            log(f"scenario {rate}% reading: {traffic}")
    finally:
        for inst in instances:
            inst.stop()
        proxies.close()
        if not args.keep:
            shutil.rmtree(base_dir, ignore_errors=True)

    smtp_subject = f"Bandwidth {args.size} bytes to {len(everyone)}, 100% reading"  # as long as Pushmail's
    smtp_message = build_message(
        sender=SENDER, subject=smtp_subject, text=text, message_id=SMTP_MESSAGE_ID, attachment=False
    )
    smtp_attachment = build_message(
        sender=SENDER, subject=smtp_subject, text=text, message_id=SMTP_MESSAGE_ID, attachment=True
    )
    smtp = {
        "text": {
            "per_recipient": smtp_cost(
                message=smtp_message, sender=SENDER, recipients_by_domain=recipients, per_recipient=True
            ),
            "per_domain": smtp_cost(
                message=smtp_message, sender=SENDER, recipients_by_domain=recipients, per_recipient=False
            ),
        },
        "attachment": {
            "per_recipient": smtp_cost(
                message=smtp_attachment, sender=SENDER, recipients_by_domain=recipients, per_recipient=True
            ),
            "per_domain": smtp_cost(
                message=smtp_attachment, sender=SENDER, recipients_by_domain=recipients, per_recipient=False
            ),
        },
    }
    for model, costs in smtp.items():
        emit(
            {
                "benchmark": "bandwidth",
                "smtp_model": model,
                "message_bytes": costs["per_domain"].message_bytes,
                **{
                    key: {"sessions": c.sessions, "transactions": c.transactions, "bytes": c.total}
                    for key, c in costs.items()
                },
            }
        )
    per_domain_smtp = smtp["text"]["per_domain"].total
    per_recipient_smtp = smtp["text"]["per_recipient"].total

    rows = []
    all_met = True
    for s in scenarios:
        traffic: dict[str, dict[str, int]] = s["traffic"]  # type: ignore[assignment]

        def total(*kinds: str, traffic: dict[str, dict[str, int]] = traffic) -> int:
            return sum(
                traffic.get(k, {}).get("request_bytes", 0) + traffic.get(k, {}).get("response_bytes", 0) for k in kinds
            )

        message_bytes = total("notification", "fetch")
        with_discovery = total("notification", "fetch", "discovery", "other")
        rate = int(s["rate"])  # type: ignore[arg-type]
        contact = "first contact" if s["first_contact"] else "known peers"
        limit = 0.05 if rate == 0 else 1.0
        met = with_discovery <= limit * per_domain_smtp
        all_met = all_met and met
        record = {
            "benchmark": "bandwidth",
            "read_rate_pct": rate,
            **s,
            "pushmail_bytes": {
                "notifications": total("notification"),
                "fetches": total("fetch"),
                "discovery": total("discovery"),
                "other": total("other"),
                "notifications_plus_fetches": message_bytes,
                "all": with_discovery,
            },
            "smtp_bytes": {
                "per_recipient": per_recipient_smtp,
                "per_domain": per_domain_smtp,
                "per_domain_attachment_model": smtp["attachment"]["per_domain"].total,
            },
            "ratio_all_to_smtp_per_domain": round(with_discovery / per_domain_smtp, 4),
            "ratio_all_to_smtp_per_recipient": round(with_discovery / per_recipient_smtp, 4),
            "ratio_without_discovery_to_smtp_per_domain": round(message_bytes / per_domain_smtp, 4),
            "ratio_all_to_smtp_per_domain_attachment_model": round(
                with_discovery / smtp["attachment"]["per_domain"].total, 4
            ),
            "http_compression": "gzip-coded responses (Content-Encoding) counted as sent; requests uncoded"
            if any(s["gzip_coded_responses"].values())  # type: ignore[union-attr]
            else "none",
            "target": "<= 5% of SMTP per domain" if rate == 0 else "<= SMTP per domain",
            "met": met,
        }
        emit(record)
        rows.append(
            [
                f"{rate}%",
                contact,
                s["readers"],
                traffic.get("notification", {}).get("requests", 0),
                traffic.get("fetch", {}).get("requests", 0),
                s["domains_with_readers"],
                f"{traffic.get('discovery', {}).get('requests', 0)} ({s['discovery_not_modified']} x 304)",
                f"{with_discovery:,}",
                f"{message_bytes:,}",
                f"{with_discovery / per_domain_smtp:.2%}",
                f"{with_discovery / per_recipient_smtp:.2%}",
                record["target"],
                "met" if met else "MISSED",
            ]
        )
    emit(
        {"benchmark": "bandwidth", "sample_heads": {k: {"request": v[0], "response": v[1]} for k, v in samples.items()}}
    )
    emit(
        {
            "benchmark": "bandwidth",
            "summary": True,
            "machine": info,
            "recipients": len(everyone),
            "domains": len(recipients),
            "mean_address_length": round(sum(map(len, everyone)) / len(everyone), 1),
            "all_targets_met": all_met,
        }
    )
    print(
        table(
            [
                "read",
                "peers",
                "readers",
                "notif.",
                "fetches",
                "domains w/ readers",
                "discovery",
                "HTTP bytes (all)",
                "notif.+fetch bytes",
                "vs SMTP/domain",
                "vs SMTP/recipient",
                "target",
                "",
            ],
            rows,
        )
    )
    text_model = smtp["text"]
    print(
        f"\nSMTP (text model, message {text_model['per_domain'].message_bytes:,} bytes): "
        f"per recipient {per_recipient_smtp:,} bytes, per domain {per_domain_smtp:,} bytes; "
        f"attachment model: per recipient {smtp['attachment']['per_recipient'].total:,}, "
        f"per domain {smtp['attachment']['per_domain'].total:,}. HTTP compression: "
        + ", ".join(f"{k} {v}" for k, v in (scenarios[-1]["gzip_coded_responses"] if scenarios else {}).items())  # type: ignore[union-attr]
        + " responses gzip-coded in the last scenario."
    )
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
