"""Newsletters across two real instances: alpha.test runs a list, beta.test's readers subscribe,
pause, receive issues and leave. beta also hosts gamma.test, a domain that is not the
subscribers', to forge a subscription with a real signature.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests

from tools.cluster import Instance

from .conftest import Api, Cluster, mailboxes, shell_json, sql, start_cluster, unique, wait_for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = start_cluster(
        tmp_path_factory.mktemp("newsletters"),
        {"nl_alpha": ["alpha.test"], "nl_beta": ["beta.test", "gamma.test"]},
    )
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def alpha(cluster: Cluster) -> Instance:
    return cluster["nl_alpha"]


@pytest.fixture(scope="module")
def beta(cluster: Cluster) -> Instance:
    return cluster["nl_beta"]


def new_list(alpha: Instance) -> str:
    """A fresh list on alpha, owned by a fresh mailbox; returns its address."""
    (owner,) = mailboxes(alpha, 1, prefix="owner")
    address = f"news-{unique()}@alpha.test"
    shell_json(
        alpha,
        "import json\n"
        "from accounts.models import User\n"
        "from newsletters import services\n"
        f"services.create_newsletter(owner=User.objects.get(email={owner.address!r}), address={address!r},"
        f" name='Alpha News', slug={address.split('@')[0]!r})\n"
        "print(json.dumps(True))\n",
    )
    return address


def act(beta: Instance, reader: Api, list_address: str, verb: str) -> None:
    """The reader's webmail action on beta (subscribe, pause, resume, unsubscribe), as its view calls it."""
    call = (
        f"services.subscribe(user=user, list_address={list_address!r}, list_name='Alpha News')"
        if verb == "subscribe"
        else f"services.{verb}(user=user, subscription_id=Subscription.objects.get(owner=user,"
        f" list_address={list_address!r}).pk)"
    )
    shell_json(
        beta,
        "import json\n"
        "from accounts.models import User\n"
        "from newsletters import services\n"
        "from newsletters.models import Subscription\n"
        f"user = User.objects.get(email={reader.address!r})\n"
        f"{call}\n"
        "print(json.dumps(True))\n",
    )


def reader_state(beta: Instance, reader: Api, list_address: str) -> str | None:
    rows = sql(
        beta,
        "SELECT s.state FROM newsletters_subscription s JOIN accounts_user u ON u.id = s.owner_id"
        f" WHERE u.email = '{reader.address}' AND s.list_address = '{list_address}'",
    )
    return rows[0][0] if rows else None


def list_state(alpha: Instance, reader: Api, list_address: str) -> str | None:
    rows = sql(
        alpha,
        "SELECT s.state FROM newsletters_subscriber s JOIN newsletters_newsletter n ON n.id = s.newsletter_id"
        f" WHERE s.address = '{reader.address}' AND n.address = '{list_address}'",
    )
    return rows[0][0] if rows else None


def settled(beta: Instance, alpha: Instance, reader: Api, list_address: str, state: str) -> None:
    """Wait until beta shows ``state`` as done (acknowledged) and alpha records the same."""
    wait_for(f"{reader.address} {state} at beta", lambda: reader_state(beta, reader, list_address) == state)
    assert list_state(alpha, reader, list_address) == state


def publish(alpha: Instance, list_address: str, subject: str) -> str:
    return shell_json(
        alpha,
        "import json\n"
        "from newsletters import services\n"
        "from newsletters.models import Newsletter\n"
        f"issue = services.publish_issue(newsletter=Newsletter.objects.get(address={list_address!r}),"
        f" subject={subject!r}, text='Hello, readers.')\n"
        "print(json.dumps(str(issue.message_id)))\n",
    )


def deliveries(alpha: Instance, message_id: str) -> list[tuple]:
    return sql(
        alpha,
        "SELECT domain, state, delivered, last_error FROM outbox_delivery"
        f" WHERE message_id = '{message_id.replace('-', '')}' OR CAST(message_id AS TEXT) = '{message_id}'"
        " ORDER BY domain",
    )


def in_newsletters(reader: Api, subject: str) -> list[dict]:
    return [e for e in reader.inbox() if e["subject"] == subject]


def test_subscribe_is_recorded_on_both_sides_only_once_acknowledged(alpha: Instance, beta: Instance) -> None:
    list_address = new_list(alpha)
    reader, other = mailboxes(beta, 2, prefix="reader")
    act(beta, reader, list_address, "subscribe")
    settled(beta, alpha, reader, list_address, "active")
    assert list_state(alpha, other, list_address) is None


