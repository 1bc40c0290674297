"""The progressive step, receiving side: an authenticated ``Pushmail`` header makes replies go over the API.

A message received by SMTP through the real gateway (aiosmtpd, DKIM and SPF
checked against the test DNS server) names its sending domain in a
``Pushmail`` header; only with an aligned SPF or DKIM pass, and only once
discovery of that domain (a fake peer here) returns a valid document, does a
reply to it go as a signed notification, even where the domain was cached as
legacy before.
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import caches
from django.test import Client
from django.urls import reverse

from accounts.models import User
from federation import discovery
from federation.learning import check_learned_domain, heard_pushmail_header, requeue_due_learned_domains
from federation.models import LearnedDomain, LearnedDomainState
from federation.states import LEARNED
from gateway import filing, progressive
from gateway.auth import AuthResults, DkimResult, DmarcResult
from gateway.server import ClientLimits, GatewayController
from outbox.models import Delivery, DeliveryState, Recipient
from outbox.services import deliver_notification, send_message
from tests.conftest import NOTIFICATIONS, FakeNetwork, FakePeer, Queued, ago, broker_lost
from tests.factories import DomainFactory, MailboxFactory
from tests.smtp_support import Zone, dkim_key, dkim_sign, dns_server, free_port
from tests.unit.test_outbox_states import TRANSITION

pytestmark = pytest.mark.django_db(transaction=True)

HOSTED = "alpha.test"
BOB = f"bob@{HOSTED}"
ANN = "ann@peer.test"


@pytest.fixture(scope="module")
def dns() -> Iterator[tuple[Zone, str]]:
    with dns_server() as running:
        yield running


@pytest.fixture
def zone(dns: tuple[Zone, str], settings: Any) -> Iterator[Zone]:
    found, address = dns
    settings.PUSHMAIL_DNS_RESOLVER = address
    settings.PUSHMAIL_DNS_TIMEOUT = 2.0
    settings.PUSHMAIL_SMTP_HOSTNAME = "mx.alpha.test"
    found.clear()
    yield found
    found.clear()


@pytest.fixture
def bob(zone: Zone) -> User:
    return MailboxFactory(domain=DomainFactory(name=HOSTED), local_part="bob")


@pytest.fixture
def gateway(bob: User, net: FakeNetwork) -> Iterator[GatewayController]:
    controller = GatewayController(
        host="127.0.0.1", port=free_port(), limits=ClientLimits(max_connections=20, per_minute=600), filing=False
    )
    controller.start()
    yield controller
    controller.stop()


@pytest.fixture
def shared_cache() -> Iterator[None]:
    caches["default"].clear()
    yield
    caches["default"].clear()


def _message(*, sender: str = ANN, header: str | None = "peer.test", subject: str = "Lunch?") -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Ann <{sender}>"
    msg["To"] = BOB
    msg["Subject"] = subject
    msg["Date"] = "Thu, 03 Dec 2026 10:00:00 +0000"
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@{sender.rpartition('@')[2]}>"
    if header is not None:
        msg["Pushmail"] = header
    msg.set_content("Shall we have lunch on Friday?\n")
    return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _signed(zone: Zone, raw: bytes, *, domain: str = "peer.test") -> bytes:
    private, public = dkim_key()
    zone.add(f"mail._domainkey.{domain}", "TXT", public)
    return dkim_sign(raw, domain=domain, selector="mail", private_key=private)


def _send(gateway: GatewayController, raw: bytes, *, mail_from: str = ANN) -> int:
    with smtplib.SMTP("127.0.0.1", gateway.port, local_hostname="mail.peer.test", timeout=30) as client:
        client.ehlo()
        assert client.mail(mail_from)[0] == 250
        assert client.rcpt(BOB)[0] == 250
        code, _ = client.data(raw)
    filing.file_due()  # what the gateway's filing loop does, here in the test's thread
    return code


def _cached_as_legacy(peer: FakePeer) -> None:
    """The peer once answered discovery without listing its domain: this instance cached it as legacy."""
    peer.document_override = {"protocol": "pushmail", "version": 1, "domains": [], "api": peer.base + "/"}
    assert discovery.discover(peer.domain) is None
    peer.document_override = None


def _reply(bob: User) -> Delivery:
    message = send_message(sender=bob, to=[ANN], subject="Re: Lunch?", text="Friday it is.")
    delivery = Delivery.objects.get(message=message, domain="peer.test")
    deliver_notification(delivery.pk)
    delivery.refresh_from_db()
    return delivery


def test_an_authenticated_header_makes_the_reply_go_over_the_api_where_legacy_was_cached(
    gateway: GatewayController, zone: Zone, bob: User, peer: FakePeer, shared_cache: None, queued: list[Queued]
) -> None:
    _cached_as_legacy(peer)
    assert _send(gateway, _signed(zone, _message())) == 250
    learned = LearnedDomain.objects.get()
    assert (learned.domain, learned.state, learned.heard_from) == ("peer.test", LearnedDomainState.PENDING, ANN)
    assert learned.authenticated_by == "dkim=pass header.d=peer.test header.s=mail"
    assert Queued("federation.check_learned_domain", (learned.pk,), None) in queued

    check_learned_domain(learned.pk)  # what the worker runs
    learned.refresh_from_db()
    assert learned.state == LearnedDomainState.CONFIRMED and learned.confirmed_at is not None

    delivery = _reply(bob)
    assert delivery.state == DeliveryState.NOTIFIED
    [notification] = peer.calls_to("POST", NOTIFICATIONS)
    assert notification.json()["recipients"] == [ANN]
    assert Recipient.objects.get(message=delivery.message).status == "accepted"


def test_without_the_header_the_cached_legacy_answer_stands(
    gateway: GatewayController, zone: Zone, bob: User, peer: FakePeer, shared_cache: None
) -> None:
    _cached_as_legacy(peer)
    assert _send(gateway, _signed(zone, _message(header=None))) == 250
    assert not LearnedDomain.objects.exists()
    delivery = _reply(bob)
    assert (delivery.state, delivery.last_error) == (DeliveryState.FAILED, "legacy domain")
    assert not peer.calls_to("POST", NOTIFICATIONS)


@pytest.mark.parametrize(
    "signer, spf",
    [(None, None), ("other.test", None), (None, "v=spf1 ip4:192.0.2.9 -all")],
    ids=["unsigned-no-spf", "signed-by-another-domain", "spf-fail"],
)
def test_an_unauthenticated_header_is_ignored(
    gateway: GatewayController, zone: Zone, peer: FakePeer, signer: str | None, spf: str | None
) -> None:
    if spf:
        zone.add("peer.test", "TXT", spf)
    raw = _message()
    if signer:
        raw = _signed(zone, raw, domain=signer)
    assert _send(gateway, raw) == 250  # the message itself is delivered as any other
    assert not LearnedDomain.objects.exists()
    assert peer.discovery_calls == 0  # the header alone does not even make this instance ask


def test_an_spf_pass_for_the_domain_vouches_for_the_header(
    gateway: GatewayController, zone: Zone, peer: FakePeer
) -> None:
    zone.add("peer.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    assert _send(gateway, _message()) == 250
    assert LearnedDomain.objects.get().authenticated_by == "spf=pass smtp.mailfrom domain peer.test"


def test_a_domain_whose_discovery_says_legacy_is_not_believed(
    gateway: GatewayController, zone: Zone, bob: User, peer: FakePeer, shared_cache: None
) -> None:
    peer.document_override = {"protocol": "something-else"}
    assert _send(gateway, _signed(zone, _message())) == 250
    learned = LearnedDomain.objects.get()
    check_learned_domain(learned.pk)
    learned.refresh_from_db()
    assert learned.state == LearnedDomainState.NOT_PUSHMAIL
    assert learned.last_error == "discovery found no Pushmail instance"
    assert _reply(bob).state == DeliveryState.FAILED
    assert not peer.calls_to("POST", NOTIFICATIONS)


def test_discovery_that_does_not_answer_is_retried_then_confirmed(
    bob: User, peer: FakePeer, shared_cache: None, queued: list[Queued]
) -> None:
    learned = heard_pushmail_header(domain="peer.test", sender=ANN, authenticated_by="dkim=pass header.d=peer.test")
    assert learned is not None
    peer.go_down()
    check_learned_domain(learned.pk)
    learned.refresh_from_db()
    assert learned.state == LearnedDomainState.PENDING and "connection refused" in learned.last_error
    assert learned.next_attempt_at is not None
    peer.come_back()
    type(learned).objects.filter(pk=learned.pk).update(next_attempt_at=ago(seconds=60))
    broker_lost(queued)  # the retry's broker message is gone: the sweep queues the check again
    assert requeue_due_learned_domains() == 1
    check_learned_domain(learned.pk)
    learned.refresh_from_db()
    assert learned.state == LearnedDomainState.CONFIRMED


def test_a_process_that_cached_legacy_asks_again_once_another_confirmed(
    bob: User, peer: FakePeer, shared_cache: None
) -> None:
    _cached_as_legacy(peer)
    legacy_answer = caches["local"].get("pm-discovery:peer.test")
    learned = heard_pushmail_header(domain="peer.test", sender=ANN, authenticated_by="dkim=pass header.d=peer.test")
    assert learned is not None
    check_learned_domain(learned.pk)
    # Another process (a worker) still holds its legacy answer: only the shared cache tells it.
    caches["local"].clear()
    caches["local"].set("pm-discovery:peer.test", legacy_answer, 300)
    calls = peer.discovery_calls
    assert discovery.discover("peer.test") is not None
    assert discovery.discover("peer.test") is not None
    # The confirmed document is in the shared cache already: the worker takes it from there.
    assert peer.discovery_calls == calls


def test_hearing_again_soon_does_not_ask_again_but_later_does(bob: User, peer: FakePeer, shared_cache: None) -> None:
    first = heard_pushmail_header(domain="peer.test", sender=ANN, authenticated_by="dkim=pass header.d=peer.test")
    assert first is not None
    check_learned_domain(first.pk)
    again = heard_pushmail_header(domain="PEER.test", sender="joe@peer.test", authenticated_by="spf=pass")
    assert again is not None
    assert (again.state, again.times_heard, again.heard_from) == (LearnedDomainState.CONFIRMED, 2, "joe@peer.test")
    LearnedDomain.objects.filter(pk=first.pk).update(checked_at=ago(seconds=301))
    later = heard_pushmail_header(domain="peer.test", sender=ANN, authenticated_by="dkim=pass header.d=peer.test")
    assert later is not None and later.state == LearnedDomainState.PENDING


def test_a_header_naming_a_domain_hosted_here_is_ignored(bob: User) -> None:
    assert heard_pushmail_header(domain=HOSTED, sender=BOB, authenticated_by="dkim=pass") is None
    assert not LearnedDomain.objects.exists()


@pytest.mark.parametrize(
    "headers, expected",
    [
        (b"Pushmail: beta.example\r\n", "beta.example"),
        (b"pushmail:  Beta.Example. \r\n", "beta.example"),
        (b"Pushmail: beta.example\r\nPushmail: beta.example\r\n", "beta.example"),
        (b"Pushmail: beta.example\r\nPushmail: evil.example\r\n", None),
        (b"Pushmail: not a domain\r\n", None),
        (b"Pushmail: localhost\r\n", None),
        (b"Pushmail: http://beta.example/\r\n", None),
        (b"X-Pushmail: beta.example\r\n", None),
        (b"", None),
    ],
)
def test_the_header_is_read_strictly(headers: bytes, expected: str | None) -> None:
    raw = b"From: a@beta.example\r\n" + headers + b"Subject: hi\r\n\r\nPushmail: body.example\r\n"
    assert progressive.pushmail_domain(raw) == expected


def test_alignment_is_relaxed_like_dmarc() -> None:
    def results(dkim_domain: str, spf: str = "none", spf_domain: str = "") -> AuthResults:
        return AuthResults(spf, spf_domain, [DkimResult("pass", dkim_domain, "s")], DmarcResult("none", ""), "", "h")

    assert progressive.vouched_by("beta.example", results("mail.beta.example"))
    assert not progressive.vouched_by("beta.example", results("beta.example.com"))
    assert progressive.vouched_by("beta.example", results("x.test", "pass", "beta.example"))
    assert not progressive.vouched_by("beta.example", results("x.test", "softfail", "beta.example"))


def test_the_learned_domain_graph_is_the_one_in_the_protocol() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    section = text[text.index("### 12.1 The `Pushmail` header") :]
    table = re.search(r"\| State \| Meaning \|\n\|---\|---\|\n((?:\|.*\|\n)+)", section)
    assert table
    assert re.findall(r"^\| `([a-z_]+)` \|", table.group(1), re.M) == LEARNED.values
    block = re.search(r"Transitions of a learned domain:\n\n```\n(.*?)\n```", section, re.S)
    assert block
    edges = set()
    for line in block.group(1).splitlines():
        match = TRANSITION.fullmatch(line.strip())
        assert match, line
        edges.add((match["source"], match["target"]))
    assert edges == LEARNED.edge_set()
    assert set(LEARNED.values) == set(LearnedDomainState.values)


def test_superusers_see_the_learned_domains_in_the_admin(bob: User, peer: FakePeer, shared_cache: None) -> None:
    learned = heard_pushmail_header(domain="peer.test", sender=ANN, authenticated_by="dkim=pass header.d=peer.test")
    assert learned is not None
    check_learned_domain(learned.pk)
    root = MailboxFactory(domain=bob.domain, local_part="root", is_staff=True)
    User.objects.filter(pk=root.pk).update(is_superuser=True)
    client = Client()
    client.force_login(root)
    page = client.get(reverse("admin:federation_learneddomain_changelist")).content.decode()
    assert "peer.test" in page and ANN in page and "confirmed" in page
    # A domain admin (staff, not superuser) manages its own domain, not what the instance learned.
    client.force_login(MailboxFactory(domain=bob.domain, local_part="staff", is_staff=True))
    assert client.get(reverse("admin:federation_learneddomain_changelist")).status_code == 403
