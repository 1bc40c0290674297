"""Who may read what: a received file only from its own sender, and nothing of a withdrawn or refused message.

Two attacks this file keeps out:

- A hostile peer announces an attachment whose digest names a file another
  user of this instance stored. The instance must still ask that peer for the
  bytes (it does not serve them), and the reader gets the answer a digest
  never stored here gets: no bytes, through no path (API, download, preview,
  .eml, forward), and no sign that the file is here.
- After a withdrawal (or a refused body) nothing of the message is readable
  by whoever had not opened it, through any path: the page, text, HTML, .eml,
  reply, forward, search, the API, attachment downloads and previews.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import re
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from attachments.services import AttachmentInput, store_upload
from federation import http, payloads
from mailbox import attachment_fetching as fetching
from mailbox.models import EntryState, FetchState, InboxEntry, ReceivedAttachment, RemoteMessage
from mailbox.search import parse_query, rebuild_documents, search_entries
from mailbox.services import fetch_body, request_fetch
from outbox.models import Draft, DraftAttachment, Message
from outbox.services import send_message, withdraw_message
from tests.conftest import Call, FakePeer, FederationClient, api_as
from tests.factories import MailboxFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]

SECRET = b"%PDF-1.4 Bob's payslip: 7,000 a month. Do not share."
ATTACHMENT_PATH = r"/federation/v1/messages/[^/]+/attachments/[^/]+(.*)"


@pytest.fixture(autouse=True)
def media(settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def digest_of(content: bytes) -> str:
    return "sha-256:" + hashlib.sha256(content).hexdigest()


def login(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def text_of(response: Any) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode(errors="replace")
    return html.unescape(response.content.decode(errors="replace"))


def raw_bytes(response: Any) -> bytes:
    return b"".join(response.streaming_content) if getattr(response, "streaming", False) else response.content


# --- a message at the fake peer ------------------------------------------------------------------------------


def peer_message(
    recipients: list[str],
    manifest: list[dict[str, Any]],
    *,
    text: str = "See the attached file.",
    sender: str = "carol@peer.test",
) -> dict[str, Any]:
    """A message held by a peer: its canonical body and its signed notification."""
    global_id = uuid.uuid4()
    now = timezone.now().replace(microsecond=0)
    message_id = f"<{global_id}@{sender.rpartition('@')[2]}>"
    content = payloads.canonical_body(
        global_id=global_id,
        message_id=message_id,
        sender=sender,
        to=recipients,
        cc=[],
        subject="Your file",
        date=now,
        text=text,
        html=None,
        in_reply_to="",
        references=[],
        attachments=manifest,
    )
    notification = payloads.Notification(
        global_id=global_id,
        message_id=message_id,
        sender=sender,
        recipients=recipients,
        subject="Your file",
        date=now,
        size=len(content),
        digest=payloads.digest(content),
        in_reply_to="",
        references=[],
        expires=now + timedelta(days=30),
        attachments=tuple(payloads.ManifestEntry(**m) for m in manifest),
    )
    return {"global_id": global_id, "content": content, "notification": notification}


def serve_files(peer: FakePeer, files: dict[str, bytes]) -> None:
    """The peer serves exactly these files (by digest); anything else is a 404, as a real peer answers."""

    def handler(call: Call) -> http.Response:
        content = files.get(call.path.rsplit("/", 1)[1])
        if content is None:
            return http.Response(
                status=404, headers={"content-type": "application/json"}, content=b'{"error":"not_found"}', url=""
            )
        return http.Response(status=200, headers={"content-type": "application/octet-stream"}, content=content, url="")

    peer.on("GET", ATTACHMENT_PATH, handler)


def notify(peer: FakePeer, message: dict[str, Any]) -> RemoteMessage:
    response = FederationClient().notify(peer, message["notification"].to_json())
    assert response.status_code == 200, response.content
    return RemoteMessage.objects.get(global_id=message["global_id"])


def fetch(peer: FakePeer, message: dict[str, Any], remote: RemoteMessage) -> None:
    """The body arrives as it would on open: requested, then fetched by the worker."""
    peer.bodies[str(message["global_id"])] = message["content"]
    request_fetch(remote_id=remote.pk)
    fetch_body(remote.pk)


def run_attachment_fetches() -> None:
    """What a worker does: every attachment fetch that is due runs now."""
    due = ReceivedAttachment.objects.filter(state__in=["wanted", "unavailable"], next_attempt_at__lte=timezone.now())
    for job_id in due.values_list("pk", flat=True):
        fetching.fetch_attachment(job_id)


def fetched(get: Any, *args: Any) -> Any:
    """A request for a file still at the sender's: answered 202 at once; asked again after the worker ran."""
    first = get(*args)
    if first.status_code != 202:
        return first
    run_attachment_fetches()
    return get(*args)


