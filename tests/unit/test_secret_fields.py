"""Secret fields in the admin and at rest.

No admin changelist may be filtered, searched or ordered by a secret field (private signing keys,
password hashes, API token hashes, MFA secrets, session keys, confirmation keys), directly or
through relations: each answer would leak a little of the secret (a binary search over
``?private_key__startswith=`` recovered a whole key in 266 requests). The lookups tried here are
generated from the models, so a secret field added later is tried too.

Private signing keys are stored encrypted with a key derived from PUSHMAIL_KEY_ENCRYPTION_KEY.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from typing import Any

import pytest
from allauth.account.models import EmailAddress, EmailConfirmation
from allauth.mfa.models import Authenticator
from allauth.usersessions.models import UserSession
from django.contrib import admin
from django.core.management import call_command
from django.db import models
from django.test import Client, RequestFactory
from django.urls import reverse

from accounts.admin_secrets import is_secret_field, secret_fields_of
from accounts.models import Domain, User
from accounts.services import create_mailbox, issue_api_token
from federation import discovery, keys
from federation.models import SigningKey

PASSWORD = "admin passphrase 123"  # noqa: S105 - test data

LOOKUPS = [
    "",  # the bare field: exact
    "exact",
    "iexact",
    "startswith",
    "istartswith",
    "endswith",
    "contains",
    "icontains",
    "gt",
    "gte",
    "lt",
    "lte",
    "in",
    "range",
    "regex",
    "iregex",
    "isnull",
]

# Every secret field the project knows of must be found by the generator below.
KNOWN_SECRETS = {
    ("accounts.user", "password"),
    ("accounts.apitoken", "key_hash"),
    ("federation.signingkey", "private_key"),
    ("mfa.authenticator", "data"),
    ("usersessions.usersession", "session_key"),
    ("usersessions.usersession", "data"),
    ("sessions.session", "session_key"),
    ("sessions.session", "session_data"),
    ("account.emailconfirmation", "key"),
}


def _lookup_name(field: Any) -> str:
    if field.auto_created and not field.concrete:  # a reverse relation: filtered by its query name
        return str(field.field.related_query_name())
    return str(field.name)


def secret_paths(model: type[models.Model], hops: int = 2, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every lookup path from ``model`` to a secret field, through up to ``hops`` relations."""
    for field in model._meta.get_fields():
        if is_secret_field(field):
            yield prefix + field.name, field
    if hops:
        for field in model._meta.get_fields():
            if field.is_relation and isinstance(field.related_model, type):
                yield from secret_paths(field.related_model, hops - 1, prefix + _lookup_name(field) + "__")


# Through the web, a direct field gets every lookup; a path through relations the ones a search would use
# (every lookup of every path is tried on the admins themselves, above, without the cost of requests).
WEB_LOOKUPS_THROUGH_RELATIONS = ["", "startswith", "gt", "in", "regex", "isnull"]


def lookups_for(path: str, field: Any, lookups: list[str] = LOOKUPS) -> Iterator[str]:
    for lookup in lookups:
        yield f"{path}__{lookup}" if lookup else path
    if isinstance(field, models.JSONField):  # a key inside the JSON document, and a nested one
        yield f"{path}__secret__startswith"
        yield f"{path}__0__gt"


def value_for(lookup: str, real: str) -> str:
    if lookup.endswith(("__in", "__range")):
        return f"{real},{real}"
    if lookup.endswith("__isnull"):
        return "False"
    return real


CASES = [(model, path, field) for model in list(admin.site._registry) for path, field in secret_paths(model)]


def _case_id(case: tuple[Any, str, Any]) -> str:
    return f"{case[0]._meta.label_lower}:{case[1]}"


# --- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture
def secrets_everywhere(local_domain: Domain, alice: User) -> User:
    """A row in every table with a secret field, each reachable from the admins' models."""
    issue_api_token(user=alice, name="script")
    Authenticator.objects.create(user=alice, type=Authenticator.Type.TOTP, data={"secret": "JBSWY3DPEHPK3PXP"})
    UserSession.objects.create(user=alice, ip="192.0.2.1", session_key="s3cretsessionkey0123", user_agent="test")
    address = EmailAddress.objects.get(user=alice)
    EmailConfirmation.objects.create(email_address=address, key="confirmationkey0123456789")
    return alice


@pytest.fixture
def superuser_client(local_domain: Domain) -> Client:
    user = create_mailbox(address=f"root@{local_domain.name}", password=PASSWORD, is_staff=True)
    User.objects.filter(pk=user.pk).update(is_superuser=True)
    client = Client()
    client.force_login(User.objects.get(pk=user.pk))
    return client


@pytest.fixture
def domain_admin_client(local_domain: Domain) -> Client:
    user = create_mailbox(address=f"admin@{local_domain.name}", password=PASSWORD, is_staff=True)
    client = Client()
    client.force_login(user)
    return client


def _changelist(model: type[models.Model]) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")


def _real_value(model: type[models.Model], path: str) -> str:
    """A real stored value at ``path`` (a prefix of it is what a binary search would try)."""
    for value in model._default_manager.values_list(path, flat=True):  # type: ignore[attr-defined]
        if value not in (None, "", {}):
            return str(value)[:12]
    return "zz"


