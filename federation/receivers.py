"""What federation does when the accounts app announces something; loaded by FederationConfig.ready()."""

from typing import Any

from django.db import transaction
from django.dispatch import receiver

from accounts.models import Domain
from accounts.signals import domain_created

from . import discovery
from .keys import create_dkim_key, create_signing_key
from .models import DkimKey, SigningKey


@receiver(domain_created, dispatch_uid="federation.first_signing_key")
def give_first_signing_key(*, domain: Domain, **kwargs: Any) -> None:
    """A new hosted domain signs with its own keys from the start (federation and DKIM), and is served at once."""
    if not SigningKey.objects.filter(domain=domain).exists():
        create_signing_key(domain=domain)
    if not DkimKey.objects.filter(domain=domain).exists():
        create_dkim_key(domain=domain)
    transaction.on_commit(discovery.forget_hosted_domains)
