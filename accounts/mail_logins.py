"""Mail program sign-ins (SMTP submission, POP3, IMAP): app passwords with failures counted.

Every protocol that lets a mail program sign in asks :func:`check_mail_login`,
so failures are counted once per client address and per account name in the
shared cache, whichever protocol they came through: guessing over POP3 uses up
the same allowance as guessing over submission. Past either limit
(``PUSHMAIL_SUBMISSION_AUTH_FAILURES_PER_CLIENT`` and ``..._PER_ACCOUNT`` within
``PUSHMAIL_SUBMISSION_AUTH_WINDOW`` seconds) the password is not checked until
the window ends. An unknown address and a wrong password are the same failure.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache

from .models import User
from .services import app_password_user

__all__ = ["MailLogin", "check_mail_login", "plaintext_auth_allowed"]


@dataclass(frozen=True)
class MailLogin:
    """The outcome of a sign-in: the user, or None; ``throttled`` when the password was not even checked."""

    user: User | None
    throttled: bool = False


def _failure_keys(*, login: str, client_ip: str) -> list[tuple[str, int]]:
    account = hashlib.sha256(login.strip().lower().encode("utf-8", "replace")).hexdigest()
    return [
        (f"mail-login-failures:client:{client_ip}", settings.PUSHMAIL_SUBMISSION_AUTH_FAILURES_PER_CLIENT),
        (f"mail-login-failures:account:{account}", settings.PUSHMAIL_SUBMISSION_AUTH_FAILURES_PER_ACCOUNT),
    ]


def _count_failure(key: str) -> None:
    window = settings.PUSHMAIL_SUBMISSION_AUTH_WINDOW
    cache.add(key, 0, timeout=window)  # the window starts at the first failure
    try:
        cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=window)


def check_mail_login(*, login: str, password: str, client_ip: str) -> MailLogin:
    """Sign ``login`` (an address) in with ``password`` (one of its app passwords), counting failures."""
    keys = _failure_keys(login=login, client_ip=client_ip)
    if any(int(cache.get(key, 0)) >= limit for key, limit in keys):
        return MailLogin(user=None, throttled=True)
    user = app_password_user(address=login, password=password)
    if user is None:
        for key, _limit in keys:
            _count_failure(key)
    return MailLogin(user=user)


def plaintext_auth_allowed(peer_ip: str) -> bool:
    """A sign-in without TLS only from loopback: a password never crosses a network in the clear."""
    try:
        address = ipaddress.ip_address(peer_ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback  # 127.0.0.1 seen by a dual-stack [::] listener
    return address.is_loopback
