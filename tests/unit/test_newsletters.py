"""Newsletters: the two federation endpoints (payloads, signatures, answers), both sides of a
subscription as a job row, an issue's one notification per domain, the Newsletters folder, and
the public page's Atom feed."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from typing import Any

import pytest
from django.test import Client

from accounts.models import User
from mailbox.models import Folder, InboxEntry
from newsletters import selectors, services
from newsletters.models import Newsletter, Subscriber, SubscriberState, Subscription, SubscriptionState
from outbox.models import Delivery
from outbox.services import deliver_notification
from tests.conftest import FakeNetwork, FakePeer, FederationClient, Queued
from tests.factories import MailboxFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]

SUBSCRIPTIONS = "/federation/v1/subscriptions"
LIST_NOTIFICATIONS = "/federation/v1/list-notifications"
ATOM = "{http://www.w3.org/2005/Atom}"
DIGEST = "sha-256:" + "a" * 64


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    data = response.json()
    assert data["error"] == code, data
    assert data["detail"]
    return data


def _subscription(**changes: Any) -> dict[str, Any]:
    payload = {
        "type": "subscription",
        "version": 1,
        "list": "news@alpha.test",
        "subscriber": "reader@peer.test",
        "state": "active",
        "requested_at": "2026-01-01T10:00:00Z",
    }
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not ...}


def _list_notification(**changes: Any) -> dict[str, Any]:
    payload = {
        "type": "list_notification",
        "version": 1,
        "id": "0b8a3c1e-5f0d-4e41-9a43-7d3c2b1a0f9e",
        "list": "news@peer.test",
        "list_name": "Peer News",
        "message_id": "<0b8a3c1e-5f0d-4e41-9a43-7d3c2b1a0f9e@peer.test>",
        "subject": "Issue 1",
        "date": "2026-01-01T10:00:00Z",
        "size": 321,
        "digest": DIGEST,
        "expires": "2099-01-01T10:00:00Z",
    }
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not ...}


@pytest.fixture
def newsletter(alice: User) -> Newsletter:
    return services.create_newsletter(
        owner=alice, address="news@alpha.test", name="Alpha News", description="Weekly.", slug="alpha-news"
    )


# --- POST {api}subscriptions: the list's side ---------------------------------------------


def test_a_signed_subscription_from_the_subscribers_domain_is_recorded(
    federation: FederationClient, peer: FakePeer, newsletter: Newsletter
) -> None:
    response = federation.post_json(SUBSCRIPTIONS, _subscription(), signer=peer)
    assert response.status_code == 200, response.content
    assert response.json() == {
        "list": "news@alpha.test",
        "subscriber": "reader@peer.test",
        "state": "active",
        "status": "recorded",
    }
    subscriber = Subscriber.objects.get()
    assert (subscriber.address, subscriber.domain, subscriber.state) == ("reader@peer.test", "peer.test", "active")


def test_an_unsigned_subscription_is_refused(federation: FederationClient, newsletter: Newsletter) -> None:
    response = federation.post_json(SUBSCRIPTIONS, _subscription(), signer=None)
    assert response.status_code == 401
    assert not Subscriber.objects.exists()


def test_a_subscription_signed_by_another_domain_is_refused(
    federation: FederationClient, other_peer: FakePeer, newsletter: Newsletter
) -> None:
    response = federation.post_json(SUBSCRIPTIONS, _subscription(), signer=other_peer)
    assert "reader@peer.test" in _error(response, 403, "wrong_domain")["detail"]
    assert not Subscriber.objects.exists()


def test_a_subscription_to_an_unknown_list_is_404(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    response = federation.post_json(SUBSCRIPTIONS, _subscription(list="nobody@alpha.test"), signer=peer)
    _error(response, 404, "unknown_list")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"type": "notification"}, "type"),
        ({"version": 2}, "version"),
        ({"list": ...}, "list"),
        ({"list": "not an address"}, "list"),
        ({"subscriber": ...}, "subscriber"),
        ({"subscriber": "a\r\n@peer.test"}, "subscriber"),
        ({"state": "maybe"}, "state"),
        ({"state": ...}, "state"),
        ({"requested_at": "yesterday"}, "requested_at"),
        ({"requested_at": "2999-01-01T00:00:00Z"}, "requested_at"),
    ],
)
def test_a_bad_subscription_is_400_naming_the_field(
    federation: FederationClient, peer: FakePeer, newsletter: Newsletter, changes: dict[str, Any], field: str
) -> None:
    response = federation.post_json(SUBSCRIPTIONS, _subscription(**changes), signer=peer)
    data = _error(response, 400, "invalid_payload")
    assert data["field"] == field
    assert not Subscriber.objects.exists()


def test_pause_and_unsubscribe_are_the_same_request_and_an_older_one_changes_nothing(
    federation: FederationClient, peer: FakePeer, newsletter: Newsletter
) -> None:
    federation.post_json(SUBSCRIPTIONS, _subscription(), signer=peer)
    paused = federation.post_json(
        SUBSCRIPTIONS, _subscription(state="paused", requested_at="2026-01-01T11:00:00Z"), signer=peer
    )
    assert paused.json()["state"] == "paused"
    left = federation.post_json(
        SUBSCRIPTIONS, _subscription(state="unsubscribed", requested_at="2026-01-01T12:00:00Z"), signer=peer
    )
    assert left.json()["state"] == "unsubscribed"
    late = federation.post_json(SUBSCRIPTIONS, _subscription(requested_at="2026-01-01T10:30:00Z"), signer=peer)
    assert late.json() == {**late.json(), "state": "unsubscribed", "status": "superseded"}
    assert Subscriber.objects.get().state == SubscriberState.UNSUBSCRIBED


# --- POST {api}list-notifications: the reader's side --------------------------------------


def _subscribed(user: User, state: str = SubscriptionState.ACTIVE) -> Subscription:
    return Subscription.objects.create(
        owner=user, list_address="news@peer.test", list_name="Peer News", state=state, requested_at="2026-01-01T10:00Z"
    )


def test_a_list_notification_reaches_only_the_subscribers_of_record_in_newsletters(
    federation: FederationClient, peer: FakePeer, alice: User, bob: User
) -> None:
    _subscribed(alice)
    _subscribed(bob, SubscriptionState.UNSUBSCRIBING)  # left: skipped whatever the list claims
    carol = MailboxFactory(domain=alice.domain, local_part="carol")
    _subscribed(carol, SubscriptionState.PAUSED)
    response = federation.post_json(LIST_NOTIFICATIONS, _list_notification(), signer=peer)
    assert response.status_code == 200, response.content
    assert response.json() == {
        "id": "0b8a3c1e-5f0d-4e41-9a43-7d3c2b1a0f9e",
        "list": "news@peer.test",
        "status": "accepted",
        "delivered": 1,
    }
    entry = InboxEntry.objects.get()
    assert (entry.owner, entry.folder, entry.sender, entry.sender_name) == (
        alice,
        Folder.NEWS,
        "news@peer.test",
        "Peer News",
    )
    assert entry.remote.list_id == "news@peer.test"
    assert Subscription.objects.get(owner=alice).last_issue_at is not None


def test_a_list_notification_for_a_list_nobody_here_receives_is_refused(
    federation: FederationClient, peer: FakePeer, alice: User
) -> None:
    _subscribed(alice, SubscriptionState.UNSUBSCRIBED)
    response = federation.post_json(LIST_NOTIFICATIONS, _list_notification(), signer=peer)
    _error(response, 403, "not_subscribed")
    assert not InboxEntry.objects.exists()


def test_a_list_notification_signed_by_another_domain_is_refused(
    federation: FederationClient, other_peer: FakePeer, alice: User
) -> None:
    _subscribed(alice)
    response = federation.post_json(LIST_NOTIFICATIONS, _list_notification(), signer=other_peer)
    _error(response, 403, "wrong_domain")
    assert not InboxEntry.objects.exists()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"recipients": ["alice@alpha.test"]}, "recipients"),
        ({"list": ...}, "list"),
        ({"id": "nope"}, "id"),
        ({"digest": "md5:x"}, "digest"),
        ({"size": -1}, "size"),
        ({"subject": "a\nb"}, "subject"),
        ({"list_name": " padded "}, "list_name"),
        ({"expires": ...}, "expires"),
    ],
)
def test_a_bad_list_notification_is_400_naming_the_field(
    federation: FederationClient, peer: FakePeer, alice: User, changes: dict[str, Any], field: str
) -> None:
    _subscribed(alice)
    response = federation.post_json(LIST_NOTIFICATIONS, _list_notification(**changes), signer=peer)
    assert _error(response, 400, "invalid_payload")["field"] == field
    assert not InboxEntry.objects.exists()


# --- The reader's subscription, a job row -------------------------------------------------


def test_subscribing_is_shown_done_only_once_the_list_acknowledges(
    alice: User, peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    peer.reply("POST", SUBSCRIPTIONS, 503, {"error": "server_error", "detail": "busy"}, {"Retry-After": "30"})
    with django_capture_on_commit_callbacks(execute=True):
        subscription = services.subscribe(user=alice, list_address="News@Peer.test", list_name="Peer News")
    assert [q.name for q in queued] == ["newsletters.send_subscription_request"]
    services.send_subscription_request(subscription.pk)
    subscription.refresh_from_db()
    assert subscription.state == SubscriptionState.PENDING  # not acknowledged: retried
    assert "503" in subscription.last_error
    sent = peer.calls_to("POST", SUBSCRIPTIONS)[0].json()
    assert (sent["list"], sent["subscriber"], sent["state"]) == ("news@peer.test", "alice@alpha.test", "active")

    peer.reply(
        "POST", SUBSCRIPTIONS, 200, {"list": "news@peer.test", "subscriber": "alice@alpha.test", "state": "active"}
    )
    Subscription.objects.filter(pk=subscription.pk).update(next_attempt_at="2000-01-01T00:00Z")
    services.send_subscription_request(subscription.pk)
    subscription.refresh_from_db()
    assert subscription.state == SubscriptionState.ACTIVE
    assert subscription.acknowledged_at is not None


def test_unsubscribing_stops_delivery_at_once_and_is_retried_until_acknowledged(
    alice: User, peer: FakePeer, federation: FederationClient, queued: list[Queued]
) -> None:
    subscription = _subscribed(alice)
    peer.go_down()
    services.unsubscribe(user=alice, subscription_id=subscription.pk)
    services.send_subscription_request(subscription.pk)
    subscription.refresh_from_db()
    assert subscription.state == SubscriptionState.UNSUBSCRIBING
    assert subscription.next_attempt_at is not None
    # Meanwhile the list sends an issue: refused here, nobody receives it.
    peer.come_back()
    _error(federation.post_json(LIST_NOTIFICATIONS, _list_notification(), signer=peer), 403, "not_subscribed")
    peer.reply("POST", SUBSCRIPTIONS, 200, {"state": "unsubscribed"})
    Subscription.objects.filter(pk=subscription.pk).update(next_attempt_at="2000-01-01T00:00Z")
    services.send_subscription_request(subscription.pk)
    subscription.refresh_from_db()
    assert subscription.state == SubscriptionState.UNSUBSCRIBED
    assert peer.calls_to("POST", SUBSCRIPTIONS)[-1].json()["state"] == "unsubscribed"


def test_a_subscription_to_an_unknown_list_is_refused_for_good(alice: User, peer: FakePeer) -> None:
    peer.reply("POST", SUBSCRIPTIONS, 404, {"error": "unknown_list", "detail": "no list news@peer.test here"})
    subscription = services.subscribe(user=alice, list_address="news@peer.test")
    services.send_subscription_request(subscription.pk)
    subscription.refresh_from_db()
    assert subscription.state == SubscriptionState.REFUSED
    assert "unknown_list" in subscription.last_error or "no list" in subscription.last_error


def test_another_users_subscription_is_not_reachable(alice: User, bob: User) -> None:
    subscription = _subscribed(alice)
    with pytest.raises(Subscription.DoesNotExist):
        services.unsubscribe(user=bob, subscription_id=subscription.pk)


# --- The list's side: one notification per subscriber domain ---------------------------------


def test_an_issue_is_one_list_notification_per_subscriber_domain_naming_no_recipient(
    newsletter: Newsletter, net: FakeNetwork, peer: FakePeer, other_peer: FakePeer
) -> None:
    for address in ("a@peer.test", "b@peer.test", "c@other.test"):
        Subscriber.objects.create(
            newsletter=newsletter,
            address=address,
            domain=address.split("@")[1],
            state="active",
            requested_at="2026-01-01T10:00Z",
        )
    Subscriber.objects.create(
        newsletter=newsletter,
        address="gone@third.test",
        domain="third.test",
        state="unsubscribed",
        requested_at="2026-01-01T10:00Z",
    )
    peer.reply("POST", LIST_NOTIFICATIONS, 200, {"status": "accepted", "delivered": 2})
    other_peer.reply("POST", LIST_NOTIFICATIONS, 200, {"status": "accepted", "delivered": 1})
    issue = services.publish_issue(newsletter=newsletter, subject="Issue 1", text="Hello, readers.")
    deliveries = list(Delivery.objects.filter(message=issue.message).order_by("domain"))
    assert [d.domain for d in deliveries] == ["other.test", "peer.test"]
    for delivery in deliveries:
        deliver_notification(delivery.pk)
    sent = peer.calls_to("POST", LIST_NOTIFICATIONS)
    assert len(sent) == 1
    payload = sent[0].json()
    assert "recipients" not in payload
    assert (payload["list"], payload["list_name"], payload["subject"]) == ("news@alpha.test", "Alpha News", "Issue 1")
    assert len(other_peer.calls_to("POST", LIST_NOTIFICATIONS)) == 1
    assert [d.delivered for d in Delivery.objects.filter(message=issue.message).order_by("domain")] == [1, 2]


def test_a_subscriber_domain_may_fetch_the_issue_body(
    newsletter: Newsletter, federation: FederationClient, peer: FakePeer, other_peer: FakePeer
) -> None:
    Subscriber.objects.create(
        newsletter=newsletter,
        address="a@peer.test",
        domain="peer.test",
        state="active",
        requested_at="2026-01-01T10:00Z",
    )
    issue = services.publish_issue(newsletter=newsletter, subject="Issue 1", text="Hello.")
    body = federation.fetch(peer, issue.message.id)
    assert body.status_code == 200
    assert json.loads(body.content)["from"] == "news@alpha.test"
    assert federation.fetch(other_peer, issue.message.id).status_code == 404


# --- Public page and feed -------------------------------------------------------------------


def test_the_atom_feed_parses_and_has_the_issues(newsletter: Newsletter) -> None:
    services.publish_issue(newsletter=newsletter, subject="First issue", text="One.")
    services.publish_issue(newsletter=newsletter, subject="Second <issue> & more", text="Two.")
    response = Client().get("/n/alpha-news/feed.atom")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/atom+xml")
    root = ET.fromstring(response.content)
    assert root.tag == f"{ATOM}feed"
    # RFC 4287 §4.1.1: a feed has an id, a title and an updated; so does every entry (§4.1.2).
    for required in ("id", "title", "updated"):
        assert root.find(f"{ATOM}{required}") is not None, required
    entries = root.findall(f"{ATOM}entry")
    assert sorted(e.findtext(f"{ATOM}title") for e in entries) == ["First issue", "Second <issue> & more"]
    for entry in entries:
        for required in ("id", "title", "updated"):
            assert entry.find(f"{ATOM}{required}") is not None, required
        assert entry.findtext(f"{ATOM}id", "").startswith("urn:uuid:")


def atom_problems(document: bytes) -> list[str]:
    """What in ``document`` breaks RFC 4287 (Atom 1.0): its MUSTs for a feed and its entries, the date
    and IRI forms, the text constructs; an empty list for a valid feed."""
    problems: list[str] = []
    root = ET.fromstring(document)
    if root.tag != f"{ATOM}feed":
        return [f"the root is {root.tag}, not atom:feed"]

    def date(where: str, value: str | None) -> None:
        # §3.3: an RFC 3339 date-time, with a time zone.
        if not value or not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value):
            problems.append(f"{where}: {value!r} is not an RFC 3339 date-time")

    def text(where: str, element: ET.Element) -> str:
        # §3.1: type text, html or xhtml; html is escaped markup that parses.
        kind = element.get("type", "text")
        if kind not in {"text", "html", "xhtml"}:
            problems.append(f"{where}: type {kind!r}")
        if kind != "html":
            return element.text or ""
        parser = _HtmlText()
        parser.feed(element.text or "")
        if parser.tags - {"p", "br"}:
            problems.append(f"{where}: markup {sorted(parser.tags - {'p', 'br'})} in a text")
        return parser.text

    def one(parent: ET.Element, name: str, where: str) -> ET.Element | None:
        found = parent.findall(f"{ATOM}{name}")
        if len(found) != 1:
            problems.append(f"{where}: {len(found)} atom:{name}, exactly one required")
        return found[0] if found else None

    def common(element: ET.Element, where: str) -> None:
        identity = one(element, "id", where)
        if identity is not None and not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:\S+$", identity.text or ""):
            problems.append(f"{where}: id {identity.text!r} is not an absolute IRI (§4.2.6)")
        title = one(element, "title", where)
        if title is not None:
            text(f"{where} title", title)
        updated = one(element, "updated", where)
        date(f"{where} updated", updated.text if updated is not None else None)
        for published in element.findall(f"{ATOM}published"):
            date(f"{where} published", published.text)
        alternates = [(link.get("type"), link.get("hreflang")) for link in element.findall(f"{ATOM}link")]
        alternates = [
            a
            for a, link in zip(alternates, element.findall(f"{ATOM}link"), strict=True)
            if link.get("rel", "alternate") == "alternate"
        ]
        if len(alternates) != len(set(alternates)):
            problems.append(f"{where}: two alternate links of the same type and language (§4.1.1)")
        for link in element.findall(f"{ATOM}link"):
            if not link.get("href"):
                problems.append(f"{where}: a link without href (§4.2.7)")
        for author in element.findall(f"{ATOM}author"):
            if author.find(f"{ATOM}name") is None:
                problems.append(f"{where}: an author without a name (§3.2)")

    common(root, "feed")
    if not any(link.get("rel") == "self" for link in root.findall(f"{ATOM}link")):
        problems.append("feed: no link rel=self (§4.1.1 SHOULD)")
    ids = []
    for n, entry in enumerate(root.findall(f"{ATOM}entry")):
        where = f"entry {n}"
        common(entry, where)
        ids.append(entry.findtext(f"{ATOM}id"))
        if root.find(f"{ATOM}author") is None and entry.find(f"{ATOM}author") is None:
            problems.append(f"{where}: no author, and the feed has none (§4.1.1)")
        if entry.find(f"{ATOM}content") is None and not any(
            link.get("rel", "alternate") == "alternate" for link in entry.findall(f"{ATOM}link")
        ):
            problems.append(f"{where}: neither content nor an alternate link (§4.1.2)")
        for summary in entry.findall(f"{ATOM}summary"):
            text(f"{where} summary", summary)
    if len(ids) != len(set(ids)):
        problems.append("two entries with the same id")
    return problems


class _HtmlText(HTMLParser):
    """The tags and the text of an HTML fragment."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)

    def handle_data(self, data: str) -> None:
        self.text += data


