"""Compose knows how each recipient is reached, and Withdraw says what it can reach.

While composing, a recipient at a legacy domain (no Pushmail instance) is marked
"will go by ordinary email (SMTP)"; local and Pushmail domains are not marked,
and a domain whose discovery cannot be done now says it could not be checked.
The answers come from discovery's caches. After sending, Withdraw reaches only
Pushmail domains, and the message page, the Sent list, the confirmation and the
API answer say which domains it reached and that SMTP copies stay.
"""

from __future__ import annotations

import html
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.models import User
from outbox.models import Delivery, Message, Withdrawal
from outbox.reach import SMTP_NOTE, domains_in
from outbox.services import deliver_notification, send_message
from tests.conftest import LOCAL, FakeNetwork, FakePeer

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}
LEGACY = "legacy.invalid"  # does not resolve: no Pushmail instance there


@pytest.fixture
def web(alice: User) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def _reach(web: Client, value: str, *, field: str = "to", htmx: bool = True) -> Any:
    response = web.get(reverse("webmail:compose-reach"), {field: value}, headers=HTMX if htmx else {})
    assert response.status_code == 200
    return html.unescape(response.content.decode()) if htmx else response.json()


def test_a_legacy_recipient_is_marked_and_local_and_pushmail_ones_are_not(
    web: Client, net: FakeNetwork, peer: FakePeer
) -> None:
    marks = _reach(web, f"bob@{LOCAL}, ann@peer.test, joe@{LEGACY}, kim@{LEGACY}")
    assert marks.count('data-testid="recipient-reach"') == 1
    assert f'data-domain="{LEGACY}" data-reach="smtp"' in marks
    assert f"joe@{LEGACY}, kim@{LEGACY}</span>: {SMTP_NOTE}" in marks
    assert "peer.test" not in marks and LOCAL not in marks


def test_the_json_answer_lists_every_domain_with_how_it_is_reached(web: Client, net: FakeNetwork) -> None:
    data = _reach(web, f"bob@{LOCAL}, ann@peer.test, joe@{LEGACY}", field="cc", htmx=False)
    assert [(d["domain"], d["reach"]) for d in data["domains"]] == [
        (LOCAL, "local"),
        ("peer.test", "pushmail"),
        (LEGACY, "smtp"),
    ]


def test_an_unreachable_domain_says_it_could_not_be_checked(web: Client, net: FakeNetwork, peer: FakePeer) -> None:
    peer.go_down()
    marks = _reach(web, "ann@peer.test")
    assert 'data-domain="peer.test" data-reach="unknown"' in marks
    assert "could not be checked now" in marks
    assert SMTP_NOTE not in marks  # not called legacy: it may well run Pushmail


def test_answers_are_cached_so_typing_does_not_ask_the_server_again(
    web: Client, net: FakeNetwork, peer: FakePeer
) -> None:
    for typed in ("ann@peer.test", "ann@peer.test, b", "ann@peer.test, bo@peer.test", "ann@peer.test, bo"):
        _reach(web, typed)
    assert peer.discovery_calls == 1


def test_half_typed_addresses_are_not_looked_up(net: FakeNetwork) -> None:
    assert domains_in("ann@, bo, carl@peer, dee@peer.test, DEE@Peer.test , eve@peer.test") == {
        "peer.test": ["dee@peer.test", "eve@peer.test"]
    }
    assert not net.calls


def test_the_compose_page_asks_for_each_field(web: Client) -> None:
    page = web.get(reverse("webmail:compose"), follow=True).content.decode()
    for field in ("to", "cc", "bcc"):
        assert f'id="compose-{field}-reach"' in page
        assert f'hx-include="#compose-{field}"' in page
    assert 'hx-get="/compose/reach/"' in page


# --- Withdraw reaches Pushmail domains only --------------------------------------------------------


