"""A minimal landing page until the webmail lands: who you are and your inbox."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from mailbox.selectors import inbox_for


def home(request: HttpRequest) -> HttpResponse:
    entries = inbox_for(user=request.user)[:50] if request.user.is_authenticated else []
    return render(request, "home.html", {"entries": entries})