def test_the_atom_feed_validates_and_shows_an_issues_text_as_text(newsletter: Newsletter) -> None:
    services.publish_issue(newsletter=newsletter, subject="First issue", text="One.")
    services.publish_issue(
        newsletter=newsletter, subject="Maths & <markup>", text="If a < b then\n<script>alert(1)</script> & done."
    )
    document = Client().get("/n/alpha-news/feed.atom").content
    assert atom_problems(document) == []
    root = ET.fromstring(document)
    (entry,) = [e for e in root.findall(f"{ATOM}entry") if e.findtext(f"{ATOM}title") == "Maths & <markup>"]
    summary = _HtmlText()
    summary.feed(entry.findtext(f"{ATOM}summary") or "")
    # A reader shows exactly the text that was written, never runs it as markup.
    assert summary.text.replace("\n", "") == "If a < b then<script>alert(1)</script> & done."
    # The validator itself refuses what the RFC refuses.
    assert any("absolute IRI" in p for p in atom_problems(document.replace(b"<id>urn:uuid:", b"<id>", 1)))
    broken = document.replace(b"<updated>", b"<updated>yesterday ", 1)
    assert any("RFC 3339" in p for p in atom_problems(broken))
    assert any("exactly one required" in p for p in atom_problems(re.sub(rb"<title>[^<]*</title>", b"", document, 1)))