# --- the generator covers what we know -------------------------------------------------------------------


def test_every_known_secret_field_is_recognised() -> None:
    from django.apps import apps

    found = {(m._meta.label_lower, f.name) for m in apps.get_models() for f in secret_fields_of(m)}
    assert KNOWN_SECRETS <= found


def test_the_generated_lookups_reach_secrets_through_other_models() -> None:
    paths = {(model._meta.label_lower, path) for model, path, _ in CASES}
    assert ("federation.signingkey", "private_key") in paths
    assert ("accounts.domain", "signing_keys__private_key") in paths
    assert ("federation.signingkey", "domain__signing_keys__private_key") in paths
    assert ("accounts.user", "password") in paths
    assert ("accounts.domain", "mailboxes__password") in paths
    assert ("mailbox.inboxentry", "owner__api_tokens__key_hash") in paths
    assert ("accounts.user", "usersession__session_key") in paths
    assert ("accounts.user", "emailaddress__emailconfirmation__key") in paths
    assert len(paths) > 50


def test_a_new_field_named_for_a_secret_is_secret() -> None:
    class Probe(models.Model):
        totp_secret = models.CharField(max_length=10)
        api_token = models.CharField(max_length=10)
        recovery_codes_hash = models.CharField(max_length=10)
        public_key = models.CharField(max_length=10)
        key_id = models.CharField(max_length=10)
        recovery_address = models.CharField(max_length=10)

        class Meta:
            app_label = "accounts"
            managed = False

    secret = {f.name for f in secret_fields_of(Probe)}
    assert secret == {"totp_secret", "api_token", "recovery_codes_hash"}


# --- every admin refuses every lookup on a secret -----------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_no_admin_allows_a_lookup_on_a_secret(case: tuple[Any, str, Any], local_domain: Domain) -> None:
    model, path, field = case
    model_admin = admin.site._registry[model]
    request = RequestFactory().get("/")
    request.user = create_mailbox(address=f"root@{local_domain.name}", password=PASSWORD, is_staff=True)
    for lookup in lookups_for(path, field):
        assert not model_admin.lookup_allowed(lookup, "x", request), lookup
    assert not model_admin.to_field_allowed(request, path)


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["superuser", "domain admin"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_admin_changelists_refuse_filters_on_secrets(
    case: tuple[Any, str, Any],
    who: str,
    secrets_everywhere: User,
    superuser_client: Client,
    domain_admin_client: Client,
) -> None:
    model, path, field = case
    client = superuser_client if who == "superuser" else domain_admin_client
    url = _changelist(model)
    real = _real_value(model, path)
    for lookup in lookups_for(path, field, LOOKUPS if "__" not in path else WEB_LOOKUPS_THROUGH_RELATIONS):
        with_secret = client.get(url, {lookup: value_for(lookup, real)})
        with_other = client.get(url, {lookup: value_for(lookup, "~~not-it~~")})
        assert 400 <= with_secret.status_code < 500, f"{who}: {url}?{lookup}= answered {with_secret.status_code}"
        # The answer is the same whatever the value: nothing is learnt by trying.
        assert (with_secret.status_code, with_secret.content) == (with_other.status_code, with_other.content), lookup


@pytest.mark.django_db
def test_the_private_key_cannot_be_binary_searched(
    secrets_everywhere: User, superuser_client: Client, domain_admin_client: Client
) -> None:
    key = SigningKey.objects.get(domain=secrets_everywhere.domain)
    for client in (superuser_client, domain_admin_client):
        for prefix in (key.private_key[:1], key.private_key[:20], "A", "z"):
            for lookup in ("private_key__startswith", "private_key__gt", "private_key__lt"):
                response = client.get("/admin/federation/signingkey/", {lookup: prefix})
                assert response.status_code == 400, (lookup, prefix)
            response = client.get("/admin/accounts/domain/", {"signing_keys__private_key__startswith": prefix})
            assert response.status_code == 400


@pytest.mark.django_db
def test_search_and_ordering_never_use_secrets(
    secrets_everywhere: User, superuser_client: Client, domain_admin_client: Client
) -> None:
    alice = secrets_everywhere
    alice.refresh_from_db()
    key = SigningKey.objects.get(domain=alice.domain)
    for client in (superuser_client, domain_admin_client):
        # Searching for a secret's value finds nothing: no search field reads it.
        for url, secret in [
            ("/admin/federation/signingkey/", key.private_key),
            ("/admin/accounts/user/", alice.password),
            ("/admin/accounts/apitoken/", alice.api_tokens.get().key_hash),
            ("/admin/usersessions/usersession/", "s3cretsessionkey0123"),
        ]:
            response = client.get(url, {"q": secret})
            assert response.status_code == 200
            assert "0 results" in response.content.decode(), url
        # No column sorts by a secret: every ?o= gives the same rows in the same order as without secrets.
        for model, model_admin in admin.site._registry.items():
            request = client.get("/admin/").wsgi_request
            for value in model_admin.get_ordering(request) or ():
                assert not (isinstance(value, str) and value.lstrip("-") in {f.name for f in secret_fields_of(model)})
            for name in model_admin.get_search_fields(request):
                assert name.lstrip("^=@") not in {f.name for f in secret_fields_of(model)}


@pytest.mark.django_db
def test_no_admin_page_shows_a_secret(
    secrets_everywhere: User, superuser_client: Client, domain_admin_client: Client
) -> None:
    alice = secrets_everywhere
    alice.refresh_from_db()
    secrets = {
        "private key": SigningKey.objects.get(domain=alice.domain).private_key,
        "password hash": alice.password,
        "token hash": alice.api_tokens.get().key_hash,
        "TOTP secret": "JBSWY3DPEHPK3PXP",
        "session key": "s3cretsessionkey0123",
        "confirmation key": "confirmationkey0123456789",
    }
    pages = 0
    for client in (superuser_client, domain_admin_client):
        for model, model_admin in admin.site._registry.items():
            opts = model._meta
            urls = [_changelist(model), reverse(f"admin:{opts.app_label}_{opts.model_name}_add")]
            for pk in model._default_manager.values_list("pk", flat=True)[:20]:  # type: ignore[attr-defined]
                urls.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[pk]))
            for url in urls:
                response = client.get(url)
                assert response.status_code in (200, 302, 403, 404), url
                page = response.content.decode()
                pages += 1
                for what, secret in secrets.items():
                    assert secret not in page, f"{what} shown on {url}"
    assert pages > 50


