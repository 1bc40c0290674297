"""Account pages Pushmail answers itself instead of allauth."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect


@login_required
def address_is_fixed(request: HttpRequest) -> HttpResponse:
    """allauth's "email addresses" page, closed: a mailbox's address is its sign-in and its identity.

    Adding or switching addresses would let a user sign in, or reset a password, under another
    address than the mailbox's. Nothing is changed, whatever the method.
    """
    messages.info(request, "Your mailbox address is your sign-in; it cannot be changed or added to here.")
    return redirect("webmail:settings")
