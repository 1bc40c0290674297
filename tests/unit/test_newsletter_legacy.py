"""Newsletters for readers at ordinary mail domains: double opt-in by mail, each issue by SMTP with
List-Id / List-Unsubscribe / List-Unsubscribe-Post under the DKIM signature, the one-click POST;
and leaving a list counted against it by reputation.

aiosmtpd on loopback plays legacy.test's mail server (the fixtures of test_smtp_outbound); the
Postfix version is tests/integration/test_newsletter_smtp.py.
"""

# ruff: noqa: F811 - the fake MX fixtures are imported from test_smtp_outbound and named as parameters

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import User
from newsletters import legacy, selectors, services
from newsletters.models import Newsletter, Subscriber, SubscriberState, Subscription, SubscriptionState
from outbox.models import Delivery, DeliveryState, Message, Recipient, Transport
from reputation import scores
from reputation.models import OriginReputation, SenderReputation
from tests.unit.test_smtp_outbound import (  # noqa: F401 - the fake MX and its DNS, as fixtures
    LEGACY,
    FakeMx,
    _deliver,
    _dnsrecords,
    _parse,
    _published_dkim,
    _verifies,
    dns,
    mx,
    mx_server,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]


@pytest.fixture
def newsletter(alice: User) -> Newsletter:
    return services.create_newsletter(owner=alice, address="news@alpha.test", name="Alpha News", slug="alpha-news")


def _ask(address: str) -> Any:
    return Client().post("/n/alpha-news/", {"address": address})


def _confirmation_link(mx: FakeMx, address: str) -> str:
    """Send the confirmation mail (its delivery, by SMTP) and return the link it carries."""
    message = Message.objects.get(recipients__address=address, auto_submitted="auto-generated")
    _deliver(message, domain_of(address))
    (raw,) = [raw for _, rcpts, raw in mx.received if rcpts == [address]]
    text = _parse(raw).get_body(("plain",)).get_content()  # type: ignore[union-attr]
    (link,) = re.findall(r"https?://\S+/confirm/\S+/", text)
    return urlsplit(link).path


def domain_of(address: str) -> str:
    return address.rpartition("@")[2]


def _confirmed(mx: FakeMx, address: str) -> Subscriber:
    assert _ask(address).status_code == 200
    path = _confirmation_link(mx, address)
    assert Client().post(path).status_code == 200
    return Subscriber.objects.get(address=address)


def test_an_ordinary_address_is_subscribed_only_once_it_confirms_the_mailed_link(
    newsletter: Newsletter, mx: FakeMx
) -> None:
    reader = f"reader@{LEGACY}"
    page = _ask(reader)
    assert page.status_code == 200
    assert "Check your mail" in page.content.decode()
    subscriber = Subscriber.objects.get(address=reader)
    assert (subscriber.state, subscriber.legacy, subscriber.token) == (SubscriberState.CONFIRMING, True, None)
    assert selectors.subscribers_by_mail(newsletter=newsletter) == {}
    # Asking again at once mails nothing more: the form cannot flood an address.
    assert _ask(reader).status_code == 200
    assert Message.objects.filter(recipients__address=reader).count() == 1

    path = _confirmation_link(mx, reader)
    ((mail_from, _, raw),) = mx.received
    mail = _parse(raw)
    assert mail_from == "news@alpha.test" and mail["From"].addresses[0].addr_spec == "news@alpha.test"
    assert mail["Auto-Submitted"] == "auto-generated"
    assert _verifies(raw, _published_dkim(_dnsrecords("alpha.test")))

    shown = Client().get(path)  # a link checker fetching it subscribes nobody
    assert shown.status_code == 200 and 'data-testid="confirm-mail-subscribe"' in shown.content.decode()
    assert Subscriber.objects.get(address=reader).state == SubscriberState.CONFIRMING

    done = Client(enforce_csrf_checks=True).post(path)
    assert done.status_code == 200 and "Subscribed" in done.content.decode()
    subscriber.refresh_from_db()
    assert subscriber.state == SubscriberState.ACTIVE and subscriber.token and len(subscriber.token) >= 40
    assert selectors.subscribers_by_mail(newsletter=newsletter) == {LEGACY: [reader]}
    assert selectors.subscriber_domains(newsletter=newsletter) == []  # not a list notification
    # Confirming twice changes nothing; asking again once subscribed mails nothing.
    assert Client().post(path).status_code == 200
    assert _ask(reader).status_code == 200 and Message.objects.filter(recipients__address=reader).count() == 1