def attachment_gets(peer: FakePeer, global_id: uuid.UUID) -> list[Call]:
    return [c for c in peer.calls if f"/messages/{global_id}/attachments/" in c.path]


def entry_url(name: str, entry: InboxEntry, **kwargs: Any) -> str:
    return reverse(f"webmail:{name}", kwargs={"entry_id": entry.pk, **kwargs})


def bob_keeps_a_private_file(bob: User) -> None:
    """Bob sends himself his payslip: the bytes are now stored on this instance."""
    blob = store_upload(file=SimpleUploadedFile("payslip.pdf", SECRET))
    send_message(
        sender=bob,
        to=[bob.email],
        subject="payslip",
        text="for my records",
        attachments=[AttachmentInput(blob=blob, name="payslip.pdf", content_type="application/pdf")],
    )


# --- a peer's manifest naming a file stored here ------------------------------------------------------------


def _normalized(text: str, *values: object) -> str:
    """The answer itself (a page's alert, or the API's JSON), with the message's own ids left out."""
    found = re.search(r'<section class="attachment-(?:unavailable|fetch-page)".*?</section>', text, re.S)
    text = found.group(0) if found else text
    # Per request, not per message: a form's token, the time of the last try, the jittered next one.
    text = re.sub(r'name="csrfmiddlewaretoken" value="[^"]*"', "", text)
    text = re.sub(r"<time[^>]*>[^<]*</time>", "<time>", text)
    text = re.sub(r'"next_attempt_at":\s*"[^"]*"', "", text)
    for value in values:
        text = text.replace(str(value), "<x>")
    return text


def test_a_manifest_naming_another_users_file_gets_the_answer_of_a_file_never_stored_here(
    alice: User, bob: User, peer: FakePeer
) -> None:
    bob_keeps_a_private_file(bob)
    never_stored = b"%PDF-1.4 something nobody here has" + b"." * (len(SECRET) - 34)
    assert len(never_stored) == len(SECRET)
    serve_files(peer, {})  # the peer has neither file: it only knows the digest
    attack = peer_message(
        [alice.email], [{"name": "q.pdf", "type": "application/pdf", "size": len(SECRET), "digest": digest_of(SECRET)}]
    )
    control = peer_message(
        [alice.email],
        [{"name": "q.pdf", "type": "application/pdf", "size": len(SECRET), "digest": digest_of(never_stored)}],
    )
    entries = {}
    for name, message in (("attack", attack), ("control", control)):
        remote = notify(peer, message)
        entries[name] = InboxEntry.objects.get(owner=alice, remote=remote)
    api = api_as(alice)
    web = login(alice)

    def ask(entry: InboxEntry) -> list[Any]:
        return [
            api.get(f"/api/v1/inbox/{entry.pk}/attachments/0/"),
            web.get(entry_url("entry-attachment", entry, index=0)),
            web.get(entry_url("entry-attachment", entry, index=0), {"inline": "1"}),
        ]

    answers = {}
    for name, entry in entries.items():
        detail = api.get(f"/api/v1/inbox/{entry.pk}/").json()
        while_fetching = ask(entry)
        run_attachment_fetches()
        after = ask(entry)
        message = attack if name == "attack" else control
        ids = (message["global_id"], message["notification"].attachments[0].digest, f"/mail/entry/{entry.pk}/")
        answers[name] = [detail["attachments"][0]["at_sender"]]
        for response in while_fetching + after:
            assert SECRET not in raw_bytes(response)
            answers[name] += [response.status_code, _normalized(text_of(response), *ids)]
        # Asked of the sender, whatever is stored here: no skipped fetch to observe.
        assert len(attachment_gets(peer, message["global_id"])) == 1

    assert answers["attack"] == answers["control"]
    assert answers["attack"][0] is True  # still at the sender's
    assert answers["attack"][1:7:2] == [202, 202, 202]  # the fetch is started, then joined
    assert answers["attack"][7] == 502 and "attachment_unavailable" in answers["attack"][8]
    assert not ReceivedAttachment.objects.verified().exists()


