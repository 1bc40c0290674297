"""The Django admin for a domain admin: every page loads, mailboxes and domains are managed there,
and a password can be reset."""

from __future__ import annotations

from typing import Any

import pytest
from allauth.account.models import EmailAddress
from django.contrib import admin
from django.test import Client
from django.urls import reverse

from accounts.models import Domain, FetchPolicy, User
from accounts.services import create_mailbox, issue_api_token
from mailbox.services import accept_notification, post_notice
from reputation.models import OriginPolicy
from tests.factories import PeerMessageFactory, SentMessageFactory

pytestmark = pytest.mark.django_db

ADMIN_PASSWORD = "admin passphrase 123"  # noqa: S105 - test data


@pytest.fixture
def admin_client(local_domain: Domain) -> Client:
    create_mailbox(address=f"root@{local_domain.name}", password=ADMIN_PASSWORD, is_staff=True)
    User.objects.filter(email=f"root@{local_domain.name}").update(is_superuser=True)
    client = Client()
    client.force_login(User.objects.get(email=f"root@{local_domain.name}"))
    return client


@pytest.fixture
def some_of_everything(alice: User, bob: User, net: Any, queued: Any, django_capture_on_commit_callbacks: Any) -> None:
    """Rows in every table the admin lists, so changelists render real rows."""
    with django_capture_on_commit_callbacks(execute=True):
        SentMessageFactory(sender=alice, to=["carol@peer.test", bob.email])
        accept_notification(origin="peer.test", notification=PeerMessageFactory(to=[alice.email]).notification())
    post_notice(owner=alice, subject="Delivery failed", text="details")
    issue_api_token(user=alice, name="script")
    OriginPolicy.objects.create(domain="spam.test", blocked=True)


def test_every_changelist_and_add_page_loads(admin_client: Client, some_of_everything: None) -> None:
    index = admin_client.get("/admin/")
    assert index.status_code == 200
    checked = []
    for model, model_admin in admin.site._registry.items():
        opts = model._meta
        changelist = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        assert changelist in index.content.decode(), f"{changelist} missing from the admin index"
        response = admin_client.get(changelist)
        assert response.status_code == 200, changelist
        # Searching, and the first row's change page, work too.
        if model_admin.search_fields:
            assert admin_client.get(changelist, {"q": "alpha"}).status_code == 200, changelist
        first = model_admin.get_queryset(response.wsgi_request).first()
        if first is not None:
            change = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[first.pk])
            assert admin_client.get(change).status_code == 200, change
        add = reverse(f"admin:{opts.app_label}_{opts.model_name}_add")
        expected = 200 if model_admin.has_add_permission(response.wsgi_request) else 403
        assert admin_client.get(add).status_code == expected, add
        checked.append(changelist)
    assert len(checked) >= 10


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/admin/outbox/delivery/", {"state__exact": "pending"}),
        ("/admin/outbox/bodyfetch/", {"domain": "peer.test"}),
        ("/admin/mailbox/remotemessage/", {"state__exact": "notified"}),
        ("/admin/mailbox/inboxentry/", {"folder__exact": "inbox", "state__exact": "notified"}),
        ("/admin/reputation/originpolicy/", {"blocked__exact": "1"}),
    ],
)
def test_filters(admin_client: Client, some_of_everything: None, path: str, params: dict[str, str]) -> None:
    assert admin_client.get(path, params).status_code == 200