@pytest.fixture
def sent_to_both(alice: User, net: FakeNetwork, peer: FakePeer) -> Message:
    message = send_message(sender=alice, to=["ann@peer.test", f"joe@{LEGACY}"], subject="Plans", text="Hello")
    for delivery in Delivery.objects.filter(message=message):
        deliver_notification(delivery.pk)
    states = dict(Delivery.objects.filter(message=message).values_list("domain", "state"))
    assert states == {"peer.test": "notified", LEGACY: "failed"}
    return message


def test_the_api_withdraw_answer_says_which_domains_it_reached(
    api: APIClient, sent_to_both: Message, django_capture_on_commit_callbacks: Any
) -> None:
    detail = api.get(f"/api/v1/messages/{sent_to_both.pk}/").json()
    assert {d["domain"]: d["by_smtp"] for d in detail["deliveries"]} == {"peer.test": False, LEGACY: True}
    with django_capture_on_commit_callbacks(execute=False):
        answer = api.post(f"/api/v1/messages/{sent_to_both.pk}/withdraw/").json()
    scope = answer["withdrawal_scope"]
    assert (scope["pushmail_domains"], scope["smtp_domains"]) == (["peer.test"], [LEGACY])
    assert scope["summary"] == (
        "Withdrawal reaches Pushmail domains only: peer.test. Copies sent by ordinary email (SMTP) to "
        f"{LEGACY} are stored at the recipients' servers and cannot be withdrawn."
    )
    # No withdrawal is sent where there is nothing to withdraw.
    assert list(Withdrawal.objects.filter(message=sent_to_both).values_list("domain", flat=True)) == ["peer.test"]


def test_the_sent_pages_say_the_smtp_copy_cannot_be_withdrawn(web: Client, sent_to_both: Message) -> None:
    detail = web.get(reverse("webmail:sent-message", args=[sent_to_both.pk])).content.decode()
    assert 'data-testid="withdraw-scope"' in detail and "Withdrawal reaches Pushmail domains only: peer.test." in detail
    assert "cannot be withdrawn: sent by ordinary email (SMTP)" in detail
    confirm = web.get(reverse("webmail:sent-withdraw", args=[sent_to_both.pk])).content.decode()
    assert f"Copies sent by ordinary email (SMTP) to {LEGACY}" in confirm
    listing = web.get(reverse("webmail:sent")).content.decode()
    assert f"by email to {LEGACY}: cannot be withdrawn there" in listing

    done = web.post(reverse("webmail:sent-withdraw", args=[sent_to_both.pk]), follow=True).content.decode()
    assert "Message withdrawn from peer.test" in done
    assert f"Copies sent by ordinary email (SMTP) to {LEGACY} cannot be withdrawn." in done
    assert "Withdrawn from Pushmail domains only" in web.get(reverse("webmail:sent")).content.decode()


def test_a_message_only_to_legacy_domains_offers_no_withdraw(web: Client, alice: User, net: FakeNetwork) -> None:
    message = send_message(sender=alice, to=[f"joe@{LEGACY}"], subject="Only legacy", text="Hello")
    deliver_notification(Delivery.objects.get(message=message).pk)
    detail = web.get(reverse("webmail:sent-message", args=[message.pk])).content.decode()
    assert "Nothing to withdraw: every recipient got it by ordinary email." in detail
    assert reverse("webmail:sent-withdraw", args=[message.pk]) not in detail


def test_pushmail_only_mail_says_nothing_new(web: Client, alice: User, net: FakeNetwork, peer: FakePeer) -> None:
    message = send_message(sender=alice, to=["ann@peer.test"], subject="Pushmail only", text="Hello")
    deliver_notification(Delivery.objects.get(message=message).pk)
    detail = web.get(reverse("webmail:sent-message", args=[message.pk])).content.decode()
    assert 'data-testid="withdraw-scope"' not in detail
    assert reverse("webmail:sent-withdraw", args=[message.pk]) in detail
