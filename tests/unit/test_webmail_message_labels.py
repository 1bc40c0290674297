"""Labels on an open message: shown on it, applied and removed from it."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import User
from mailbox import folders
from mailbox.models import EntryState
from tests.factories import InboxEntryFactory

pytestmark = pytest.mark.django_db


def shown_labels(html: str) -> list[str]:
    return re.findall(r'data-testid="message-label">([^<]+)<', html)


def test_an_open_message_shows_its_labels_and_takes_more(alice: User) -> None:
    web = Client()
    web.force_login(alice)
    work, home = folders.create_label(user=alice, name="Work"), folders.create_label(user=alice, name="Home")
    entry = InboxEntryFactory(owner=alice, state=EntryState.WITHDRAWN)
    folders.apply_label(user=alice, entry_ids=[entry.pk], label_id=home.pk)
    page = f"/mail/entry/{entry.pk}/"
    assert shown_labels(web.get(page).content.decode()) == ["Home"]

    action = reverse("webmail:entry-action", args=[entry.pk])
    applied = web.post(action, {"action": "label", "label": str(work.pk)})

    assert applied["Location"] == page  # the message stays open
    assert shown_labels(web.get(page).content.decode()) == ["Home", "Work"]
    web.post(action, {"action": f"unlabel:{home.pk}"})
    assert shown_labels(web.get(page).content.decode()) == ["Work"]
