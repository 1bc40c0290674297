"""A new message keeps a draft only while it holds something: emptied again, its draft is discarded."""

from __future__ import annotations

import pytest
from django.test import Client

from accounts.models import User
from outbox.models import Draft
from tests.unit.test_compose_no_draft_on_get import HTMX, fields, form_urls

pytestmark = pytest.mark.django_db


@pytest.fixture
def web(alice: User) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def test_save_draft_on_an_untouched_message_keeps_nothing_and_goes_back(web: Client) -> None:
    urls = form_urls(web.get("/compose/", HTTP_REFERER="http://testserver/mail/archive/").content.decode())

    response = web.post(urls["save"], fields(next="/mail/archive/"), follow=True)

    assert not Draft.objects.exists()
    assert response.redirect_chain[-1][0] == "/mail/archive/"
    assert "Nothing to save: the message is empty, so no draft was kept." in response.content.decode()


def test_a_message_written_then_erased_leaves_no_draft_and_writing_again_makes_one(web: Client, alice: User) -> None:
    urls = form_urls(web.get("/compose/").content.decode())
    web.post(urls["save"], fields(subject="Plans"), headers=HTMX)
    assert Draft.objects.filter(owner=alice).count() == 1

    erased = web.post(urls["save"], fields(), headers=HTMX)

    assert not Draft.objects.exists()
    assert erased["HX-Replace-Url"] == "/compose/"
    web.post(urls["save"], fields(subject="Plans again"), headers=HTMX)
    assert list(Draft.objects.values_list("subject", flat=True)) == ["Plans again"]


def test_a_stored_draft_opened_again_is_kept_even_when_emptied(web: Client, alice: User) -> None:
    urls = form_urls(web.get("/compose/").content.decode())
    web.post(urls["save"], fields(subject="Plans"), headers=HTMX)
    draft = Draft.objects.get(owner=alice)
    reopened = form_urls(web.get(f"/compose/{draft.pk}/").content.decode())

    web.post(reopened["save"], fields(), headers=HTMX)

    assert Draft.objects.filter(pk=draft.pk).exists()  # the person chose to keep it: Delete draft removes it
