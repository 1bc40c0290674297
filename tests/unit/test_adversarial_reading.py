"""Reading mail that a hostile peer or another user shaped, beyond the documented cases: a valid
body whose ids a mail program cannot carry, and what a domain admin can learn of other people's
mail through the admin's query string."""

from __future__ import annotations

import dataclasses
import email
import email.policy

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import Domain, User
from federation import payloads
from mailbox.models import EntryState, InboxEntry
from mailbox.services import accept_notification, fetch_body, open_entry
from tests.conftest import FakePeer
from tests.factories import PeerMessage, PeerMessageFactory

pytestmark = [pytest.mark.django_db]


def _with_message_id(message: PeerMessage, message_id: str) -> PeerMessage:
    class Odd(PeerMessage):
        @property
        def message_id(self) -> str:
            return message_id

    return Odd(**{f.name: getattr(message, f.name) for f in dataclasses.fields(message)})


def _fetched(peer: FakePeer, message: PeerMessage) -> InboxEntry:
    content = message.content()
    payloads.check_body(content)  # a body every peer must accept
    peer.bodies[str(message.global_id)] = content
    accept_notification(origin=peer.domain, notification=message.notification())
    entry = InboxEntry.objects.select_related("remote").get(remote__global_id=message.global_id)
    open_entry(entry=entry)
    fetch_body(entry.remote_id)
    entry.refresh_from_db()
    assert entry.state == EntryState.FETCHED, entry.remote.last_error
    return entry


@pytest.mark.usefixtures("net")
@pytest.mark.parametrize(
    "message_id",
    ["<", "<été@peer.test>", '<"a@b>', "(a", "<a\\", "<a@b> <c@d>", "𝔪𝔦𝔡"],
    ids=["lt", "non-ascii", "quote", "paren", "backslash", "two-ids", "math-letters"],
)
def test_a_message_id_no_header_can_carry_still_exports_as_eml(peer: FakePeer, alice: User, message_id: str) -> None:
    message = _with_message_id(
        PeerMessageFactory(in_reply_to=message_id, references=[message_id, "<root@peer.test>"]), message_id
    )
    entry = _fetched(peer, message)
    browser = Client(raise_request_exception=False)
    browser.force_login(alice)

    response = browser.get(reverse("webmail:entry-eml", args=[entry.pk]))

    assert response.status_code == 200, response.content[:300]
    parsed = email.message_from_bytes(response.content, policy=email.policy.default)
    assert parsed["Message-ID"] is None  # left out rather than written broken
    assert str(parsed["Subject"]) == message.subject
    assert message.text in parsed.get_body(("plain",)).get_content()


@pytest.mark.usefixtures("net")
def test_a_well_formed_message_id_is_kept_in_the_eml(peer: FakePeer, alice: User) -> None:
    message = _with_message_id(PeerMessageFactory(), "<a.b+c@[192.0.2.1]>")
    entry = _fetched(peer, message)
    browser = Client()
    browser.force_login(alice)

    parsed = email.message_from_bytes(browser.get(reverse("webmail:entry-eml", args=[entry.pk])).content)

    assert parsed["Message-ID"] == "<a.b+c@[192.0.2.1]>"


# --- the admin: no lookup reads mail ------------------------------------------------------------------

ADMIN_PASSWORD = "admin passphrase 123"  # noqa: S105 - test data

# (changelist, lookup, a value that matches the stored mail, one that does not)
MAIL_LOOKUPS = [
    ("/admin/outbox/message/", "text__contains", "4711", "4712"),
    ("/admin/outbox/message/", "text__startswith", "The vault", "The vaulu"),
    ("/admin/outbox/message/", "html__gt", "<p>The vault", "<p>The vaulu"),
    ("/admin/outbox/delivery/", "message__text__contains", "4711", "4712"),
    ("/admin/mailbox/inboxentry/", "search_document__contains", "4711", "4712"),
    ("/admin/mailbox/inboxentry/", "search_document__contains", "9876", "9875"),
    ("/admin/mailbox/inboxentry/", "local__text__contains", "4711", "4712"),
    ("/admin/mailbox/remotemessage/", "content__isnull", "False", "True"),
    ("/admin/mailbox/remotemessage/", "content__gt", "remote", "zzzz"),
    ("/admin/outbox/draft/", "text__contains", "draft 5150", "draft 5151"),
    ("/admin/accounts/user/", "sent_messages__text__contains", "4711", "4712"),
]


@pytest.fixture
def mail_in_the_domain(local_domain: Domain, alice: User, bob: User, peer: FakePeer) -> None:
    from outbox.drafts import create_draft
    from outbox.services import send_message

    send_message(sender=bob, to=[alice.email], subject="Hi", text="The vault code is 4711", html="<p>The vault</p>")
    _fetched(peer, PeerMessageFactory(text="remote secret 9876"))
    create_draft(owner=bob, subject="Unsent", text="draft 5150")


@pytest.mark.usefixtures("net", "mail_in_the_domain")
@pytest.mark.parametrize("who", ["domain admin", "superuser"])
@pytest.mark.parametrize(
    ("url", "lookup", "hit", "miss"), MAIL_LOOKUPS, ids=[f"{u.split('/')[3]}:{lk}" for u, lk, _h, _m in MAIL_LOOKUPS]
)
def test_no_admin_lookup_reads_the_text_of_mail(
    local_domain: Domain, who: str, url: str, lookup: str, hit: str, miss: str
) -> None:
    from accounts.services import create_mailbox

    admin = create_mailbox(address=f"admin@{local_domain.name}", password=ADMIN_PASSWORD, is_staff=True)
    if who == "superuser":
        User.objects.filter(pk=admin.pk).update(is_superuser=True)
    browser = Client(raise_request_exception=False)
    browser.force_login(User.objects.get(pk=admin.pk))

    matching = browser.get(url, {lookup: hit})
    other = browser.get(url, {lookup: miss})

    assert matching.status_code == 400, (url, lookup, matching.status_code)
    # The same answer whatever the value: nothing is learnt by trying.
    assert (matching.status_code, matching.content) == (other.status_code, other.content)
