"""Operator commands: adddomain, addmailbox, apitoken, rotatekey."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from allauth.account.models import EmailAddress
from django.contrib.auth import authenticate
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import Domain, User
from federation.keys import current_key
from federation.models import SigningKey

pytestmark = pytest.mark.django_db


def _run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().strip()


def test_adddomain_creates_the_domain_with_a_signing_key() -> None:
    output = _run("adddomain", "Example.TEST")

    domain = Domain.objects.get()
    assert domain.name == "example.test"
    key = domain.signing_keys.get()
    assert key.key_id.startswith("example.test#") and key.retired_at is None
    assert len(key.public_key) == 44 and key.private_key != key.public_key
    assert key.key_id in output


@pytest.mark.parametrize("name", ["bad domain", "-x.test", "a\nb.test", ""])
def test_adddomain_refuses_invalid_names(name: str) -> None:
    with pytest.raises(CommandError):
        _run("adddomain", name)
    assert not Domain.objects.exists()


def test_adddomain_refuses_a_duplicate() -> None:
    _run("adddomain", "example.test")
    with pytest.raises(CommandError, match="already exists"):
        _run("adddomain", "EXAMPLE.test")
    assert SigningKey.objects.count() == 1


def test_addmailbox_creates_a_verified_mailbox_that_can_log_in() -> None:
    _run("adddomain", "example.test")

    output = _run("addmailbox", "Ann@Example.test", "--password", "s3cret-pass-phrase")

    assert "ann@example.test" in output
    user = User.objects.get()
    assert (user.email, user.local_part, user.domain.name) == ("ann@example.test", "ann", "example.test")
    assert authenticate(email="ann@example.test", password="s3cret-pass-phrase") == user
    assert authenticate(email="ann@example.test", password="wrong") is None
    assert EmailAddress.objects.get(user=user).verified
    assert not user.is_staff


def test_addmailbox_superuser_may_use_the_admin() -> None:
    _run("adddomain", "example.test")
    _run("addmailbox", "root@example.test", "--password", "s3cret-pass-phrase", "--superuser")
    client = Client()
    assert client.login(email="root@example.test", password="s3cret-pass-phrase")
    assert client.get("/admin/").status_code == 200


@pytest.mark.parametrize(
    ("address", "message"),
    [("ann@unknown.test", "adddomain"), ("not-an-address", "local@domain"), ("ann@example.test\r\n", "line break")],
)
def test_addmailbox_refuses_bad_addresses(address: str, message: str) -> None:
    _run("adddomain", "example.test")
    with pytest.raises(CommandError, match=message):
        _run("addmailbox", address, "--password", "pw-long-enough")
    assert not User.objects.exists()


def test_addmailbox_refuses_a_duplicate() -> None:
    _run("adddomain", "example.test")
    _run("addmailbox", "ann@example.test", "--password", "pw-long-enough")
    with pytest.raises(CommandError, match="already exists"):
        _run("addmailbox", "ANN@example.test", "--password", "other")


def test_apitoken_prints_a_token_the_api_accepts() -> None:
    _run("adddomain", "example.test")
    _run("addmailbox", "ann@example.test", "--password", "pw-long-enough")

    token = _run("apitoken", "ann@example.test")
    second = _run("apitoken", "ann@example.test")

    assert token != second and token.startswith("pm_")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert client.get("/api/v1/inbox/").status_code == 200
    assert token not in str(list(User.objects.get().api_tokens.values()))  # only a hash is kept


def test_apitoken_for_an_unknown_mailbox_fails() -> None:
    with pytest.raises(CommandError, match="no mailbox"):
        _run("apitoken", "ghost@example.test")


def test_rotatekey_keeps_the_old_key_published_until_it_expires(settings: Any) -> None:
    _run("adddomain", "example.test")
    old = current_key("example.test")

    output = _run("rotatekey", "example.test")

    new = current_key("example.test")
    assert new.key_id != old.key_id and new.key_id in output
    old.refresh_from_db()
    assert old.retired_at is not None
    assert old.expires_at is not None
    expected = timezone.now() + settings.PUSHMAIL_KEY_GRACE
    assert abs((old.expires_at - expected).total_seconds()) < 60

    doc = Client().get("/.well-known/pushmail").json()
    listed = {k["id"]: k for k in doc["keys"]}
    assert set(listed) == {old.key_id, new.key_id}
    assert listed[new.key_id]["expires"] is None
    assert listed[old.key_id]["expires"] == old.expires_at.isoformat().replace("+00:00", "Z")
    assert listed[old.key_id]["public_key"] == old.public_key

    # Once the grace period has passed, only the current key is published.
    SigningKey.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    doc = Client().get("/.well-known/pushmail").json()
    assert [k["id"] for k in doc["keys"]] == [new.key_id]


def test_rotating_twice_keeps_one_current_key() -> None:
    _run("adddomain", "example.test")
    _run("rotatekey", "example.test")
    _run("rotatekey", "example.test")
    domain = Domain.objects.get()
    assert SigningKey.objects.filter(domain=domain).count() == 3
    assert SigningKey.objects.filter(domain=domain, retired_at__isnull=True).count() == 1


def test_rotatekey_for_an_unknown_domain_fails() -> None:
    with pytest.raises(CommandError, match="no hosted domain"):
        _run("rotatekey", "ghost.test")