def test_non_staff_cannot_use_the_admin(client: Client, alice: User) -> None:
    client.force_login(alice)
    response = client.get("/admin/accounts/user/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_admin_resets_a_mailbox_password(admin_client: Client, alice: User) -> None:
    change = admin_client.get(f"/admin/accounts/user/{alice.pk}/change/").content.decode()
    assert 'href="../password/"' in change  # the "Reset password" button, relative to .../<id>/change/
    new = "set by the admin 99"
    response = admin_client.post(
        f"/admin/accounts/user/{alice.pk}/password/",
        {"password1": new, "password2": new, "usable_password": "true"},
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    assert Client().post("/accounts/login/", {"login": alice.email, "password": new}).status_code == 302


def test_admin_creates_a_mailbox_that_can_sign_in(admin_client: Client, local_domain: Domain) -> None:
    password = "new mailbox passphrase 5"
    response = admin_client.post(
        "/admin/accounts/user/add/",
        {"email": "New.Person@Alpha.test", "usable_password": "true", "password1": password, "password2": password},
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    user = User.objects.get(email="new.person@alpha.test")
    assert user.local_part == "new.person" and user.domain == local_domain
    assert EmailAddress.objects.filter(user=user, verified=True, primary=True).exists()
    assert Client().post("/accounts/login/", {"login": user.email, "password": password}).status_code == 302


def test_admin_refuses_a_mailbox_outside_hosted_domains(admin_client: Client, local_domain: Domain) -> None:
    response = admin_client.post(
        "/admin/accounts/user/add/",
        {"email": "x@elsewhere.test", "usable_password": "true", "password1": "p4ss x 12", "password2": "p4ss x 12"},
    )
    assert response.status_code == 200
    assert "elsewhere.test is not a domain of this instance" in response.content.decode()


def test_admin_edits_mailbox_quota_and_recovery(admin_client: Client, alice: User) -> None:
    page = admin_client.get(f"/admin/accounts/user/{alice.pk}/change/")
    form = page.context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k not in {"groups", "user_permissions"}}
    data.update(
        {
            "display_name": "Alice",
            "quota_bytes": "1048576",
            "recovery_address": "alice@peer.test",
            "fetch_policy": FetchPolicy.ON_NOTIFY,
            "remote_content": "ask",
            "is_active": "on",
        }
    )
    data.pop("last_login", None)
    data.pop("date_joined", None)
    data.pop("password", None)
    response = admin_client.post(f"/admin/accounts/user/{alice.pk}/change/", data)
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else response
    alice.refresh_from_db()
    assert alice.effective_quota_bytes == 1048576
    assert alice.recovery_address == "alice@peer.test"
    assert alice.effective_fetch_policy == FetchPolicy.ON_NOTIFY


def test_admin_sets_domain_defaults(admin_client: Client, alice: User, local_domain: Domain) -> None:
    response = admin_client.post(
        f"/admin/accounts/domain/{local_domain.pk}/change/",
        {
            "default_fetch_policy": FetchPolicy.ON_NOTIFY,
            "default_quota_bytes": "5000000",
            "signing_keys-TOTAL_FORMS": "0",
            "signing_keys-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    alice.refresh_from_db()
    assert alice.effective_fetch_policy == FetchPolicy.ON_NOTIFY
    assert alice.effective_quota_bytes == 5000000


def test_admin_adds_a_domain_with_a_signing_key(admin_client: Client, local_domain: Domain) -> None:
    response = admin_client.post(
        "/admin/accounts/domain/add/",
        {
            "name": "beta.test",
            "default_fetch_policy": FetchPolicy.ON_OPEN,
            "default_quota_bytes": "1000",
            "signing_keys-TOTAL_FORMS": "0",
            "signing_keys-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    assert Domain.objects.get(name="beta.test").signing_keys.count() == 1


def test_admin_blocks_a_peer(admin_client: Client) -> None:
    response = admin_client.post(
        "/admin/reputation/originpolicy/add/", {"domain": "noisy.test", "blocked": "on", "rate_per_minute": "10"}
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    assert OriginPolicy.objects.get(domain="noisy.test").blocked


# --- a domain admin: staff, not superuser, scoped to its own domain --------------------------------


@pytest.fixture
def other_domain(db: None) -> Domain:
    from tests.factories import DomainFactory

    return DomainFactory(name="gamma.test")


@pytest.fixture
def domain_admin_client(local_domain: Domain) -> Client:
    user = create_mailbox(address=f"admin@{local_domain.name}", password=ADMIN_PASSWORD, is_staff=True)
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def outsider(other_domain: Domain) -> User:
    return create_mailbox(address=f"olga@{other_domain.name}", password=ADMIN_PASSWORD)


def test_domain_admin_sees_only_its_domain(
    domain_admin_client: Client, alice: User, outsider: User, some_of_everything: None
) -> None:
    listing = domain_admin_client.get("/admin/accounts/user/").content.decode()
    assert alice.email in listing and outsider.email not in listing
    assert domain_admin_client.get(f"/admin/accounts/user/{outsider.pk}/change/").status_code == 302  # not found
    assert domain_admin_client.get(f"/admin/accounts/user/{outsider.pk}/password/").status_code == 404
    domains = domain_admin_client.get("/admin/accounts/domain/").content.decode()
    assert "alpha.test" in domains and "gamma.test" not in domains
    # Peers are instance-wide: superusers only.
    assert domain_admin_client.get("/admin/reputation/originpolicy/").status_code == 403


def test_domain_admin_walks_every_page_it_may_see(domain_admin_client: Client, some_of_everything: None) -> None:
    index = domain_admin_client.get("/admin/")
    assert index.status_code == 200
    visible = set()
    for model in admin.site._registry:
        opts = model._meta
        changelist = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        status = domain_admin_client.get(changelist).status_code
        assert status in (200, 403), changelist
        assert (status == 200) == (changelist in index.content.decode()), changelist
        if status == 200:
            visible.add(f"{opts.app_label}.{opts.model_name}")
    assert {
        "accounts.domain",
        "accounts.user",
        "accounts.apitoken",
        "federation.signingkey",
        "outbox.delivery",
        "outbox.bodyfetch",
        "mailbox.remotemessage",
        "mailbox.inboxentry",
    } <= visible
    assert "reputation.originpolicy" not in visible


def test_domain_admin_resets_a_password_and_cannot_make_superusers(domain_admin_client: Client, alice: User) -> None:
    page = domain_admin_client.get(f"/admin/accounts/user/{alice.pk}/change/").content.decode()
    assert 'name="is_staff"' in page and 'name="is_superuser"' not in page
    new = "domain admin chose this 7"
    response = domain_admin_client.post(
        f"/admin/accounts/user/{alice.pk}/password/", {"password1": new, "password2": new, "usable_password": "true"}
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password(new)


def test_domain_admin_adds_mailboxes_in_its_domain_only(
    domain_admin_client: Client, local_domain: Domain, other_domain: Domain
) -> None:
    data = {"usable_password": "true", "password1": "p4ss x 12 y", "password2": "p4ss x 12 y"}
    response = domain_admin_client.post("/admin/accounts/user/add/", {"email": "x@gamma.test", **data})
    assert response.status_code == 200
    assert "You administer another domain than gamma.test." in response.content.decode()
    response = domain_admin_client.post("/admin/accounts/user/add/", {"email": "x@alpha.test", **data})
    assert response.status_code == 302
    assert User.objects.filter(email="x@alpha.test", domain=local_domain).exists()


def test_domain_admin_only_views_mail_records(domain_admin_client: Client, some_of_everything: None) -> None:
    from outbox.models import Delivery

    delivery = Delivery.objects.first()
    assert delivery is not None
    page = domain_admin_client.get(f"/admin/outbox/delivery/{delivery.pk}/change/")
    assert page.status_code == 200 and 'type="submit" value="Save"' not in page.content.decode()
    assert domain_admin_client.post(f"/admin/outbox/delivery/{delivery.pk}/change/", {}).status_code == 403
    actions = domain_admin_client.get("/admin/outbox/delivery/").content.decode()
    assert "Retry notification now" not in actions
