"""The admin shows rows that record protocol state read-only, with their actions; keys rotate from it."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import Domain, User
from accounts.services import create_mailbox
from federation.models import SignedRequest, SigningKey
from mailbox.models import InboxEntry, RemoteMessage
from mailbox.services import accept_notification
from outbox.models import Delivery
from reputation.models import OriginPolicy, OriginReputation
from tests.factories import PeerMessageFactory, SentMessageFactory

pytestmark = pytest.mark.django_db

PROTOCOL_RECORDS = [
    "/admin/mailbox/inboxentry/",
    "/admin/mailbox/remotemessage/",
    "/admin/mailbox/receivedattachment/",
    "/admin/outbox/delivery/",
    "/admin/outbox/withdrawal/",
    "/admin/outbox/bodyfetch/",
    "/admin/outbox/attachmentfetch/",
]


@pytest.fixture
def superuser_client(local_domain: Domain) -> Client:
    user = create_mailbox(address=f"root@{local_domain.name}", password="admin passphrase 123", is_staff=True)
    User.objects.filter(pk=user.pk).update(is_superuser=True)
    client = Client()
    client.force_login(User.objects.get(pk=user.pk))
    return client


@pytest.fixture
def mail(alice: User, bob: User, net: Any, queued: Any, django_capture_on_commit_callbacks: Any) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        SentMessageFactory(sender=alice, to=["carol@peer.test", bob.email])
        accept_notification(origin="peer.test", notification=PeerMessageFactory(to=[alice.email]).notification())


def test_the_index_names_fetches_in_plain_english(superuser_client: Client) -> None:
    index = superuser_client.get("/admin/").content.decode()
    assert "Body fetches" in index and "Attachment fetches" in index
    assert "fetchs" not in index


@pytest.mark.parametrize("changelist", PROTOCOL_RECORDS)
def test_protocol_records_are_never_added_by_hand(superuser_client: Client, mail: None, changelist: str) -> None:
    assert superuser_client.get(f"{changelist}add/").status_code == 403
    page = superuser_client.get(changelist).content.decode()
    assert f'href="{changelist}add/"' not in page


def test_an_inbox_entry_shows_read_only(superuser_client: Client, mail: None, alice: User) -> None:
    entry = InboxEntry.objects.filter(owner=alice, remote__isnull=False).get()
    url = f"/admin/mailbox/inboxentry/{entry.pk}/change/"
    page = superuser_client.get(url)
    assert page.status_code == 200
    assert 'value="Save"' not in page.content.decode()
    response = superuser_client.post(url, {"folder": "trash", "read": "on", "starred": "on"})
    assert response.status_code == 403
    entry.refresh_from_db()
    assert (entry.folder, entry.read, entry.starred) == ("inbox", False, False)


def test_a_delivery_shows_read_only_and_keeps_its_retry(superuser_client: Client, mail: None) -> None:
    delivery = Delivery.objects.filter(local=False).get()
    page = superuser_client.get(f"/admin/outbox/delivery/{delivery.pk}/change/").content.decode()
    assert 'value="Save"' not in page
    assert superuser_client.post(f"/admin/outbox/delivery/{delivery.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Delivery.objects.filter(pk=delivery.pk).exists()
    assert "Retry notification now" in superuser_client.get("/admin/outbox/delivery/").content.decode()


def test_fetch_now_still_works_on_read_only_messages(
    superuser_client: Client, mail: None, queued: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    remote = RemoteMessage.objects.get()
    assert "Fetch now" in superuser_client.get("/admin/mailbox/remotemessage/").content.decode()
    queued.clear()
    with django_capture_on_commit_callbacks(execute=True):
        response = superuser_client.post(
            "/admin/mailbox/remotemessage/", {"action": "fetch_now", "_selected_action": [str(remote.pk)]}, follow=True
        )
    assert "Fetch queued." in response.content.decode()
    assert any(task.args and task.args[0] == remote.pk for task in queued), queued


def test_rotating_a_key_from_the_admin_makes_a_new_current_key(superuser_client: Client, local_domain: Domain) -> None:
    before = SigningKey.objects.current().get(domain=local_domain)
    page = superuser_client.get("/admin/accounts/domain/").content.decode()
    assert "rotate_signing_key" in page
    response = superuser_client.post(
        "/admin/accounts/domain/",
        {"action": "rotate_signing_key", "_selected_action": [str(local_domain.pk)]},
        follow=True,
    )
    after = SigningKey.objects.current().get(domain=local_domain)
    assert after.key_id != before.key_id
    assert after.key_id in response.content.decode()
    before.refresh_from_db()
    assert before.retired_at is not None and before.expires_at is not None


def test_known_peers_show_their_url_last_key_and_policy(superuser_client: Client, settings: Any) -> None:
    settings.PUSHMAIL_PEERS = {"peer.test": "https://mail.peer.test/pm/"}
    OriginReputation.objects.create(domain="peer.test")
    OriginPolicy.objects.create(domain="peer.test", blocked=True)
    for age, key_id in ((60, "peer.test#old"), (5, "peer.test#k2")):
        SignedRequest.objects.create(
            kind=SignedRequest.Kind.NOTIFICATION,
            origin_domain="peer.test",
            global_id=uuid.uuid4(),
            sender="carol@peer.test",
            local_domain="alpha.test",
            received_at=timezone.now() - timedelta(minutes=age),
            method="POST",
            authority="alpha.test",
            path="/pushmail/v1/notifications",
            signature_input="pm=()",
            signature="pm=:AA==:",
            key_id=key_id,
            public_key="cHVibGljIGtleSBvZiBwZWVyIHRlc3Q=",
            body=b"{}",
        )
    page = superuser_client.get("/admin/reputation/originreputation/").content.decode()
    assert "peer.test#k2" in page and "peer.test#old" not in page
    assert "cHVibGljIGtleSBvZiBwZWVyIHRlc3Q=" in page
    assert "https://mail.peer.test/pm/" in page
    assert "blocked" in page
    assert superuser_client.get("/admin/reputation/originreputation/add/").status_code == 403
