"""``GET /metrics`` (Prometheus) and the admin's job queues: who may read them, and what they show.

The counters are read as a scraper reads them, from the page's text; these tests run in one
process, without PROMETHEUS_MULTIPROC_DIR (tests/integration/test_procfile.py scrapes a
web server, a worker and beat started from the Procfile, which add up their counts).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from accounts.models import Domain, User
from accounts.services import create_mailbox
from mailbox.models import RemoteMessage
from mailbox.services import accept_notification, fetch_body, open_entry
from outbox.models import Delivery, DeliveryState
from pushmail_site import metrics
from reputation import verdicts
from tests.conftest import NOTIFICATIONS, FakePeer, FederationClient, Queued
from tests.factories import PeerMessageFactory, SentMessageFactory

pytestmark = pytest.mark.django_db

TOKEN = "scrape-token-0123456789"  # noqa: S105 - test data


def scrape(client: Client | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the page, by name and labels."""
    response = (client or Client()).get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.content
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def token(settings: Any) -> str:
    settings.PUSHMAIL_METRICS_TOKEN = TOKEN
    settings.PUSHMAIL_METRICS_ALLOWED_NETWORKS = []
    return TOKEN


# --- Who may read the page ------------------------------------------------------------------


def test_without_token_or_networks_the_page_does_not_exist(settings: Any) -> None:
    settings.PUSHMAIL_METRICS_TOKEN = ""
    settings.PUSHMAIL_METRICS_ALLOWED_NETWORKS = []
    response = Client().get("/metrics", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 404
    assert "PUSHMAIL_METRICS_TOKEN" in response.json()["detail"]


def test_no_token_is_401_asking_for_one(token: str) -> None:
    response = Client().get("/metrics")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert "pushmail_jobs" not in response.content.decode()


@pytest.mark.parametrize("authorization", [f"Bearer {TOKEN}x", "Bearer wrong", f"Basic {TOKEN}", TOKEN])
def test_a_wrong_token_is_refused(token: str, authorization: str) -> None:
    response = Client().get("/metrics", headers={"Authorization": authorization})
    assert response.status_code in (401, 403)
    assert "pushmail_jobs" not in response.content.decode()


def test_the_right_token_gets_prometheus_text(token: str) -> None:
    response = Client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    text = response.content.decode()
    assert "# TYPE pushmail_jobs gauge" in text
    assert "# TYPE pushmail_notifications_received_total counter" in text


def test_an_allowed_network_needs_no_token(settings: Any) -> None:
    settings.PUSHMAIL_METRICS_TOKEN = ""
    settings.PUSHMAIL_METRICS_ALLOWED_NETWORKS = metrics_networks("10.0.0.0/8, 127.0.0.1/32")
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 200
    outside = Client(REMOTE_ADDR="192.0.2.7").get("/metrics")
    assert outside.status_code == 403
    assert "pushmail_jobs" not in outside.content.decode()


def test_with_both_set_either_is_enough(settings: Any) -> None:
    settings.PUSHMAIL_METRICS_TOKEN = TOKEN
    settings.PUSHMAIL_METRICS_ALLOWED_NETWORKS = metrics_networks("10.0.0.0/8")
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 200
    outside = Client(REMOTE_ADDR="192.0.2.7")
    assert outside.get("/metrics").status_code == 401
    assert outside.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_only_get(token: str) -> None:
    assert Client().post("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 405


def metrics_networks(value: str) -> list[Any]:
    from pushmail_site.settings import parse_networks

    return parse_networks("PUSHMAIL_METRICS_ALLOWED_NETWORKS", value)


def test_a_bad_network_is_named() -> None:
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="'10.0.0.300/8'"):
        metrics_networks("10.0.0.0/8,10.0.0.300/8")


# --- What it shows --------------------------------------------------------------------------


def test_notifications_received_and_refused_by_code(
    token: str, net: Any, federation: FederationClient, peer: FakePeer, alice: User
) -> None:
    before = scrape()

    assert (
        federation.notify(peer, PeerMessageFactory(to=[alice.email, "nobody@alpha.test"]).payload()).status_code == 200
    )
    wrong_domain = PeerMessageFactory(to=[alice.email], sender="mallory@elsewhere.test").payload()
    assert federation.notify(peer, wrong_domain).status_code == 403
    assert federation.post_json(NOTIFICATIONS, PeerMessageFactory().payload(), signer=None).status_code == 401

    after = scrape()
    assert (
        value(after, "pushmail_notifications_received_total") - value(before, "pushmail_notifications_received_total")
        == 1
    )

    def refused(code: str) -> float:
        name = "pushmail_notifications_refused_total"
        return value(after, name, code=code) - value(before, name, code=code)

    assert refused("wrong_domain") == 1 and refused("signature_missing") == 1

    def recipients(**labels: str) -> float:
        name = "pushmail_notification_recipients_total"
        return value(after, name, **labels) - value(before, name, **labels)

    assert recipients(status="accepted", reason="") == 1
    assert recipients(status="rejected", reason="unknown mailbox") == 1
    name = "pushmail_signature_failures_total"
    assert value(after, name, code="signature_missing") - value(before, name, code="signature_missing") == 1


def test_job_rows_by_state_and_the_oldest_due(token: str, alice: User, queued: list[Queued]) -> None:
    SentMessageFactory(sender=alice, to=["carol@peer.test"])
    SentMessageFactory(sender=alice, to=["dave@other.test"])
    delivery = Delivery.objects.order_by("pk").first()
    assert delivery is not None
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now() - timedelta(minutes=5))
    Delivery.objects.exclude(pk=delivery.pk).update(
        state=DeliveryState.FAILED, next_attempt_at=timezone.now() - timedelta(hours=5)
    )

    samples = scrape()

    assert value(samples, "pushmail_jobs", job="delivery", state="pending") == 1
    assert value(samples, "pushmail_jobs", job="delivery", state="failed") == 1
    assert ("pushmail_jobs", (("job", "delivery"), ("state", "notified"))) in samples  # zero, but shown
    assert value(samples, "pushmail_jobs_due", job="delivery") == 1
    # The failed row waits for nobody: the oldest due is the pending one, five minutes late.
    assert 300 <= value(samples, "pushmail_job_oldest_due_seconds", job="delivery") < 400
    assert value(samples, "pushmail_job_oldest_due_seconds", job="fetch") == 0
    jobs = {dict(labels)["job"] for name, labels in samples if name == "pushmail_job_oldest_due_seconds"}
    assert jobs == {table.name for table in metrics.JOB_TABLES}