def test_the_admin_configuration_is_checked_for_secrets() -> None:
    from accounts.admin_secrets import GuardedAdminSite

    site = GuardedAdminSite(name="probe")

    class LeakyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
        search_fields = ["key_id", "private_key"]
        list_filter = ["domain__signing_keys__private_key"]
        ordering = ["private_key"]

    site.register(SigningKey, LeakyAdmin)
    errors = site._registry[SigningKey].check()
    codes = {e.id for e in errors}
    assert {"accounts.E101", "accounts.E102", "accounts.E103"} <= codes
    # The real site has none of them.
    assert not [e for m in admin.site._registry.values() for e in m.check() if e.id.startswith("accounts.")]


# --- private keys at rest -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_private_keys_are_stored_encrypted(local_domain: Domain) -> None:
    key = SigningKey.objects.get(domain=local_domain)
    private = keys.private_key_of(key)
    seed = keys.raw_seed(private)
    assert key.private_key.startswith(keys.ENCRYPTED_PREFIX)
    for form in (base64.b64encode(seed), base64.urlsafe_b64encode(seed), seed.hex().encode()):
        assert form.decode().rstrip("=") not in key.private_key
    assert keys.b64(private.public_key().public_bytes_raw()) == key.public_key
    # The same seed encrypts differently each time, and only for its own key id.
    assert keys.encrypt_seed(seed, key_id=key.key_id) != keys.encrypt_seed(seed, key_id=key.key_id)
    with pytest.raises(keys.KeyDecryptionError):
        keys.decrypt_seed(key.private_key, key_id="another.test#k1")


@pytest.mark.django_db
def test_a_different_encryption_key_cannot_read_the_keys(local_domain: Domain, settings: Any) -> None:
    key = SigningKey.objects.get(domain=local_domain)
    settings.PUSHMAIL_KEY_ENCRYPTION_KEY = "another-key-encryption-key-entirely-0123456789"
    with pytest.raises(keys.KeyDecryptionError, match="PUSHMAIL_KEY_ENCRYPTION_KEY"):
        keys.private_key_of(key)


@pytest.mark.django_db
def test_discovery_publishes_no_part_of_the_private_key(local_domain: Domain, client: Client) -> None:
    key = SigningKey.objects.get(domain=local_domain)
    seed = keys.raw_seed(keys.private_key_of(key))
    body = client.get(discovery.WELL_KNOWN_PATH).content.decode()
    assert key.public_key in body
    assert base64.b64encode(seed).decode() not in body and key.private_key not in body


@pytest.mark.django_db
def test_the_key_encryption_key_can_be_rotated(local_domain: Domain, settings: Any) -> None:
    key = SigningKey.objects.get(domain=local_domain)
    seed = keys.raw_seed(keys.private_key_of(key))
    old = settings.PUSHMAIL_KEY_ENCRYPTION_KEY
    settings.PUSHMAIL_KEY_ENCRYPTION_KEY = "the-new-key-encryption-key-0123456789abcdef"
    settings.PUSHMAIL_KEY_ENCRYPTION_OLD_KEYS = [old]
    assert keys.raw_seed(keys.private_key_of(key)) == seed  # still readable during the rotation

    call_command("reencryptkeys", stdout=open(os.devnull, "w"))  # noqa: SIM115
    settings.PUSHMAIL_KEY_ENCRYPTION_OLD_KEYS = []
    key.refresh_from_db()
    assert keys.raw_seed(keys.private_key_of(key)) == seed  # the new key alone reads it now
    settings.PUSHMAIL_KEY_ENCRYPTION_KEY = old
    with pytest.raises(keys.KeyDecryptionError):
        keys.private_key_of(key)