def test_the_public_page_shows_the_archive_and_sends_a_subscriber_to_their_own_instance(
    newsletter: Newsletter,
) -> None:
    services.publish_issue(newsletter=newsletter, subject="First issue", text="One.")
    client = Client()
    page = client.get("/n/alpha-news/")
    assert page.status_code == 200
    assert "First issue" in page.content.decode()
    response = client.post("/n/alpha-news/", {"address": "Reader@Peer.test"})
    assert response.status_code == 200
    target = "http://peer.test:9000/newsletters/subscribe/?list=news%40alpha.test&amp;name=Alpha+News"
    html = response.content.decode()
    assert f'<meta http-equiv="refresh" content="0;url={target}">' in html
    assert f'href="{target}"' in html
    bad = client.post("/n/alpha-news/", {"address": "not an address"})
    assert bad.status_code == 400
    assert client.get("/n/nothing-here/").status_code == 404


def test_a_list_is_only_on_its_owners_domain_and_never_a_mailbox(alice: User, bob: User) -> None:
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as taken:
        services.create_newsletter(owner=alice, address="bob@alpha.test", name="X", slug="x")
    assert "address" in taken.value.message_dict
    with pytest.raises(ValidationError) as elsewhere:
        services.create_newsletter(owner=alice, address="news@peer.test", name="X", slug="x")
    assert "address" in elsewhere.value.message_dict
    with pytest.raises(ValidationError) as slug:
        services.create_newsletter(owner=alice, address="news@alpha.test", name="X", slug="Not A Slug")
    assert "slug" in slug.value.message_dict


