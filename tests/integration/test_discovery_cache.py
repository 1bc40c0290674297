"""Discovery costs nothing after first contact, across real instances (docs/protocol.md §2.6).

alpha.test sends to beta.test. Discovery requests are counted in each
instance's web access log (the requests its peer made for its document, by
the federation client's User-Agent). After first contact every process of
both instances is restarted, so only what the instances' shared caches hold
is left: a second message and its fetch then make no discovery request at all.
A key rotation is still picked up, by one refetch.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

import pytest

from federation.http import USER_AGENT
from tools.cluster import Instance

from .conftest import Api, Cluster, mailboxes, start_cluster, unique, wait_for

_DISCOVERY = re.compile(r'"GET /\.well-known/pushmail HTTP/1\.[01]" (\d{3}) ')


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = start_cluster(
        tmp_path_factory.mktemp("discovery-cache"), {"it_dc_alpha": ["alpha.test"], "it_dc_beta": ["beta.test"]}
    )
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def alpha(cluster: Cluster) -> Instance:
    return cluster["it_dc_alpha"]


@pytest.fixture(scope="module")
def beta(cluster: Cluster) -> Instance:
    return cluster["it_dc_beta"]


def discovery_requests(inst: Instance) -> Counter[str]:
    """The peers' requests for ``inst``'s discovery document so far, by status ("200", "304")."""
    counts: Counter[str] = Counter()
    for line in (inst.data_dir / "web.log").read_text(errors="replace").splitlines():
        match = _DISCOVERY.search(line)
        if match and USER_AGENT in line:
            counts[match.group(1)] += 1
    return counts


def deliver_and_read(sender: Api, reader: Api) -> None:
    """One message from ``sender`` to ``reader``, notified and then opened, so its body is fetched."""
    token = unique("word")
    subject = unique("subject-")
    message = sender.send(to=[reader.address], subject=subject, text=f"The word is {token}.")
    wait_for(f"delivery of {subject}", lambda: sender.delivery(message["id"], "beta.test")["state"] == "notified")
    entry = reader.entry_with_subject(subject)
    assert token in reader.read_until(entry["id"], "fetched")["body"]["text"]


def restart_every_process(*instances: Instance) -> None:
    """New web and worker processes: nothing is left of what the old ones held in memory."""
    for inst in instances:
        inst.kill_worker()
        inst.stop_web()
        inst.start()


def test_after_first_contact_a_message_costs_no_discovery_request(alpha: Instance, beta: Instance) -> None:
    (a,) = mailboxes(alpha, 1)
    (b,) = mailboxes(beta, 1)
    deliver_and_read(a, b)  # first contact: each side asks for the other's document
    first = {"alpha": discovery_requests(alpha), "beta": discovery_requests(beta)}
    assert first["beta"]["200"] >= 1, "alpha never asked for beta's document"
    assert first["alpha"]["200"] >= 1, "beta never asked for alpha's document"

    restart_every_process(alpha, beta)
    deliver_and_read(a, b)

    # Not even a conditional request: the documents are fresh in the shared caches.
    assert {"alpha": discovery_requests(alpha), "beta": discovery_requests(beta)} == first


def test_a_rotated_key_is_picked_up_with_one_refetch(alpha: Instance, beta: Instance) -> None:
    (a,) = mailboxes(alpha, 1)
    (b,) = mailboxes(beta, 1)
    deliver_and_read(a, b)
    before = discovery_requests(alpha)

    alpha.manage("rotatekey", "alpha.test")
    deliver_and_read(a, b)  # signed with alpha's new key: beta does not know it yet

    after = discovery_requests(alpha)
    assert after["200"] == before["200"] + 1, f"beta asked {after - before} for alpha's new document"
    assert after["304"] == before["304"]

    deliver_and_read(a, b)  # and every process of beta knows the new key now
    assert discovery_requests(alpha) == after
