"""Opening Compose, Reply or Forward changes nothing: a draft is stored on the first save."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from django.test import Client

from accounts.models import User
from mailbox.models import InboxEntry
from outbox.models import Draft
from outbox.services import send_message
from tests.factories import InboxEntryFactory

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}


@pytest.fixture
def web(alice: User) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def form_urls(page: str) -> dict[str, str]:
    """The URLs the compose form posts to: autosave, Send, Attach, Save draft and Delete draft."""
    return {
        "save": re.search(r'hx-post="([^"]+)"', page).group(1),  # type: ignore[union-attr]
        "send": re.search(r'<form id="compose-form"[^>]*action="([^"]+)"', page, re.S).group(1),  # type: ignore[union-attr]
        "attach": re.search(r'formaction="([^"]+attach/)"', page).group(1),  # type: ignore[union-attr]
        "delete": re.search(r'formaction="([^"]+delete/)"', page).group(1),  # type: ignore[union-attr]
    }


def fields(**overrides: str) -> dict[str, str]:
    return {"to": "", "cc": "", "bcc": "", "subject": "", "text": ""} | overrides


def test_opening_compose_stores_nothing(web: Client, alice: User, bob: User) -> None:
    entry = InboxEntry.objects.get(
        owner=alice, local=send_message(sender=bob, to=[alice.email], subject="Hi", text="x")
    )
    sent = send_message(sender=alice, to=[bob.email], subject="Mine", text="y")

    for path in (
        "/compose/",
        "/compose/?to=bob@alpha.test",
        "/compose/",
        f"/compose/reply/{entry.pk}/",
        f"/compose/reply/{entry.pk}/?all=1",
        f"/compose/forward/{entry.pk}/",
        f"/compose/reply-sent/{sent.pk}/",
        f"/compose/reply-sent/{sent.pk}/?all=1",
    ):
        response = web.get(path)
        assert response.status_code in (200, 302), path

    assert not Draft.objects.exists()
    page = web.get("/compose/?to=bob@alpha.test").content.decode()
    assert 'value="bob@alpha.test"' in page


def test_the_first_save_makes_one_draft_and_later_saves_update_it(web: Client, alice: User) -> None:
    urls = form_urls(web.get("/compose/").content.decode())

    first = web.post(urls["save"], fields(to="bob@alpha.test", subject="Plans"), headers=HTMX)
    second = web.post(urls["save"], fields(to="bob@alpha.test", subject="Plans", text="more"), headers=HTMX)

    draft = Draft.objects.get(owner=alice)
    assert first.status_code == second.status_code == 200
    assert first["HX-Replace-Url"] == f"/compose/{draft.pk}/"  # a reload now opens the stored draft
    assert (draft.subject, draft.text) == ("Plans", "more")

    sent = web.post(urls["send"], fields(to="bob@alpha.test", subject="Plans", text="final"))
    assert sent.status_code == 302 and sent["Location"] == "/mail/inbox/"  # back where compose was opened from
    assert Draft.objects.count() == 1
    draft.refresh_from_db()
    assert draft.text == "final" and draft.send_at is not None


def test_an_autosave_of_an_untouched_form_stores_nothing(web: Client, alice: User) -> None:
    alice.signature = "Alice"
    alice.save(update_fields=["signature"])
    urls = form_urls(web.get("/compose/").content.decode())

    response = web.post(urls["save"], fields(text="\r\n-- \r\nAlice\r\n"), headers=HTMX)  # a Tab through it

    assert response.status_code == 200
    assert not Draft.objects.exists()
    web.post(urls["save"], fields(text="Hello\n\n-- \nAlice\n"), headers=HTMX)
    assert Draft.objects.get(owner=alice).text == "Hello\n\n-- \nAlice\n"


def test_two_compose_pages_make_two_drafts(web: Client, alice: User) -> None:
    for subject in ("One", "Two"):
        urls = form_urls(web.get("/compose/").content.decode())
        web.post(urls["save"], fields(subject=subject), headers=HTMX)

    assert sorted(Draft.objects.values_list("subject", flat=True)) == ["One", "Two"]


@pytest.mark.parametrize("action", ["send", "attach"])
def test_send_or_attach_without_an_autosave_makes_the_draft(web: Client, alice: User, action: str) -> None:
    urls = form_urls(web.get("/compose/").content.decode())

    response = web.post(urls[action], fields(to="bob@alpha.test", subject="Direct"))

    draft = Draft.objects.get(owner=alice)
    # Send goes back to where compose was opened from (the inbox here); Attach stays on the draft.
    assert response.status_code == 302
    assert response["Location"] == ("/mail/inbox/" if action == "send" else f"/compose/{draft.pk}/")
    assert draft.subject == "Direct"


def test_deleting_a_message_never_saved_stores_nothing(web: Client, alice: User) -> None:
    urls = form_urls(web.get("/compose/").content.decode())

    response = web.post(urls["delete"], fields(subject="Never mind"))

    assert response.status_code == 302
    assert not Draft.objects.exists()


def test_another_users_key_never_reaches_their_draft(web: Client, alice: User, bob: User) -> None:
    key = uuid.uuid4()
    web.post(f"/compose/new/{key}/save/", fields(subject="Alice's"), headers=HTMX)
    other = Client()
    other.force_login(bob)

    other.post(f"/compose/new/{key}/save/", fields(subject="Bob's"), headers=HTMX)

    assert sorted(Draft.objects.values_list("owner__email", "subject")) == [
        (alice.email, "Alice's"),
        (bob.email, "Bob's"),
    ]


def test_reply_and_forward_make_a_draft_once_per_page(web: Client, alice: User, bob: User) -> None:
    entry = InboxEntry.objects.get(
        owner=alice, local=send_message(sender=bob, to=[alice.email], subject="Lunch", text="Noon?")
    )
    page = web.get(f"/mail/entry/{entry.pk}/").content.decode()
    key = re.search(r'name="key" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    assert f'<form method="post" action="/compose/reply/{entry.pk}/">' in page

    first = web.post(f"/compose/reply/{entry.pk}/", {"key": key})
    again = web.post(f"/compose/reply/{entry.pk}/", {"key": key})  # a double click
    forward = web.post(f"/compose/forward/{entry.pk}/", {"key": key})

    reply = Draft.objects.get(owner=alice, subject="Re: Lunch")
    assert first["Location"] == again["Location"] == f"/compose/{reply.pk}/"
    assert forward["Location"] == f"/compose/{Draft.objects.get(owner=alice, subject='Fwd: Lunch').pk}/"
    assert Draft.objects.count() == 2


def test_a_reply_without_a_key_still_works(web: Client, alice: User) -> None:
    entry = InboxEntryFactory(owner=alice, subject="Old page")

    response: Any = web.post(f"/compose/reply/{entry.pk}/")

    assert response.status_code == 302
    assert Draft.objects.get(owner=alice).subject == "Re: Old page"