def test_the_subscription_graph_matches_the_documented_table() -> None:
    import re
    from pathlib import Path

    from newsletters.states import SUBSCRIPTION

    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    section = doc.split("### 13.5 Subscription states")[1].split("\n## ")[0]
    table = set(re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE))
    block = section.split("```")[1]
    edges = set(re.findall(r"^(\w+)\s+--.*?-+>\s+(\w+)", block, flags=re.MULTILINE))
    assert table == set(SUBSCRIPTION.values) == set(SubscriptionState.values)
    assert edges == SUBSCRIPTION.edge_set()
    assert selectors.STATE_LABELS.keys() == set(SubscriptionState.values)


# --- Webmail: the Newsletters folder, the button on every issue, the settings pages ---------------


def _web(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_an_issue_is_in_newsletters_not_the_inbox_and_has_a_one_click_unsubscribe(
    federation: FederationClient, peer: FakePeer, alice: User, queued: list[Queued]
) -> None:
    subscription = _subscribed(alice)
    federation.post_json(LIST_NOTIFICATIONS, _list_notification(subject="Weekly 7"), signer=peer)
    web = _web(alice)
    assert "Weekly 7" not in web.get("/mail/inbox/").content.decode()
    assert "Weekly 7" in web.get("/mail/news/").content.decode()
    entry = InboxEntry.objects.get(owner=alice)
    page = web.get(_entry_url(entry))
    html = page.content.decode()
    assert 'data-testid="issue-unsubscribe"' in html
    response = web.post(
        f"/settings/subscriptions/{subscription.pk}/", {"action": "unsubscribe", "next": _entry_url(entry)}
    )
    assert response.status_code == 302 and response["Location"] == _entry_url(entry)
    subscription.refresh_from_db()
    assert subscription.state == SubscriptionState.UNSUBSCRIBING
    assert "Unsubscribing" in web.get(_entry_url(entry)).content.decode()


def _entry_url(entry: InboxEntry) -> str:
    from django.urls import reverse

    return reverse("webmail:entry", args=[entry.pk])


def test_the_confirm_page_subscribes_only_after_the_reader_confirms(alice: User, queued: list[Queued]) -> None:
    web = _web(alice)
    page = web.get("/newsletters/subscribe/", {"list": "news@peer.test", "name": "Peer News"})
    assert page.status_code == 200
    assert "Peer News" in page.content.decode()
    assert not Subscription.objects.exists()
    response = web.post("/newsletters/subscribe/", {"list": "news@peer.test", "name": "Peer News"})
    assert response.status_code == 302
    subscription = Subscription.objects.get(owner=alice)
    assert (subscription.list_address, subscription.state) == ("news@peer.test", SubscriptionState.PENDING)
    listing = web.get("/settings/subscriptions/").content.decode()
    assert "Subscribing" in listing and "news@peer.test" in listing
    bad = web.post("/newsletters/subscribe/", {"list": "not an address"})
    assert bad.status_code == 400


def test_the_subscriptions_page_acts_only_on_the_users_own(alice: User, bob: User, queued: list[Queued]) -> None:
    subscription = _subscribed(alice)
    assert _web(bob).post(f"/settings/subscriptions/{subscription.pk}/", {"action": "pause"}).status_code == 404
    assert _web(alice).post(f"/settings/subscriptions/{subscription.pk}/", {"action": "pause"}).status_code == 302
    subscription.refresh_from_db()
    assert subscription.state == SubscriptionState.PAUSING


def test_a_user_creates_a_list_and_sends_an_issue_from_settings(alice: User, queued: list[Queued]) -> None:
    web = _web(alice)
    response = web.post(
        "/settings/newsletters/",
        {"local_part": "news", "name": "Alpha News", "slug": "alpha-news", "description": "Weekly."},
    )
    assert response.status_code == 302, response.content
    newsletter = Newsletter.objects.get()
    assert (newsletter.address, newsletter.owner) == ("news@alpha.test", alice)
    Subscriber.objects.create(
        newsletter=newsletter,
        address="a@peer.test",
        domain="peer.test",
        state="active",
        requested_at="2026-01-01T10:00Z",
    )
    sent = web.post(f"/settings/newsletters/{newsletter.pk}/", {"subject": "Issue 1", "text": "Hello."})
    assert sent.status_code == 302
    page = web.get(f"/settings/newsletters/{newsletter.pk}/").content.decode()
    assert "Issue 1" in page and "peer.test" in page
    taken = web.post("/settings/newsletters/", {"local_part": "alice", "name": "X", "slug": "x"})
    assert taken.status_code == 400


def test_subscribers_on_the_lists_own_instance_get_the_issue_in_newsletters(
    newsletter: Newsletter, bob: User, queued: list[Queued]
) -> None:
    subscription = services.subscribe(user=bob, list_address=newsletter.address, list_name=newsletter.name)
    services.send_subscription_request(subscription.pk)  # a list hosted here: no round trip
    subscription.refresh_from_db()
    assert subscription.state == SubscriptionState.ACTIVE
    assert Subscriber.objects.get(newsletter=newsletter).address == bob.email
    issue = services.publish_issue(newsletter=newsletter, subject="Local issue", text="Hi.")
    assert not Delivery.objects.filter(message=issue.message).exists()  # nothing travels
    entry = InboxEntry.objects.get(owner=bob)
    assert (entry.folder, entry.local_id) == (Folder.NEWS, issue.message.pk)
    html = _web(bob).get(_entry_url(entry)).content.decode()
    assert 'data-testid="issue-unsubscribe"' in html


def test_the_admin_shows_subscribers_per_domain_and_removes_one(newsletter: Newsletter) -> None:
    root = MailboxFactory(domain=newsletter.owner.domain, local_part="root", is_staff=True)
    User.objects.filter(pk=root.pk).update(is_superuser=True)
    admin_client = _web(root)
    for address in ("a@peer.test", "b@peer.test", "c@other.test"):
        Subscriber.objects.create(
            newsletter=newsletter,
            address=address,
            domain=address.split("@")[1],
            state="active",
            requested_at="2026-01-01T10:00Z",
        )
    page = admin_client.get(f"/admin/newsletters/newsletter/{newsletter.pk}/change/").content.decode()
    assert "peer.test: 2" in page and "other.test: 1" in page
    target = Subscriber.objects.get(address="a@peer.test")
    response = admin_client.post(
        "/admin/newsletters/subscriber/", {"action": "remove_subscribers", "_selected_action": [target.pk]}
    )
    assert response.status_code == 302
    target.refresh_from_db()
    assert target.state == SubscriberState.UNSUBSCRIBED
    assert selectors.subscriber_domains(newsletter=newsletter) == ["other.test", "peer.test"]
    assert selectors.subscriber_counts(newsletter=newsletter) == [("other.test", 1), ("peer.test", 1)]


def test_a_draft_written_to_ones_own_list_in_compose_goes_out_as_an_issue(
    newsletter: Newsletter, alice: User, bob: User, queued: list[Queued]
) -> None:
    from outbox import services as drafts
    from outbox.models import Recipient

    Subscriber.objects.create(
        newsletter=newsletter,
        address="a@peer.test",
        domain="peer.test",
        state="active",
        requested_at="2026-01-01T10:00Z",
    )
    draft = drafts.create_draft(owner=alice, to=newsletter.address, subject="From compose", text="Written as usual.")
    drafts.queue_send(draft=draft)
    type(draft).objects.filter(pk=draft.pk).update(send_at="2000-01-01T00:00Z")
    message = drafts.send_draft(draft.pk)
    assert message is not None
    assert message.list_address == newsletter.address
    assert message.issue.newsletter == newsletter
    assert not Recipient.objects.filter(message=message).exists()
    assert list(Delivery.objects.filter(message=message).values_list("domain", flat=True)) == ["peer.test"]
    # Someone else's draft to the list is ordinary mail (the list is no mailbox: refused there).
    other = drafts.create_draft(owner=bob, to=newsletter.address, subject="Hi", text="Hello.")
    drafts.queue_send(draft=other)
    type(other).objects.filter(pk=other.pk).update(send_at="2000-01-01T00:00Z")
    sent = drafts.send_draft(other.pk)
    assert sent is not None and not sent.list_address


def test_a_spam_report_on_an_issue_counts_against_the_lists_owner(
    newsletter: Newsletter, federation: FederationClient, peer: FakePeer, other_peer: FakePeer
) -> None:
    from outbox.models import Complaint

    Subscriber.objects.create(
        newsletter=newsletter,
        address="a@peer.test",
        domain="peer.test",
        state="active",
        requested_at="2026-01-01T10:00Z",
    )
    peer.reply("POST", LIST_NOTIFICATIONS, 200, {"status": "accepted", "delivered": 3})
    issue = services.publish_issue(newsletter=newsletter, subject="Issue 1", text="Hello.")
    deliver_notification(Delivery.objects.get(message=issue.message).pk)
    report = {
        "type": "report",
        "version": 1,
        "id": str(issue.message.id),
        "verdict": "spam",
        "reports": 5,
        "reported_at": "2026-01-01T10:00:00Z",
    }
    answer = federation.post_json("/federation/v1/reports", report, signer=peer)
    assert answer.status_code == 200, answer.content
    complaint = Complaint.objects.get()
    assert (complaint.sender, complaint.domain, complaint.weight) == (newsletter.owner, "peer.test", 3)
    # A domain the issue never went to may not report it.
    assert federation.post_json("/federation/v1/reports", report, signer=other_peer).status_code == 403


def _doc_fields(heading: str) -> set[str]:
    """The first-column field names of the request table under a §13 heading of docs/protocol.md."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    section = doc.split(heading, 1)[1].split("**Request body:**", 1)[1].split("**Processing.**", 1)[0]
    return set(re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE))


def test_golden_subscription_parses_round_trips_and_has_the_documented_fields() -> None:
    from datetime import UTC, datetime
    from pathlib import Path

    from federation import payloads

    data = json.loads((Path(__file__).resolve().parents[1] / "data" / "subscription.json").read_text())
    parsed = payloads.parse_subscription(data, latest=datetime(2027, 1, 1, tzinfo=UTC))
    assert parsed.to_json() == data
    assert set(data) == _doc_fields("### 13.2 `POST {api}subscriptions`")
    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    assert json.dumps(data, separators=(",", ":")) in doc  # the worked example's request body


def test_golden_list_notification_parses_round_trips_and_has_the_documented_fields() -> None:
    from pathlib import Path

    from federation import payloads

    data = json.loads((Path(__file__).resolve().parents[1] / "data" / "list_notification.json").read_text())
    parsed = payloads.parse_list_notification(data)
    assert parsed.to_json() == data
    assert set(data) | {"attachments"} == _doc_fields("### 13.3 `POST {api}list-notifications`")
    as_notification = parsed.for_recipients(["ann@beta.example"])
    assert (as_notification.sender, as_notification.sender_name) == ("news@alpha.example", "Alpha News")
    # The documented body is the one this issue announces: its digest and size, and what a reader checks.
    body = (Path(__file__).resolve().parents[1] / "data" / "list_issue_body.json").read_bytes()
    assert (payloads.digest(body), len(body)) == (parsed.digest, parsed.size)
    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    assert body.decode() in doc and json.dumps(data, separators=(",", ":"), ensure_ascii=False) in doc
    checked = payloads.check_body(body)
    assert payloads.body_mismatch(checked, {"id": data["id"], "from": data["list"], "subject": data["subject"]}) is None
