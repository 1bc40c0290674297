"""Creating domains, mailboxes and API tokens."""

from __future__ import annotations

import secrets

from allauth.account.models import EmailAddress
from django.core.exceptions import ValidationError
from django.db import transaction

from federation import discovery, keys

from .models import ApiToken, Domain, User
from .validators import normalize_address, normalize_domain


@transaction.atomic
def create_domain(*, name: str) -> Domain:
    """Create a hosted domain with its first Ed25519 signing key."""
    name = normalize_domain(name)
    if Domain.objects.filter(name=name).exists():
        raise ValidationError(f"domain {name} already exists")
    domain = Domain.objects.create(name=name)
    keys.create_signing_key(domain=domain)
    transaction.on_commit(discovery.forget_hosted_domains)
    return domain


@transaction.atomic
def create_mailbox(*, address: str, password: str, is_staff: bool = False) -> User:
    """Create a mailbox whose address counts as verified."""
    address = normalize_address(address)
    local_part, _, domain_name = address.rpartition("@")
    domain = Domain.objects.filter(name=domain_name).first()
    if domain is None:
        raise ValidationError(f"{domain_name} is not a domain of this instance; run adddomain first")
    if User.objects.filter(email=address).exists():
        raise ValidationError(f"mailbox {address} already exists")
    user = User(email=address, local_part=local_part, domain=domain, is_staff=is_staff)
    user.set_password(password)
    user.save()
    EmailAddress.objects.create(user=user, email=address, verified=True, primary=True)
    return user


def issue_api_token(*, user: User, name: str = "") -> str:
    """Create an API token and return it; only its hash is kept."""
    raw = "pm_" + secrets.token_urlsafe(32)
    ApiToken.objects.create(user=user, name=name, key_hash=ApiToken.hash(raw), prefix=raw[:8])
    return raw
