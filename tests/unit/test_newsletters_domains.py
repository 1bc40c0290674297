"""A list notification names the subscriber domain it is for (docs/protocol.md §13.3), so an instance
hosting many subscriber domains delivers each of its one-per-domain requests to that domain's readers
only: what each request costs is what its own domain holds, whatever the instance's other domains hold."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import User
from mailbox.models import InboxEntry
from newsletters import selectors, services
from newsletters.models import Subscriber, Subscription, SubscriptionState
from outbox.models import Delivery
from outbox.services import deliver_notification
from tests.conftest import FakePeer, FederationClient
from tests.factories import DomainFactory, MailboxFactory
from tests.unit.test_newsletters import LIST_NOTIFICATIONS, _error, _list_notification

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]


def _subscribed(user: User) -> None:
    Subscription.objects.create(
        owner=user,
        list_address="news@peer.test",
        list_name="Peer News",
        state=SubscriptionState.ACTIVE,
        requested_at="2026-01-01T10:00Z",
    )


@pytest.fixture
def carol(db: None) -> User:
    """A reader at a second domain of this instance."""
    return MailboxFactory(domain=DomainFactory(name="second.test"), local_part="carol")


def test_a_list_notification_naming_a_domain_reaches_only_that_domains_subscribers(
    federation: FederationClient, peer: FakePeer, alice: User, bob: User, carol: User
) -> None:
    for user in (alice, bob, carol):
        _subscribed(user)
    response = federation.post_json(LIST_NOTIFICATIONS, _list_notification(domain="second.test"), signer=peer)
    assert response.status_code == 200, response.content
    assert response.json()["delivered"] == 1
    assert [e.owner for e in InboxEntry.objects.all()] == [carol]
    # The same issue for the instance's other domain then reaches alice and bob, once each.
    again = federation.post_json(LIST_NOTIFICATIONS, _list_notification(domain=alice.domain.name), signer=peer)
    assert again.json()["delivered"] == 2
    assert sorted(e.owner.email for e in InboxEntry.objects.all()) == sorted([alice.email, bob.email, carol.email])


def test_a_list_notification_without_a_domain_reaches_every_domain_here(
    federation: FederationClient, peer: FakePeer, alice: User, carol: User
) -> None:
    _subscribed(alice)
    _subscribed(carol)
    response = federation.post_json(LIST_NOTIFICATIONS, _list_notification(), signer=peer)
    assert response.json()["delivered"] == 2


def test_a_list_notification_for_a_domain_with_no_subscriber_here_is_refused(
    federation: FederationClient, peer: FakePeer, alice: User, carol: User
) -> None:
    _subscribed(alice)  # at the other domain: not a reader at second.test
    response = federation.post_json(LIST_NOTIFICATIONS, _list_notification(domain=carol.domain.name), signer=peer)
    _error(response, 403, "not_subscribed")
    unhosted = federation.post_json(LIST_NOTIFICATIONS, _list_notification(domain="elsewhere.test"), signer=peer)
    _error(unhosted, 403, "not_subscribed")
    assert not InboxEntry.objects.exists()


@pytest.mark.parametrize("domain", ["", "not a domain", 7, "a" * 300])
def test_a_malformed_domain_is_400_naming_it(
    federation: FederationClient, peer: FakePeer, alice: User, domain: object
) -> None:
    _subscribed(alice)
    response = federation.post_json(LIST_NOTIFICATIONS, _list_notification(domain=domain), signer=peer)
    assert _error(response, 400, "invalid_payload")["field"] == "domain"
    assert not InboxEntry.objects.exists()


def test_each_domains_list_notification_names_that_domain(alice: User, peer: FakePeer, other_peer: FakePeer) -> None:
    newsletter = services.create_newsletter(owner=alice, address="news@alpha.test", name="Alpha News", slug="alpha")
    for address in ("a@peer.test", "b@peer.test", "c@other.test"):
        Subscriber.objects.create(
            newsletter=newsletter,
            address=address,
            domain=address.split("@")[1],
            state="active",
            requested_at="2026-01-01T10:00Z",
        )
    peer.reply("POST", LIST_NOTIFICATIONS, 200, {"status": "accepted", "delivered": 2})
    other_peer.reply("POST", LIST_NOTIFICATIONS, 200, {"status": "accepted", "delivered": 1})
    issue = services.publish_issue(newsletter=newsletter, subject="Issue 1", text="Hello, readers.")
    for delivery in Delivery.objects.filter(message=issue.message):
        deliver_notification(delivery.pk)
    assert [c.json()["domain"] for c in peer.calls_to("POST", LIST_NOTIFICATIONS)] == ["peer.test"]
    assert [c.json()["domain"] for c in other_peer.calls_to("POST", LIST_NOTIFICATIONS)] == ["other.test"]


def test_an_issues_domains_are_read_once_each_from_the_database(alice: User) -> None:
    newsletter = services.create_newsletter(owner=alice, address="news@alpha.test", name="Alpha News", slug="alpha")
    Subscriber.objects.bulk_create(
        Subscriber(
            newsletter=newsletter,
            address=f"r{i}@{domain}",
            domain=domain,
            state="paused" if domain == "c.test" else "active",
            requested_at="2026-01-01T10:00Z",
        )
        for domain in ("b.test", "a.test", "c.test")
        for i in range(5)
    )
    with CaptureQueriesContext(connection) as queries:
        domains = selectors.subscriber_domains(newsletter=newsletter)
    assert domains == ["a.test", "b.test"]
    # One row per domain crosses from the database, not one per subscriber.
    (query,) = queries.captured_queries
    with connection.cursor() as cursor:
        cursor.execute(query["sql"])
        assert len(cursor.fetchall()) == 2
