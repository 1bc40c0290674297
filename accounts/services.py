"""Creating domains, mailboxes and API tokens."""

from __future__ import annotations

import logging
import secrets
from urllib.parse import quote

from allauth.account import app_settings as allauth_settings
from allauth.account.models import EmailAddress
from allauth.account.utils import user_pk_to_url_str
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from pushmail_site.hooks import Hook

from .models import ApiToken, Domain, FetchPolicy, RemoteContentPolicy, User
from .signals import domain_created
from .validators import normalize_address, normalize_display_name, normalize_domain

log = logging.getLogger(__name__)

SYSTEM_LOCAL_PART = "postmaster"

#: ``send_mail(sender=..., to=[...], subject=..., text=...)``: send ordinary mail from a mailbox here.
#: The sender side answers it (outbox.send_message): account mail leaves as any other mail does.
send_mail: Hook[..., object] = Hook("accounts.services.send_mail")


@transaction.atomic
def create_domain(*, name: str) -> Domain:
    """Create a hosted domain; federation gives it its first Ed25519 signing key (``domain_created``)."""
    name = normalize_domain(name)
    if Domain.objects.filter(name=name).exists():
        raise ValidationError(f"domain {name} already exists")
    domain = Domain.objects.create(name=name)
    domain_created.send(sender=Domain, domain=domain)
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


def revoke_api_token(*, user: User, token_id: int) -> bool:
    """Delete one of the user's own API tokens; False when the user has no such token."""
    deleted, _ = ApiToken.objects.filter(user=user, pk=token_id).delete()
    return bool(deleted)


def app_password_user(*, address: str, password: str) -> User | None:
    """The active mailbox ``address`` when ``password`` is one of its API tokens (its app passwords), else None.

    Mail programs (SMTP submission, later IMAP and POP3) sign in with the address
    and an API token, one per program, so each can be revoked alone. An unknown
    address and a wrong token give the same None.
    """
    try:
        address = normalize_address(address)
    except ValidationError:
        return None
    token = (
        ApiToken.objects.select_related("user", "user__domain")
        .filter(key_hash=ApiToken.hash(password.strip()), user__email=address, user__is_active=True)
        .first()
    )
    if token is None:
        return None
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user


def update_preferences(
    *,
    user: User,
    display_name: str,
    signature: str,
    fetch_policy: str,
    remote_content: str,
    recovery_address: str,
) -> User:
    """Save a user's own preferences. Raises ValidationError naming the field."""
    try:
        display_name = normalize_display_name(display_name)
    except ValidationError as exc:
        raise ValidationError({"display_name": exc.messages}) from exc
    if len(signature) > 2000:
        raise ValidationError({"signature": ["at most 2000 characters"]})
    if fetch_policy not in {"", *FetchPolicy.values}:
        raise ValidationError({"fetch_policy": ["not a fetch policy"]})
    if remote_content not in RemoteContentPolicy.values:
        raise ValidationError({"remote_content": ["not a remote-content policy"]})
    if recovery_address:
        try:
            recovery_address = normalize_address(recovery_address)
        except ValidationError as exc:
            raise ValidationError({"recovery_address": exc.messages}) from exc
        if recovery_address == user.email:
            raise ValidationError(
                {"recovery_address": ["must be another mailbox: a reset link sent here could not be read"]}
            )
    user.display_name = display_name
    user.signature = signature.replace("\r\n", "\n")
    user.fetch_policy = fetch_policy
    user.remote_content = remote_content
    user.recovery_address = recovery_address
    user.save(update_fields=["display_name", "signature", "fetch_policy", "remote_content", "recovery_address"])
    return user


def system_sender(*, domain: Domain) -> User:
    """The domain's postmaster mailbox, created on first use; it cannot sign in unless an admin sets it up."""
    address = f"{SYSTEM_LOCAL_PART}@{domain.name}"
    user = User.objects.filter(email=address).first()
    if user is not None:
        return user
    user = User(email=address, local_part=SYSTEM_LOCAL_PART, domain=domain, is_active=False)
    user.set_unusable_password()
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError:  # created concurrently
        return User.objects.get(email=address)
    return user


def send_account_mail(*, user: User, subject: str, text: str) -> bool:
    """Send an account message (a password reset link) to the user's recovery address, through Pushmail.

    It leaves as ordinary pull-on-read mail from postmaster@<the user's domain>. Returns False,
    sending nothing, when the user has set no recovery address.
    """
    if not user.recovery_address:
        log.info("account mail for %s not sent: no recovery address", user.pk)
        return False
    subject = " ".join(subject.split())  # one line, whatever the template produced
    send_mail(sender=system_sender(domain=user.domain), to=[user.recovery_address], subject=subject, text=text)
    return True


def send_password_reset(*, user_id: int | None, origin: str) -> bool:
    """Mail a fresh password reset link for a mailbox to its recovery address (see send_account_mail).

    Runs in a worker, so the reset page answers as fast for a mailbox with a recovery address as for
    any other address (no enumeration by timing). ``user_id`` None (an unknown address) sends nothing;
    ``origin`` is the scheme and host the user asked from, e.g. "https://mail.example.org".
    """
    user = User.objects.select_related("domain").filter(pk=user_id, is_active=True).first() if user_id else None
    if user is None or not user.recovery_address:
        return False
    key = f"{user_pk_to_url_str(user)}-{allauth_settings.PASSWORD_RESET_TOKEN_GENERATOR().make_token(user)}"
    path = reverse("account_reset_password_from_key", kwargs={"uidb36": "UID", "key": "KEY"})
    context = {"user": user, "password_reset_url": origin.rstrip("/") + path.replace("UID-KEY", quote(key))}
    subject = render_to_string("account/email/password_reset_key_subject.txt", context)
    text = render_to_string("account/email/password_reset_key_message.txt", context)
    return send_account_mail(user=user, subject=subject, text=text)
