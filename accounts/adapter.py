from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from allauth.account.adapter import DefaultAccountAdapter
from allauth.account.internal.flows.login import AUTHENTICATION_METHODS_SESSION_KEY
from allauth.core import context as allauth_context
from django.http import HttpRequest

if TYPE_CHECKING:
    from .models import User

from pushmail_site.jobs import enqueue

from .models import User
from .tasks import send_password_reset

log = logging.getLogger(__name__)


class AccountAdapter(DefaultAccountAdapter):
    """Mailboxes are created by domain admins, never by self sign-up.

    Account mail (the password reset link) goes through Pushmail itself, from
    postmaster@<the user's domain> to the recovery address the user set. Nothing is
    sent for an unknown address or a mailbox without a recovery address, and the
    page says the same in every case (ACCOUNT_PREVENT_ENUMERATION).
    """

    def is_open_for_signup(self, request: HttpRequest) -> bool:
        return False

    def login(self, request: HttpRequest, user: User) -> None:
        super().login(request, user)
        # A sign-in that has just happened (password, and the second factor when one is set) is as
        # fresh as re-entering the password: security pages (two-factor, passkeys) open without
        # asking again until ACCOUNT_REAUTHENTICATION_TIMEOUT has passed, then they ask.
        records = request.session.get(AUTHENTICATION_METHODS_SESSION_KEY)
        if records:
            records[-1]["reauthenticated"] = True
            request.session[AUTHENTICATION_METHODS_SESSION_KEY] = records

    def format_email_subject(self, subject: str) -> str:
        return str(subject)  # no "[host]" prefix: the sender is already postmaster@<domain>

    def send_password_reset_mail(self, user: User, email: str, context: dict[str, Any]) -> None:
        # A worker builds a fresh link and sends it: the page answers alike for every address.
        self._queue_reset(user.pk)

    def _queue_reset(self, user_id: int | None) -> None:
        origin = allauth_context.request.build_absolute_uri("/")
        enqueue(send_password_reset, user_id, origin)

    def send_mail(self, template_prefix: str, email: str, context: dict[str, Any]) -> None:
        user = context.get("user")
        if not isinstance(user, User):
            # "Unknown account" mail: the address is whatever a stranger typed. Send nothing, but
            # queue the same (empty) work as for a mailbox, so the answer takes as long.
            if template_prefix == "account/email/unknown_account":
                self._queue_reset(None)
            log.info("account mail %s not sent: no mailbox", template_prefix)
            return
        # Only the password reset link leaves (send_password_reset_mail); nothing else allauth may
        # send (address confirmations above all: the mailbox address is fixed) goes anywhere.
        log.info("account mail %s for mailbox %s not sent", template_prefix, user.pk)