def test_a_forged_expired_or_foreign_confirmation_link_gets_a_clear_4xx(
    newsletter: Newsletter, mx: FakeMx, alice: User, settings: Any
) -> None:
    reader = f"reader@{LEGACY}"
    _ask(reader)
    path = _confirmation_link(mx, reader)
    token = path.rstrip("/").rsplit("/", 1)[1]

    forged = Client().post(path.replace(token, token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")))
    assert forged.status_code == 400 and "not valid" in forged.content.decode()
    made_up = Client().get("/n/alpha-news/confirm/nonsense/")
    assert made_up.status_code == 400
    services.create_newsletter(owner=alice, address="other@alpha.test", name="Other", slug="other")
    foreign = Client().post(f"/n/other/confirm/{token}/")
    assert foreign.status_code == 404 and "not for this list" in foreign.content.decode()

    settings.PUSHMAIL_LIST_CONFIRM_SECONDS = -1  # every link is past its age
    expired = Client().post(path)
    assert expired.status_code == 410 and "expired" in expired.content.decode()
    assert Subscriber.objects.get(address=reader).state == SubscriberState.CONFIRMING


def test_with_smtp_off_an_ordinary_address_cannot_subscribe(newsletter: Newsletter, settings: Any) -> None:
    settings.PUSHMAIL_SMTP_OUTBOUND = False
    answer = _ask(f"reader@{LEGACY}")
    assert answer.status_code == 400 and "no Pushmail instance" in answer.content.decode()
    assert not Subscriber.objects.exists()


def test_an_issue_goes_by_smtp_one_signed_copy_each_with_its_one_click_link(newsletter: Newsletter, mx: FakeMx) -> None:
    ann, bob = _confirmed(mx, f"ann@{LEGACY}"), _confirmed(mx, f"bob@{LEGACY}")
    mx.received.clear()

    issue = services.publish_issue(newsletter=newsletter, subject="Issue 1", text="Hello, readers.")
    delivery = Delivery.objects.get(message=issue.message, domain=LEGACY)
    assert delivery.transport == Transport.SMTP
    delivery = _deliver(issue.message)

    assert (delivery.state, delivery.delivered) == (DeliveryState.NOTIFIED, 2)
    assert sorted(rcpts[0] for _, rcpts, _ in mx.received) == [ann.address, bob.address]
    published = _published_dkim(_dnsrecords("alpha.test"))
    for mail_from, (rcpt,), raw in mx.received:
        mail = _parse(raw)
        subscriber = ann if rcpt == ann.address else bob
        assert mail_from == "news@alpha.test" and mail["To"] == "news@alpha.test"  # no subscriber sees another
        assert mail["List-Id"] == '"Alpha News" <news.alpha.test>'
        assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        url, mailto = re.findall(r"<([^>]+)>", mail["List-Unsubscribe"])
        assert url == f"http://testserver/n/alpha-news/unsubscribe/{subscriber.token}/" or url.endswith(
            f"/n/alpha-news/unsubscribe/{subscriber.token}/"
        )
        assert f"<{url}>".encode() in raw  # the link as it is, not an encoded word mail programs cannot follow
        assert mailto.startswith("mailto:news+unsubscribe@alpha.test?subject=")
        assert unquote(mailto.split("subject=")[1]) == f"unsubscribe {subscriber.token}"
        assert mail.get_body(("plain",)).get_content().strip() == "Hello, readers."  # type: ignore[union-attr]
        # RFC 8058 §4: the signature covers both list headers; altering one breaks it.
        signed = re.search(rb"h=([^;]+);", raw.replace(b"\r\n", b"").replace(b" ", b"").replace(b"\t", b""))
        assert signed is not None
        covered = signed.group(1).lower().split(b":")
        assert b"list-unsubscribe" in covered and b"list-unsubscribe-post" in covered and b"list-id" in covered
        assert _verifies(raw, published)
        assert not _verifies(raw.replace(subscriber.token.encode(), b"x" * len(subscriber.token), 1), published)
    # Both copies went over one session (one connection), a transaction each.
    assert Recipient.objects.filter(message=issue.message, status="accepted").count() == 2


def test_the_one_click_post_unsubscribes_at_once_without_sign_in_and_a_get_does_not(
    newsletter: Newsletter, mx: FakeMx
) -> None:
    subscriber = _confirmed(mx, f"ann@{LEGACY}")
    path = f"/n/alpha-news/unsubscribe/{subscriber.token}/"

    shown = Client().get(path)
    assert shown.status_code == 200 and 'data-testid="confirm-unsubscribe"' in shown.content.decode()
    assert Subscriber.objects.get(pk=subscriber.pk).state == SubscriberState.ACTIVE

    # As a mail program sends it (RFC 8058 §3.1): no cookie, no CSRF token.
    client = Client(enforce_csrf_checks=True)
    left = client.post(path, "List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded")
    assert left.status_code == 200 and "is unsubscribed" in left.content.decode()
    assert Subscriber.objects.get(pk=subscriber.pk).state == SubscriberState.UNSUBSCRIBED
    again = client.post(path, "List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded")
    assert again.status_code == 200
    # Counted against the list here, once, as a spam report would be.
    assert SenderReputation.objects.get(address="news@alpha.test").unsubscribes == 1

    assert Client().post("/n/alpha-news/unsubscribe/" + "x" * 43 + "/").status_code == 404
    assert Client().post(f"/n/other/unsubscribe/{subscriber.token}/").status_code == 404
    issue = services.publish_issue(newsletter=newsletter, subject="Issue 2", text="Two.")
    assert not Delivery.objects.filter(message=issue.message).exists()


def test_a_subscriber_who_leaves_between_publication_and_sending_is_not_sent_the_issue(
    newsletter: Newsletter, mx: FakeMx
) -> None:
    ann, bob = _confirmed(mx, f"ann@{LEGACY}"), _confirmed(mx, f"bob@{LEGACY}")
    mx.received.clear()
    issue = services.publish_issue(newsletter=newsletter, subject="Issue 1", text="Hello.")
    assert legacy.unsubscribe_by_token(slug="alpha-news", token=bob.token or "").state == "unsubscribed"

    delivery = _deliver(issue.message)

    assert (delivery.state, delivery.delivered) == (DeliveryState.NOTIFIED, 1)
    assert [rcpts for _, rcpts, _ in mx.received] == [[ann.address]]
    left = Recipient.objects.get(message=issue.message, address=bob.address)
    assert (left.status, left.reason) == ("rejected", "550 5.7.1 not sent: no longer subscribed to the list")
    assert not Message.objects.filter(subject__startswith="Undelivered").exists()


def test_leaving_a_remote_list_counts_against_it_and_its_domain_once(alice: User) -> None:
    subscription = Subscription.objects.create(
        owner=alice,
        list_address="news@peer.test",
        list_name="Peer News",
        state=SubscriptionState.ACTIVE,
        requested_at=timezone.now() - timedelta(days=1),
    )
    services.unsubscribe(user=alice, subscription_id=subscription.pk)
    services.unsubscribe(user=alice, subscription_id=subscription.pk)  # the same click twice counts once

    sender = SenderReputation.objects.get(address="news@peer.test")
    origin = OriginReputation.objects.get(domain="peer.test")
    assert (sender.unsubscribes, origin.unsubscribes) == (1, 1)
    assert sender.score < 0.5 and origin.score < 0.5  # below a sender with no history
    assert "1 readers who left its lists" in scores._why(sender, sender.score)


def test_a_mail_to_the_list_unsubscribe_mailto_unsubscribes_at_once(newsletter: Newsletter, mx: FakeMx) -> None:
    from email.message import EmailMessage

    from gateway import services as gateway

    subscriber = _confirmed(mx, f"ann@{LEGACY}")
    control = "news+unsubscribe@alpha.test"
    assert gateway.recipient_reply("News+Unsubscribe@alpha.test").code == 250  # taken at RCPT TO
    assert gateway.recipient_reply("news+other@alpha.test").code == 550
    assert gateway.recipient_reply("nolist+unsubscribe@alpha.test").code == 550

    def mail(subject: str) -> gateway.Reply:
        message = EmailMessage()
        message["From"] = subscriber.address
        message["To"] = control
        message["Subject"] = subject
        message.set_content("")
        envelope = gateway.Envelope(
            client_ip="127.0.0.1", helo="mx.legacy.test", mail_from=subscriber.address, recipients=[control]
        )
        return gateway.receive_message(envelope=envelope, raw=message.as_bytes().replace(b"\n", b"\r\n"))

    assert mail("unsubscribe " + "x" * 43).code == 250  # a token of nobody: nothing happens
    assert Subscriber.objects.get(pk=subscriber.pk).state == SubscriberState.ACTIVE
    # As the mailto's subject says (a mail program writes it as given), the token read as is.
    assert mail(f"unsubscribe {subscriber.token}").code == 250
    assert Subscriber.objects.get(pk=subscriber.pk).state == SubscriberState.UNSUBSCRIBED


def test_a_big_domains_copies_go_a_batch_per_attempt_the_next_due_at_once(
    newsletter: Newsletter, mx: FakeMx, settings: Any
) -> None:
    readers = [_confirmed(mx, f"{name}@{LEGACY}").address for name in ("ann", "bob", "carol")]
    mx.received.clear()
    settings.PUSHMAIL_LIST_SMTP_BATCH = 2
    issue = services.publish_issue(newsletter=newsletter, subject="Issue 1", text="Hello.")

    first = _deliver(issue.message)

    assert first.state == DeliveryState.PENDING and first.next_attempt_at is not None
    assert first.next_attempt_at <= timezone.now() and first.delivered == 2
    assert [rcpts[0] for _, rcpts, _ in mx.received] == readers[:2]
    second = _deliver(issue.message)
    assert (second.state, second.delivered) == (DeliveryState.NOTIFIED, 3)
    assert [rcpts[0] for _, rcpts, _ in mx.received] == readers