def test_one_query_per_job_table(django_assert_num_queries: Any, alice: User, queued: list[Queued]) -> None:
    for _ in range(3):
        SentMessageFactory(sender=alice, to=["carol@peer.test", "dave@other.test"])
    with django_assert_num_queries(len(metrics.JOB_TABLES)):
        list(metrics.JobCollector().collect())


def test_fetch_time_is_observed(
    token: str, net: Any, peer: FakePeer, alice: User, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    message = PeerMessageFactory(to=[alice.email])
    peer.bodies[str(message.global_id)] = message.content()
    accept_notification(origin=peer.domain, notification=message.notification())
    remote = RemoteMessage.objects.get(global_id=message.global_id)
    before = scrape()

    with django_capture_on_commit_callbacks(execute=True):
        open_entry(entry=remote.entries.get(owner=alice))
    fetch_body(remote.pk)

    after = scrape()
    name = "pushmail_fetch_seconds_count"
    assert value(after, name, outcome="body") - value(before, name, outcome="body") == 1
    assert value(after, "pushmail_fetch_seconds_sum", outcome="body") > value(
        before, "pushmail_fetch_seconds_sum", outcome="body"
    )


def test_spam_verdicts_are_counted_once_committed(
    token: str, net: Any, peer: FakePeer, alice: User, django_capture_on_commit_callbacks: Any
) -> None:
    message = PeerMessageFactory(to=[alice.email])
    accept_notification(origin=peer.domain, notification=message.notification())
    remote = RemoteMessage.objects.get(global_id=message.global_id)
    before = scrape()

    with django_capture_on_commit_callbacks(execute=True):
        verdicts.reach_verdict(
            message_id=remote.pk, remote_ids=[remote.pk], reason="scored spam", reports=0, readers=0, judge="content"
        )

    after = scrape()
    name = "pushmail_spam_verdicts_total"
    assert value(after, name, judge="content") - value(before, name, judge="content") == 1


# --- The admin's page ------------------------------------------------------------------------


@pytest.fixture
def staff_client(local_domain: Domain) -> Client:
    staff = create_mailbox(address=f"root@{local_domain.name}", password="admin passphrase 123", is_staff=True)
    User.objects.filter(pk=staff.pk).update(is_superuser=True)
    client = Client()
    client.force_login(User.objects.get(pk=staff.pk))
    return client


def test_staff_see_each_job_by_state(staff_client: Client, alice: User, queued: list[Queued]) -> None:
    SentMessageFactory(sender=alice, to=["carol@peer.test"])
    Delivery.objects.update(next_attempt_at=timezone.now() - timedelta(minutes=2))

    index = staff_client.get(reverse("admin:index"))
    assert reverse("admin-job-queues") in index.content.decode()

    page = staff_client.get(reverse("admin-job-queues"))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-job="delivery"' in html and "pending: 1" in html
    for table in metrics.JOB_TABLES:
        assert f'data-job="{table.name}"' in html
    delivery_row = html.split('data-job="delivery"')[1].split("</tr>")[0]
    assert '<td class="job-due">1</td>' in delivery_row
    assert "s ago" in delivery_row


def test_non_staff_are_sent_to_the_admin_sign_in(alice: User) -> None:
    client = Client()
    client.force_login(alice)
    response = client.get(reverse("admin-job-queues"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    anonymous = Client().get(reverse("admin-job-queues"))
    assert anonymous.status_code == 302 and "pending" not in anonymous.content.decode()