def test_the_file_is_not_in_the_eml_nor_attached_by_forward(alice: User, bob: User, peer: FakePeer) -> None:
    bob_keeps_a_private_file(bob)
    serve_files(peer, {})
    attack = peer_message(
        [alice.email],
        [{"name": "q.pdf", "type": "application/pdf", "size": len(SECRET), "digest": digest_of(SECRET)}],
    )
    remote = notify(peer, attack)
    fetch(peer, attack, remote)  # the peer serves its body: the message itself is readable
    entry = InboxEntry.objects.get(owner=alice, remote=remote)
    assert entry.state == EntryState.FETCHED
    web = login(alice)

    eml = web.get(entry_url("entry-eml", entry))
    assert eml.status_code == 200
    assert SECRET not in eml.content and base64.b64encode(SECRET[:30]) not in eml.content
    assert "Attachments still at the sender's server" in eml.content.decode()
    assert "- q.pdf (application/pdf" in eml.content.decode()

    response = web.post(reverse("webmail:forward", kwargs={"entry_id": entry.pk}), follow=True)
    draft = Draft.objects.get(owner=alice)
    assert not DraftAttachment.objects.filter(draft=draft).exists()
    assert "q.pdf" in text_of(response) and "not been downloaded" in text_of(response)


def test_a_wrong_size_never_serves_the_stored_file(alice: User, bob: User, peer: FakePeer) -> None:
    bob_keeps_a_private_file(bob)
    serve_files(peer, {})
    attack = peer_message(
        [alice.email],
        [{"name": "q.pdf", "type": "application/pdf", "size": len(SECRET) + 1, "digest": digest_of(SECRET)}],
    )
    entry = InboxEntry.objects.get(owner=alice, remote=notify(peer, attack))

    download = fetched(api_as(alice).get, f"/api/v1/inbox/{entry.pk}/attachments/0/")

    assert download.status_code == 502 and SECRET not in raw_bytes(download)


def test_bytes_from_the_sender_are_served_and_a_repeat_is_not_fetched_again(
    alice: User, bob: User, peer: FakePeer, local_domain: Any, media: Path
) -> None:
    """A peer that really has the file sends it; every recipient of that message then shares the copy."""
    bob_keeps_a_private_file(bob)
    dave = MailboxFactory(domain=local_domain, local_part="dave")
    serve_files(peer, {digest_of(SECRET): SECRET})
    message = peer_message(
        [alice.email, dave.email],
        [{"name": "q.pdf", "type": "application/pdf", "size": len(SECRET), "digest": digest_of(SECRET)}],
    )
    remote = notify(peer, message)

    alice_entry = InboxEntry.objects.get(owner=alice, remote=remote)
    first = fetched(api_as(alice).get, f"/api/v1/inbox/{alice_entry.pk}/attachments/0/")
    second = api_as(dave).get(f"/api/v1/inbox/{InboxEntry.objects.get(owner=dave, remote=remote).pk}/attachments/0/")

    assert raw_bytes(first) == SECRET and raw_bytes(second) == SECRET
    assert len(attachment_gets(peer, message["global_id"])) == 1  # fetched from the sender once, even though stored
    assert len([p for p in media.rglob("*") if p.is_file()]) == 1


def test_a_notification_naming_another_messages_body_digest_shows_no_body(
    alice: User, bob: User, peer: FakePeer, other_peer: FakePeer
) -> None:
    """Bodies are kept per message and fetched from its own sender, never found by digest."""
    private = peer_message([bob.email], [], text="Bob's private body text", sender="erin@other.test")
    remote = notify(other_peer, private)
    fetch(other_peer, private, remote)
    assert RemoteMessage.objects.get(pk=remote.pk).state == FetchState.FETCHED
    copycat = peer_message([alice.email], [], text="whatever")
    forged = dataclasses.replace(
        copycat["notification"], size=private["notification"].size, digest=private["notification"].digest
    )
    mine = notify(peer, {**copycat, "notification": forged})
    entry = InboxEntry.objects.get(owner=alice, remote=mine)

    request_fetch(remote_id=mine.pk)
    fetch_body(mine.pk)  # the peer has no such body

    detail = api_as(alice).get(f"/api/v1/inbox/{entry.pk}/")
    assert detail.json()["body"] is None
    assert "Bob's private body text" not in text_of(login(alice).get(entry_url("entry", entry)))
    assert peer.calls_to("GET", f"/federation/v1/messages/{copycat['global_id']}/body")


# --- withdrawn or refused: nothing of it is readable -----------------------------------------------------------------

TOKEN = "zanzibar-quarterly-figures"
FILE = b"the quarterly figures, in full"


