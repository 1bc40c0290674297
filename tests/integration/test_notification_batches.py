"""Notification batches between two real instances (docs/protocol.md §5.4.1).

alpha.test sends. beta.test takes batches; gamma.test advertises none
(PUSHMAIL_MAX_BATCH_NOTIFICATIONS=0). Mail piles up at alpha while a receiver's
web server is down; once it is back, what is due goes out together, and the
receiver's own access log says how many requests carried it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.cluster import Instance

from .conftest import Api, Cluster, mailboxes, start_cluster, unique, wait_for

BATCH_LINE = '"POST /federation/v1/notifications/batch HTTP'
SINGLE_LINE = '"POST /federation/v1/notifications HTTP'


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = start_cluster(
        tmp_path_factory.mktemp("batches"),
        {"bt_alpha": ["alpha.test"], "bt_beta": ["beta.test"], "bt_gamma": ["gamma.test"]},
        env={"bt_gamma": {"PUSHMAIL_MAX_BATCH_NOTIFICATIONS": "0"}},
    )
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def alpha(cluster: Cluster) -> Instance:
    return cluster["bt_alpha"]


@pytest.fixture(scope="module")
def beta(cluster: Cluster) -> Instance:
    return cluster["bt_beta"]


@pytest.fixture(scope="module")
def gamma(cluster: Cluster) -> Instance:
    return cluster["bt_gamma"]


def _web_log(inst: Instance) -> Path:
    return inst.data_dir / "web.log"


def _requests_since(inst: Instance, offset: int) -> tuple[int, int]:
    """(batch requests, single notification requests) in the instance's access log after ``offset``."""
    text = _web_log(inst).read_bytes()[offset:].decode(errors="replace")
    return text.count(BATCH_LINE), text.count(SINGLE_LINE)


def _pile_up_while_down(
    sender: Api, receiver: Instance, recipients: list[Api], count: int
) -> tuple[dict[str, str], int]:
    """Send ``count`` messages while ``receiver`` is down, each to one of ``recipients`` (round robin);
    bring it back once every delivery is waiting to be retried. Returns subject -> recipient address,
    and where the receiver's access log was at the restart."""
    domain = receiver.domains[0]
    # First contact while it is up: alpha knows the receiver's discovery document (and its limits).
    warm = unique("warm-")
    sent = sender.send(to=[recipients[0].address], subject=warm, text="first contact")
    wait_for(f"{warm} notified", lambda: sender.delivery(sent["id"], domain)["state"] == "notified")
    receiver.stop_web()
    try:
        subjects: dict[str, str] = {}
        ids = []
        for i in range(count):
            subject = unique(f"pile-{i}-")
            to = recipients[i % len(recipients)]
            ids.append(sender.send(to=[to.address], subject=subject, text=f"message {i}")["id"])
            subjects[subject] = to.address
        wait_for(
            f"every delivery to {domain} to be waiting for a retry",
            lambda: all(sender.delivery(i, domain)["state"] == "retrying" for i in ids),
            timeout=60,
        )
    finally:
        offset = _web_log(receiver).stat().st_size
        receiver.start_web()
    wait_for(
        f"every delivery to {domain} notified once it is back",
        lambda: all(sender.delivery(i, domain)["state"] == "notified" for i in ids),
        timeout=90,
    )
    return subjects, offset


def _each_got_each_once(recipients: list[Api], subjects: dict[str, str]) -> None:
    for recipient in recipients:
        wanted = sorted(s for s, to in subjects.items() if to == recipient.address)
        listed = sorted(e["subject"] for e in recipient.inbox() if e["subject"].startswith("pile-"))
        assert listed == wanted, recipient


def test_a_backlog_goes_out_in_batches_and_each_message_arrives_once(alpha: Instance, beta: Instance) -> None:
    (sender,) = mailboxes(alpha, 1)
    recipients = mailboxes(beta, 3)
    count = 12

    subjects, offset = _pile_up_while_down(sender, beta, recipients, count)

    _each_got_each_once(recipients, subjects)
    batches, singles = _requests_since(beta, offset)
    assert batches >= 1, (batches, singles)
    assert batches + singles < count, (batches, singles)


def test_a_peer_without_batches_gets_one_notification_per_request(alpha: Instance, gamma: Instance) -> None:
    (sender,) = mailboxes(alpha, 1)
    recipients = mailboxes(gamma, 2)
    count = 6

    subjects, offset = _pile_up_while_down(sender, gamma, recipients, count)

    _each_got_each_once(recipients, subjects)
    batches, singles = _requests_since(gamma, offset)
    assert batches == 0
    assert singles >= count
