"""A short soak (bench/soak.py has the long one): production-shaped instances lose nothing to faults.

alpha and beta each run two gunicorn web processes, three Celery workers and a separate beat,
on PostgreSQL with RabbitMQ as the broker (each instance a virtual host of its own) and Redis as
the shared cache. beta hosts three recipient domains. While a few hundred messages go from alpha
to one reader in each domain, one of alpha's workers gets SIGKILL (and is started again, as
systemd would), then the broker goes away for a few seconds and comes back. Every acknowledged
message must then be in each recipient's inbox exactly once, every delivery notified, and every
body a reader opened fetched.

The broker outage is scoped to this test's virtual hosts: their user may no longer open them and
their connections are closed (``tools.cluster.cut_vhost``), which is what a restart looks like to
the clients, while the machine's other users of the same RabbitMQ are not touched (a
``rabbitmqctl stop_app`` would stop theirs too). Their durable queues keep their messages, as over
a restart. Needs RabbitMQ on PUSHMAIL_TEST_AMQP (default amqp://guest:guest@127.0.0.1:5672) with
``rabbitmqctl`` on this host; skips without it, fails under CI=true.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tools.cluster import Backend, Instance, cut_vhost, grant_vhost, rabbitmqctl

from .conftest import Api, Cluster, _backend, _is_ci, mailboxes, sql, start_cluster, unique, wait_for

MESSAGES = 150
DOMAINS = ["beta.test", "gamma.test", "delta.test"]
OPENED = 15
OUTAGE_SECONDS = 6
RECOVERY_SECONDS = 180


def _broker_problem(url: str) -> str | None:
    if not shutil.which("rabbitmqctl"):
        return "rabbitmqctl is not installed (RabbitMQ's server package)"
    try:
        rabbitmqctl("status")
    except Exception as exc:
        return f"RabbitMQ is not running here: {exc}"
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        return f"RabbitMQ at {url} (PUSHMAIL_TEST_AMQP) is unreachable: {exc}"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    configured = _backend()
    if not configured.postgres:
        pytest.skip("the soak runs on PostgreSQL (PUSHMAIL_TEST_POSTGRES)")
    amqp = os.environ.get("PUSHMAIL_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672")
    problem = _broker_problem(amqp)
    if problem:
        if _is_ci():
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)
    backend = Backend(postgres=configured.postgres, redis=configured.redis, amqp=amqp, vhost_prefix="pushmail_it_")
    cluster = start_cluster(
        tmp_path_factory.mktemp("soak"),
        {"itsoak_alpha": ["alpha.test"], "itsoak_beta": DOMAINS},
        backend=backend,
        web_workers=2,
        celery_workers=3,
        worker_concurrency=2,
    )
    yield cluster
    cluster.stop()
    for inst in cluster.values():
        rabbitmqctl("delete_vhost", inst.vhost, check=False)


def count(inst: Instance, query: str) -> int:
    return int(sql(inst, query)[0][0])


def test_no_acknowledged_message_is_lost_or_doubled_through_a_worker_kill_and_a_broker_outage(
    cluster: Cluster,
) -> None:
    alpha, beta = cluster["itsoak_alpha"], cluster["itsoak_beta"]
    senders = mailboxes(alpha, 3)
    readers = [mailboxes(beta, 1, domain=domain)[0] for domain in DOMAINS]
    prefix = unique("soak-")
    like = f"subject LIKE '{prefix}-%'"
    ours = f"JOIN outbox_message m ON m.id = d.message_id WHERE m.{like}"
    notified = f"SELECT count(*) FROM outbox_delivery d {ours} AND d.state = 'notified'"

    accepted: list[str] = []
    refused: list[int] = []
    lock = threading.Lock()
    local = threading.local()

    def send(i: int) -> None:
        if not hasattr(local, "apis"):
            local.apis = [s.clone() for s in senders]
        api: Api = local.apis[i % len(senders)]
        response = api.session.post(
            api.url("messages/"),
            json={"to": [r.address for r in readers], "subject": f"{prefix}-{i:04d}", "text": f"Soak {i}."},
            timeout=60,
        )
        with lock:
            (accepted.append(response.json()["subject"]) if response.status_code == 201 else refused.append(i))

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(send, i) for i in range(MESSAGES)]

        # A third of the way: SIGKILL one of alpha's three workers, with deliveries under way.
        wait_for("a third of the deliveries", lambda: count(alpha, notified) >= MESSAGES, timeout=180, interval=0.1)
        alpha.kill_worker(index=1)
        alpha.start_worker(1)

        # Two thirds: the broker goes away for both instances, then comes back.
        wait_for("two thirds of the deliveries", lambda: count(alpha, notified) >= 2 * MESSAGES, timeout=180)
        for inst in (alpha, beta):
            cut_vhost(inst.vhost)
        time.sleep(OUTAGE_SECONDS)
        for inst in (alpha, beta):
            grant_vhost(inst.vhost)
        for future in futures:
            future.result(timeout=120)

    assert refused == []  # the API kept answering: sending needs the database, not the broker
    expected = len(accepted) * len(DOMAINS)
    wait_for(
        f"all {expected} deliveries after the faults",
        lambda: count(alpha, notified) == expected,
        timeout=RECOVERY_SECONDS,
        interval=0.5,
    )

    # Every acknowledged message reached each reader once: none lost, none doubled.
    for reader in readers:
        assert sorted(e["subject"] for e in reader.inbox()) == sorted(accepted)
    pairs = f"SELECT owner_id, subject FROM mailbox_inboxentry WHERE {like}"
    assert count(beta, f"SELECT count(*) FROM ({pairs}) AS e") == expected
    assert count(beta, f"SELECT count(*) FROM (SELECT DISTINCT * FROM ({pairs}) AS e) AS d") == expected
    states = dict(sql(alpha, f"SELECT d.state, count(*) FROM outbox_delivery d {ours} GROUP BY d.state"))
    assert states == {"notified": expected}

    # Bodies still come when opened after all that, once each.
    reader = readers[0]
    entries = [e for e in reader.inbox() if e["subject"].startswith(prefix)][:OPENED]
    for entry in entries:
        reader.open(entry["id"])
    for entry in entries:
        body = reader.read_until(entry["id"], "fetched", timeout=RECOVERY_SECONDS)
        assert body["subject"] == entry["subject"]
    fetched = f"SELECT count(*) FROM mailbox_remotemessage WHERE {like} AND state = 'fetched'"
    assert count(beta, fetched) == OPENED
