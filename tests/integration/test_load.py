"""Under load, a worker killed with SIGKILL (its whole process group) loses nothing.

Hundreds of messages go from alpha to beta; while deliveries (then fetches) are
in flight the worker's process group is killed and restarted. Every delivery
and fetch must still complete, exactly once per (message, recipient): the
backlog drains at the machine's pace, but it must never stall for longer than
a claim, the sweep's grace and a sweep allow, many times over.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from tools.cluster import Instance

from .conftest import Api, Cluster, mailboxes, shell_json, sql, start_cluster, unique, wait_for, wait_for_all

MESSAGES = 210
RECIPIENTS = 3
FETCHES = 200
# The longest the work may stand still after the restart: the cluster's claim (5 s), grace (2 s)
# and sweep (1 s) put a lost row back in the queue within seconds; this is many times that.
STALL_SECONDS = 60
KILL_AT = 0.15  # share of the work done when the worker is killed


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = start_cluster(
        tmp_path_factory.mktemp("load"), {"itload_alpha": ["alpha.test"], "itload_beta": ["beta.test"]}
    )
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def alpha(cluster: Cluster) -> Instance:
    return cluster["itload_alpha"]


@pytest.fixture(scope="module")
def beta(cluster: Cluster) -> Instance:
    return cluster["itload_beta"]


def count(inst: Instance, query: str) -> int:
    return int(sql(inst, query)[0][0])


def in_parallel(jobs: list[Callable[[], object]], workers: int = 4) -> tuple[ThreadPoolExecutor, list[Future]]:
    pool = ThreadPoolExecutor(workers)
    return pool, [pool.submit(job) for job in jobs]


def kill_in_flight(
    inst: Instance, *, progress: Callable[[], int], claimed: Callable[[], int], threshold: int, total: int
) -> None:
    """SIGKILL the worker's process group while it holds claimed rows, once ``progress`` reaches ``threshold``.

    ``claimed`` counts rows a task has claimed and not finished. A kill that falls
    between two tasks is tried again after a restart, so real work is always cut short.
    """
    for _ in range(5):
        wait_for(
            f"{inst.name}'s worker busy with {threshold} of {total} done",
            lambda: progress() >= threshold and claimed() > 0,
            timeout=90,
            interval=0.01,
        )
        inst.kill_worker()
        cut_short, done = claimed(), progress()
        print(f"killed {inst.name}'s worker with {done} of {total} done and {cut_short} cut short")
        if cut_short:
            assert done < total
            return
        inst.start_worker()
    raise AssertionError(f"never caught {inst.name}'s worker in the middle of a task")


def send_batch(sender: Api, readers: list[Api], count_: int, prefix: str) -> list[Callable[[], dict]]:
    local = threading.local()

    def job(i: int) -> Callable[[], dict]:
        def run() -> dict:
            if not hasattr(local, "api"):
                local.api = sender.clone()
            return local.api.send(to=[r.address for r in readers], subject=f"{prefix}-{i:03d}", text=f"Load {i}.")

        return run

    return [job(i) for i in range(count_)]


def test_deliveries_survive_sigkill_of_the_sender_worker(alpha: Instance, beta: Instance) -> None:
    (sender,) = mailboxes(alpha, 1)
    readers = mailboxes(beta, RECIPIENTS)
    prefix = unique("load-")
    # Every query is scoped to this test's messages by their subject prefix.
    ours = f"JOIN outbox_message m ON m.id = t.message_id WHERE m.subject LIKE '{prefix}-%'"
    notified = f"SELECT count(*) FROM outbox_delivery t {ours} AND t.state = 'notified' AND t.local = false"

    pool, futures = in_parallel(send_batch(sender, readers, MESSAGES, prefix))
    try:
        kill_in_flight(
            alpha,
            progress=lambda: count(alpha, notified),
            claimed=lambda: count(
                alpha, f"SELECT count(*) FROM outbox_delivery t {ours} AND t.state = 'pending' AND t.attempts > 0"
            ),
            threshold=int(MESSAGES * KILL_AT),
            total=MESSAGES,
        )
        messages = [f.result(timeout=120) for f in futures]
    finally:
        pool.shutdown(wait=True)
        alpha.start_worker()
    restarted = time.monotonic()

    wait_for_all("deliveries after the restart", lambda: count(alpha, notified), MESSAGES, stall=STALL_SECONDS)
    print(f"all {MESSAGES} delivered {time.monotonic() - restarted:.1f}s after the restart")

    states = dict(sql(alpha, f"SELECT t.status, count(*) FROM outbox_recipient t {ours} GROUP BY t.status"))
    assert states == {"accepted": MESSAGES * RECIPIENTS}
    like = f"subject LIKE '{prefix}-%'"
    assert count(beta, f"SELECT count(*) FROM mailbox_remotemessage WHERE {like}") == MESSAGES
    entries = f"SELECT owner_id, remote_id FROM mailbox_inboxentry WHERE remote_id IS NOT NULL AND {like}"
    assert count(beta, f"SELECT count(*) FROM ({entries}) AS e") == MESSAGES * RECIPIENTS
    assert (
        count(beta, f"SELECT count(*) FROM (SELECT DISTINCT * FROM ({entries}) AS e) AS pairs") == MESSAGES * RECIPIENTS
    )
    # What each reader sees: every message exactly once.
    expected = sorted(m["subject"] for m in messages)
    for reader in readers:
        assert sorted(e["subject"] for e in reader.inbox()) == expected


def test_fetches_survive_sigkill_of_the_recipient_worker(alpha: Instance, beta: Instance) -> None:
    (sender,) = mailboxes(alpha, 1)
    (reader,) = mailboxes(beta, 1)
    prefix = unique("open-")
    started = time.monotonic()
    pool, futures = in_parallel(send_batch(sender, [reader], FETCHES, prefix))
    with pool:
        messages = [f.result(timeout=120) for f in futures]
    ids = [m["id"] for m in messages]
    ours = f"SELECT count(*) FROM mailbox_remotemessage WHERE subject LIKE '{prefix}-%'"
    wait_for_all("notifications at beta", lambda: count(beta, ours), FETCHES, stall=STALL_SECONDS)
    entries = [e for e in reader.inbox() if e["subject"].startswith(prefix)]
    assert len(entries) == FETCHES
    fetched_query = f"{ours} AND state = 'fetched'"

    local = threading.local()

    def opener(entry_id: int) -> Callable[[], object]:
        def run() -> object:
            if not hasattr(local, "api"):
                local.api = reader.clone()
            return local.api.open(entry_id)

        return run

    print(f"{FETCHES} notified at beta after {time.monotonic() - started:.1f}s")
    pool, futures = in_parallel([opener(e["id"]) for e in entries])
    try:
        kill_in_flight(
            beta,
            progress=lambda: count(beta, fetched_query),
            claimed=lambda: count(beta, f"{ours} AND state = 'fetching' AND attempts > 0"),
            threshold=int(FETCHES * KILL_AT),
            total=FETCHES,
        )
        opened = [f.result(timeout=120) for f in futures]
    finally:
        pool.shutdown(wait=True)
        beta.start_worker()
    assert all(status in (200, 202) for status, _data in opened)

    restarted = time.monotonic()
    wait_for_all("bodies fetched after the restart", lambda: count(beta, fetched_query), FETCHES, stall=STALL_SECONDS)
    print(f"all {FETCHES} fetched {time.monotonic() - restarted:.1f}s after the restart")
    assert {e["state"] for e in reader.inbox()} == {"fetched"}
    for entry in entries[:: FETCHES // 10]:  # spot-check that readers get the bodies
        status, data = reader.open(entry["id"])
        assert status == 200 and data["body"]["text"].startswith("Load ")

    # One stored body per message; alpha served each at least once, and only a
    # fetch cut short by the kill (one per pool process) may have been served twice.
    served = shell_json(
        alpha,
        "import json\nfrom django.db.models import Count\nfrom outbox.models import BodyFetch\n"
        f"rows = BodyFetch.objects.filter(message_id__in={ids!r}, domain='beta.test')\n"
        "print(json.dumps(list(rows.values('message_id').annotate(n=Count('id')).values_list('n', flat=True))))",
    )
    assert len(served) == FETCHES
    assert sum(served) <= FETCHES + beta.worker_concurrency
    assert count(beta, f"{ours} AND state = 'fetched' AND content IS NOT NULL") == FETCHES