def test_an_issue_reaches_only_subscribers_of_record_once_per_domain(alpha: Instance, beta: Instance) -> None:
    list_address = new_list(alpha)
    ann, bob, carol = mailboxes(beta, 3, prefix="reader")
    act(beta, ann, list_address, "subscribe")
    act(beta, bob, list_address, "subscribe")
    settled(beta, alpha, ann, list_address, "active")
    settled(beta, alpha, bob, list_address, "active")
    act(beta, bob, list_address, "pause")
    settled(beta, alpha, bob, list_address, "paused")
    # The list claims carol (who never asked): beta has no record of her, so she gets nothing.
    shell_json(
        alpha,
        "import json\n"
        "from django.utils import timezone\n"
        "from newsletters.models import Newsletter, Subscriber\n"
        f"Subscriber.objects.create(newsletter=Newsletter.objects.get(address={list_address!r}),"
        f" address={carol.address!r}, domain='beta.test', state='active', requested_at=timezone.now())\n"
        "print(json.dumps(True))\n",
    )
    subject = f"Issue {unique()}"
    message_id = publish(alpha, list_address, subject)
    wait_for("the issue's one delivery to be notified", lambda: deliveries(alpha, message_id)[0][1] == "notified")
    assert [(d[0], d[1], d[2]) for d in deliveries(alpha, message_id)] == [("beta.test", "notified", 1)]
    (entry,) = wait_for(f"{subject} at ann", lambda: in_newsletters(ann, subject))
    assert entry["folder"] == "news"
    assert in_newsletters(bob, subject) == [] and in_newsletters(carol, subject) == []
    body = ann.read_until(entry["id"], "fetched")
    assert body["body"]["text"] == "Hello, readers."
    assert body["body"]["from"] == list_address
    fetches = sql(
        alpha,
        "SELECT domain FROM outbox_bodyfetch b JOIN outbox_message m ON m.id = b.message_id"
        f" WHERE m.subject = '{subject}'",
    )
    assert fetches == [("beta.test",)]

    # Resume: bob gets the next issue.
    act(beta, bob, list_address, "resume")
    settled(beta, alpha, bob, list_address, "active")
    again = f"Issue {unique()}"
    publish(alpha, list_address, again)
    wait_for(f"{again} at bob", lambda: in_newsletters(bob, again))
    assert in_newsletters(carol, again) == []


def test_unsubscribe_then_an_issue_to_a_domain_with_no_subscribers_is_refused(alpha: Instance, beta: Instance) -> None:
    list_address = new_list(alpha)
    (reader,) = mailboxes(beta, 1, prefix="reader")
    act(beta, reader, list_address, "subscribe")
    settled(beta, alpha, reader, list_address, "active")
    act(beta, reader, list_address, "unsubscribe")
    settled(beta, alpha, reader, list_address, "unsubscribed")
    # The list sends anyway, as if it still had the reader: beta refuses it.
    shell_json(
        alpha,
        "import json\n"
        "from newsletters.models import Subscriber\n"
        f"Subscriber.objects.filter(address={reader.address!r}).update(state='active')\n"
        "print(json.dumps(True))\n",
    )
    subject = f"Issue {unique()}"
    message_id = publish(alpha, list_address, subject)
    wait_for("the refused delivery to fail", lambda: deliveries(alpha, message_id)[0][1] == "failed")
    (delivery,) = deliveries(alpha, message_id)
    assert "403" in delivery[3] and "subscribed" in delivery[3]
    assert in_newsletters(reader, subject) == []


def test_forged_subscriptions_are_refused(alpha: Instance, beta: Instance) -> None:
    list_address = new_list(alpha)
    (victim,) = mailboxes(beta, 1, prefix="victim")
    payload = {
        "type": "subscription",
        "version": 1,
        "list": list_address,
        "subscriber": victim.address,
        "state": "active",
        "requested_at": "2026-01-01T00:00:00Z",
    }
    unsigned = requests.post(f"{alpha.base_url}/federation/v1/subscriptions", json=payload, timeout=30)
    assert unsigned.status_code == 401, unsigned.text
    # Signed for real, but by gamma.test (hosted on beta): not the subscriber's domain.
    answer = shell_json(
        beta,
        "import json\n"
        "from federation import client, discovery\n"
        "instance = discovery.discover('alpha.test')\n"
        f"r = client._call('POST', instance.url('subscriptions'), as_domain='gamma.test', payload={payload!r},"
        " max_bytes=65536)\n"
        "print(json.dumps([r.status, r.json()]))\n",
    )
    assert answer[0] == 403 and answer[1]["error"] == "wrong_domain", answer
    # And to a list that does not exist, properly signed: 404.
    unknown = shell_json(
        beta,
        "import json\n"
        "from federation import client, discovery\n"
        "instance = discovery.discover('alpha.test')\n"
        f"r = client._call('POST', instance.url('subscriptions'), as_domain='beta.test',"
        f" payload={ {**payload, 'list': 'nobody@alpha.test'}!r}, max_bytes=65536)\n"
        "print(json.dumps([r.status, r.json()]))\n",
    )
    assert unknown[0] == 404 and unknown[1]["error"] == "unknown_list", unknown
    assert list_state(alpha, victim, list_address) is None
    assert (
        json.dumps(sql(alpha, "SELECT count(*) FROM newsletters_subscriber WHERE address LIKE 'victim-%'")) == "[[0]]"
    )


def test_an_unsubscribe_during_a_send_is_honoured_before_the_list_knows(alpha: Instance, beta: Instance) -> None:
    """bob leaves while beta cannot yet tell the list (its worker is down): the list still counts
    him and sends, and beta delivers to ann only. Once beta's worker is back, the list hears it."""
    list_address = new_list(alpha)
    ann, bob = mailboxes(beta, 2, prefix="reader")
    act(beta, ann, list_address, "subscribe")
    act(beta, bob, list_address, "subscribe")
    settled(beta, alpha, ann, list_address, "active")
    settled(beta, alpha, bob, list_address, "active")
    beta.kill_worker()
    try:
        act(beta, bob, list_address, "unsubscribe")
        assert reader_state(beta, bob, list_address) == "unsubscribing"
        assert list_state(alpha, bob, list_address) == "active"  # the list does not know yet
        subject = f"Issue {unique()}"
        message_id = publish(alpha, list_address, subject)
        wait_for("the issue's delivery to be notified", lambda: deliveries(alpha, message_id)[0][1] == "notified")
        assert [(d[0], d[2]) for d in deliveries(alpha, message_id)] == [("beta.test", 1)]
        assert len(in_newsletters(ann, subject)) == 1
        assert in_newsletters(bob, subject) == []
    finally:
        beta.start_worker()
    settled(beta, alpha, bob, list_address, "unsubscribed")