def _withdrawn_remote(alice: User, bob: User, peer: FakePeer) -> InboxEntry:
    """Bob opened it and fetched its file; then the sender withdrew it. Alice never opened it."""
    serve_files(peer, {digest_of(FILE): FILE})
    message = peer_message(
        [alice.email, bob.email],
        [{"name": "figures.txt", "type": "text/plain", "size": len(FILE), "digest": digest_of(FILE)}],
        text=f"The numbers: {TOKEN}",
    )
    remote = notify(peer, message)
    fetch(peer, message, remote)
    bob_entry = InboxEntry.objects.get(owner=bob, remote=remote)
    bob_web = login(bob)
    assert TOKEN in text_of(bob_web.get(entry_url("entry", bob_entry)))
    assert raw_bytes(fetched(bob_web.get, entry_url("entry-attachment", bob_entry, index=0))) == FILE
    assert FederationClient().withdraw(peer, message["global_id"], "carol@peer.test").status_code == 200
    # Bob keeps what he opened: the body and the file are still on this instance.
    assert TOKEN in text_of(bob_web.get(entry_url("entry-text", bob_entry)))
    assert raw_bytes(bob_web.get(entry_url("entry-attachment", bob_entry, index=0))) == FILE
    return InboxEntry.objects.get(owner=alice, remote=remote)


def _withdrawn_local(alice: User, bob: User, peer: FakePeer) -> InboxEntry:
    blob = store_upload(file=SimpleUploadedFile("figures.txt", FILE))
    message = send_message(
        sender=bob,
        to=[alice.email],
        subject="Your file",
        text=f"The numbers: {TOKEN}",
        attachments=[AttachmentInput(blob=blob, name="figures.txt", content_type="text/plain")],
    )
    withdraw_message(message=Message.objects.get(pk=message.pk))
    return InboxEntry.objects.get(owner=alice, local=message)


def _tampered(alice: User, bob: User, peer: FakePeer) -> InboxEntry:
    """Alice fetched the file first; then the body came back other than announced."""
    serve_files(peer, {digest_of(FILE): FILE})
    message = peer_message(
        [alice.email],
        [{"name": "figures.txt", "type": "text/plain", "size": len(FILE), "digest": digest_of(FILE)}],
        text=f"The numbers: {TOKEN}",
    )
    remote = notify(peer, message)
    entry = InboxEntry.objects.get(owner=alice, remote=remote)
    assert raw_bytes(fetched(login(alice).get, entry_url("entry-attachment", entry, index=0))) == FILE
    assert ReceivedAttachment.objects.verified().filter(remote=remote).exists()
    fetch(peer, {**message, "content": message["content"].replace(b"numbers", b"NUMBERS")}, remote)
    assert RemoteMessage.objects.get(pk=remote.pk).state == FetchState.TAMPERED
    return InboxEntry.objects.get(pk=entry.pk)


SCENARIOS = {"withdrawn": _withdrawn_remote, "withdrawn-local": _withdrawn_local, "tampered": _tampered}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_nothing_of_a_hidden_message_is_readable_by_any_path(
    scenario: str, alice: User, bob: User, peer: FakePeer
) -> None:
    entry = SCENARIOS[scenario](alice, bob, peer)
    assert entry.opened_at is None
    web = login(alice)
    api = api_as(alice)

    # The message page, its body region, text, HTML and .eml.
    for name in ("entry", "entry-body"):
        page = text_of(web.get(entry_url(name, entry)))
        assert TOKEN not in page and 'data-testid="attachment-link"' not in page and "figures.txt" not in page
    for name in ("entry-text", "entry-html", "entry-eml"):
        assert web.get(entry_url(name, entry)).status_code == 404, name

    # The file, downloaded or previewed, in the webmail and the API.
    for query in ({}, {"inline": "1"}):
        response = web.get(entry_url("entry-attachment", entry, index=0), query)
        assert response.status_code == 404 and FILE not in raw_bytes(response)
    response = api.get(f"/api/v1/inbox/{entry.pk}/attachments/0/")
    assert response.status_code == 404 and FILE not in raw_bytes(response)
    detail = api.get(f"/api/v1/inbox/{entry.pk}/").json()
    assert detail["body"] is None and detail["attachments"] == []

    # Reply and forward carry neither the text nor the file (a withdrawn message offers neither).
    for name, query in (("reply", {}), ("reply", {"all": "1"}), ("forward", {})):
        web.post(reverse(f"webmail:{name}", kwargs={"entry_id": entry.pk}), query)
    drafts = list(Draft.objects.filter(owner=alice))
    assert len(drafts) == (0 if scenario.startswith("withdrawn") else 3)
    assert all(TOKEN not in draft.text for draft in drafts)
    assert not DraftAttachment.objects.filter(draft__owner=alice).exists()

    # Search, as written by the services and as rebuilt.
    assert not search_entries(user=alice, query=parse_query(TOKEN)).exists()
    rebuild_documents()
    assert not search_entries(user=alice, query=parse_query(TOKEN)).exists()
    assert not search_entries(user=alice, query=parse_query("figures.txt")).exists()
