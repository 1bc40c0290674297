"""Attachments: stored once by SHA-256, announced in a manifest the digest pins, served to
recipient domains only, and fetched by a recipient only when a reader opens one."""

from __future__ import annotations

import hashlib
import html
import io
import json
import re
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, TestCase
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from attachments import services
from attachments.models import Blob
from attachments.selectors import usage_bytes
from attachments.services import AttachmentInput, DigestMismatch, store_upload, store_verified
from federation import http, payloads
from mailbox import attachment_fetching as fetching
from mailbox.models import FetchState, InboxEntry, ReceivedAttachment, RemoteMessage
from mailbox.selectors import attachment_items_for_entry
from mailbox.services import fetch_body
from outbox.models import AttachmentFetch, Draft, DraftAttachment, Message, MessageAttachment
from outbox.selectors import attachment_items_for_message
from outbox.services import canonical_content, notification_for, send_message, withdraw_message
from tests.conftest import Call, FakePeer, FederationClient
from tests.factories import MailboxFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40 + b"pixels"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


@pytest.fixture(autouse=True)
def media(settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def stored_files(media: Path) -> list[Path]:
    return [p for p in media.rglob("*") if p.is_file()]


def upload(content: bytes, name: str = "file.bin") -> Blob:
    return store_upload(file=SimpleUploadedFile(name, content))


def digest_of(content: bytes) -> str:
    return "sha-256:" + hashlib.sha256(content).hexdigest()


def page_text(response: Any) -> str:
    return html.unescape(response.content.decode())


def login(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


# --- storing once ------------------------------------------------------------------------------


def test_the_same_bytes_are_stored_once_whatever_their_name_or_source(media: Path) -> None:
    first = upload(b"quarterly numbers", "q4.txt")
    again = store_upload(file=io.BytesIO(b"quarterly numbers"))
    other = upload(b"something else", "q4.txt")

    assert first.pk == again.pk
    assert other.pk != first.pk
    assert Blob.objects.count() == 2
    assert len(stored_files(media)) == 2
    assert first.digest == digest_of(b"quarterly numbers") and first.size == 17
    assert first.file.name == f"blobs/{first.sha256[:2]}/{first.sha256[2:4]}/{first.sha256}"
    with default_storage.open(first.file.name) as f:
        assert f.read() == b"quarterly numbers"


def test_bytes_stored_without_a_lookup_are_still_stored_once(media: Path) -> None:
    """``likely_new`` (a received message's raw bytes) skips the lookup, not the one-row rule."""
    first = store_upload(file=io.BytesIO(b"Received: ...\r\n\r\nhello"), likely_new=True)
    again = store_upload(file=io.BytesIO(b"Received: ...\r\n\r\nhello"), likely_new=True)

    assert again.pk == first.pk and again.file.name == first.file.name
    assert Blob.objects.count() == 1
    assert len(stored_files(media)) == 1  # the second copy written was removed
    with default_storage.open(first.file.name) as f:
        assert f.read() == b"Received: ...\r\n\r\nhello"


def test_a_file_over_the_limit_is_refused_with_a_message_and_nothing_is_stored(media: Path) -> None:
    with pytest.raises(ValidationError) as refused:
        store_upload(file=SimpleUploadedFile("big.iso", b"x" * 2048), max_bytes=1024)

    assert "big.iso is larger than the 1.0 KiB limit" in refused.value.messages[0]
    assert not Blob.objects.exists() and not stored_files(media)


def test_a_concurrent_duplicate_upload_makes_one_row_and_keeps_one_file(
    media: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find = services._find

    def racing_find(sha256: str) -> Blob | None:
        # Another request stores the same bytes between our lookup and our insert.
        monkeypatch.setattr(services, "_find", real_find)
        store_upload(file=io.BytesIO(b"same bytes"))
        return None

    monkeypatch.setattr(services, "_find", racing_find)

    blob = store_upload(file=io.BytesIO(b"same bytes"))

    assert Blob.objects.count() == 1
    assert Blob.objects.get().pk == blob.pk
    assert len(stored_files(media)) == 1


def test_verified_bytes_are_stored_and_a_mismatch_stores_nothing(media: Path) -> None:
    good = b"the real attachment"
    with pytest.raises(DigestMismatch):
        store_verified(stream=io.BytesIO(b"the fake attachment"), expected_digest=digest_of(good), expected_size=19)
    with pytest.raises(DigestMismatch):
        store_verified(stream=io.BytesIO(good + b"!"), expected_digest=digest_of(good), expected_size=len(good))
    with pytest.raises(DigestMismatch):
        store_verified(stream=io.BytesIO(good[:-1]), expected_digest=digest_of(good), expected_size=len(good))
    assert not Blob.objects.exists() and not stored_files(media)

    blob = store_verified(stream=io.BytesIO(good), expected_digest=digest_of(good), expected_size=len(good))
    assert blob.digest == digest_of(good) and len(stored_files(media)) == 1


# --- the manifest on the wire ---------------------------------------------------------------------

ENTRY = {"name": "plan.pdf", "type": "application/pdf", "size": 10, "digest": "sha-256:" + "a" * 64}


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"name": "../etc/passwd"}, "attachments[0].name: contains a path separator"),
        ({"name": "a\\b.txt"}, "attachments[0].name: contains a path separator"),
        ({"name": "evil\u202etxt.exe"}, "attachments[0].name: contains a control or formatting character"),
        ({"name": "line\nbreak"}, "attachments[0].name: contains a control or formatting character"),
        ({"name": ""}, "attachments[0].name: must be 1 to 255 characters"),
        ({"name": "x" * 256}, "attachments[0].name: must be 1 to 255 characters"),
        ({"name": ".."}, "attachments[0].name: must not be only dots"),
        ({"name": 7}, "attachments[0].name: expected a string"),
        ({"type": "text/html; charset=utf-8"}, "attachments[0].type: expected a lowercase MIME type"),
        ({"type": "Image/PNG"}, "attachments[0].type: expected a lowercase MIME type"),
        ({"type": "nonsense"}, "attachments[0].type: expected a lowercase MIME type"),
        ({"size": -1}, "attachments[0].size: expected an integer of at least 0"),
        ({"size": "10"}, "attachments[0].size: expected an integer of at least 0"),
        ({"size": True}, "attachments[0].size: expected an integer of at least 0"),
        ({"digest": "sha-256:" + "A" * 64}, "attachments[0].digest: expected 'sha-256:'"),
        ({"digest": "md5:" + "a" * 32}, "attachments[0].digest: expected 'sha-256:'"),
    ],
)
def test_each_manifest_problem_is_named(change: dict[str, Any], error: str) -> None:
    with pytest.raises(payloads.PayloadError) as bad:
        payloads.parse_manifest([ENTRY | change])
    assert str(bad.value).startswith(error)


def test_manifest_shape_and_count_limits_are_named() -> None:
    for value, error in [
        ({"a": 1}, "attachments: expected a list"),
        (["x"], "attachments[0]: expected an object"),
        ([ENTRY] * 101, "attachments: 101 exceeds the limit of 100 attachments"),
    ]:
        with pytest.raises(payloads.PayloadError) as bad:
            payloads.parse_manifest(value)
        assert str(bad.value).startswith(error)


def test_a_notification_with_a_bad_manifest_is_refused_naming_the_entry(
    alice: User, peer: FakePeer, federation: FederationClient
) -> None:
    message = _peer_message(alice, [("../x", "text/plain", b"hi")])
    payload = message["notification"].to_json()

    response = federation.notify(peer, payload)

    assert response.status_code == 400
    assert response.json()["detail"].startswith("attachments[0].name: contains a path separator")
    assert not RemoteMessage.objects.exists()


# --- sender side -------------------------------------------------------------------------------------


def _send(sender: User, files: list[tuple[str, str, bytes]], **kwargs: Any) -> Message:
    attachments = [
        AttachmentInput(blob=upload(content, name), name=name, content_type=kind) for name, kind, content in files
    ]
    return send_message(
        sender=sender,
        to=kwargs.pop("to", ["carol@peer.test"]),
        subject="With files",
        text="See attached.",
        attachments=attachments,
        **kwargs,
    )


def test_send_message_stores_attachments_and_the_digest_pins_the_manifest(alice: User) -> None:
    message = _send(alice, [("plan.pdf", "application/pdf", b"%PDF-1.4 plan"), ("logo.png", "image/png", PNG)])

    body = json.loads(canonical_content(message))
    assert body["attachments"] == [
        {"name": "plan.pdf", "type": "application/pdf", "size": 13, "digest": digest_of(b"%PDF-1.4 plan")},
        {"name": "logo.png", "type": "image/png", "size": len(PNG), "digest": digest_of(PNG)},
    ]
    assert message.digest == payloads.digest(canonical_content(message))
    assert message.size == len(canonical_content(message))
    assert [a.name for a in message.attachments.all()] == ["plan.pdf", "logo.png"]
    notification = notification_for(message.deliveries.get())
    assert [a.to_json() for a in notification.attachments] == body["attachments"]
    assert notification.to_json()["attachments"] == body["attachments"]


def test_a_message_without_attachments_has_the_body_and_notification_it_always_had(alice: User) -> None:
    message = send_message(sender=alice, to=["carol@peer.test"], subject="Plain", text="No files.")

    content = canonical_content(message)
    assert b"attachments" not in content
    assert "attachments" not in notification_for(message.deliveries.get()).to_json()


def test_names_and_types_are_cleaned_before_they_go_on_the_wire(alice: User) -> None:
    message = _send(alice, [("C:\\Users\\ann\\report\u202e.txt", "Text/Plain; charset=utf-8", b"report")])

    attachment = message.attachments.get()
    assert (attachment.name, attachment.content_type) == ("report.txt", "text/plain")
    payloads.parse_manifest(json.loads(canonical_content(message))["attachments"])  # valid on the wire


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("PUSHMAIL_MAX_ATTACHMENT_BYTES", 10, "is larger than the 10 bytes limit for one attachment"),
        ("PUSHMAIL_MAX_MESSAGE_ATTACHMENTS_BYTES", 20, "over the 20 bytes limit for one message"),
    ],
)
def test_send_message_enforces_attachment_limits_and_sends_nothing(
    alice: User, settings: Any, setting: str, value: int, expected: str
) -> None:
    blobs = [upload(b"0123456789abcdef", "a.txt"), upload(b"fedcba9876543210", "b.txt")]
    setattr(settings, setting, value)

    with pytest.raises(ValidationError) as refused:
        send_message(
            sender=alice,
            to=["carol@peer.test"],
            subject="Too big",
            text="",
            attachments=[
                AttachmentInput(blob=b, name=f"{i}.txt", content_type="text/plain") for i, b in enumerate(blobs)
            ],
        )

    assert expected in refused.value.message_dict["attachments"][0]
    assert not Message.objects.exists() and not MessageAttachment.objects.exists()


def test_send_message_refuses_a_message_that_would_overfill_the_mailbox(alice: User) -> None:
    alice.quota_bytes = 100
    alice.save(update_fields=["quota_bytes"])

    with pytest.raises(ValidationError) as refused:
        _send(alice, [("big.bin", "application/octet-stream", b"x" * 101)])

    assert "Your mailbox is full" in refused.value.message_dict["attachments"][0]
    assert not Message.objects.exists()


def test_usage_counts_sent_messages_their_attachments_drafts_and_fetched_mail(alice: User, peer: FakePeer) -> None:
    assert usage_bytes(alice) == 0
    message = _send(alice, [("a.txt", "text/plain", b"x" * 1000)])
    draft = Draft.objects.create(owner=alice)
    blob = upload(b"y" * 500)
    DraftAttachment.objects.create(draft=draft, blob=blob, name="d.txt", content_type="text/plain", size=500)
    received = _receive(alice, peer, [("r.txt", "text/plain", b"r")])
    assert usage_bytes(alice) == message.size + 1000 + 500  # received mail is still at the sender's

    RemoteMessage.objects.filter(pk=received["remote"].pk).update(state=FetchState.FETCHED)
    InboxEntry.objects.filter(remote=received["remote"]).update(state=FetchState.FETCHED)
    assert usage_bytes(alice) == message.size + 1000 + 500 + received["remote"].size


# --- the federation endpoint ----------------------------------------------------------------------------


def _attachment_path(message: Message | uuid.UUID, digest: str) -> str:
    global_id = message.pk if isinstance(message, Message) else message
    return f"/federation/v1/messages/{global_id}/attachments/{digest}"


def test_a_recipient_domain_gets_the_attachment_bytes_and_the_fetch_is_logged(
    alice: User, peer: FakePeer, federation: FederationClient
) -> None:
    message = _send(alice, [("logo.png", "image/png", PNG)])

    response = federation.send("GET", _attachment_path(message, digest_of(PNG)), signer=peer)

    assert response.status_code == 200
    assert b"".join(response.streaming_content) == PNG
    assert response["Content-Type"] == "application/octet-stream"
    assert (
        response["Content-Digest"]
        == "sha-256=:" + __import__("base64").b64encode(hashlib.sha256(PNG).digest()).decode() + ":"
    )
    assert response["Content-Length"] == str(len(PNG))
    assert list(AttachmentFetch.objects.values_list("domain", "bytes")) == [("peer.test", len(PNG))]


def test_attachment_access_follows_the_body_rule(
    alice: User, peer: FakePeer, other_peer: FakePeer, federation: FederationClient
) -> None:
    message = _send(alice, [("a.txt", "text/plain", b"secret plans")])
    good = digest_of(b"secret plans")

    def status(path: str, signer: FakePeer = peer) -> tuple[int, str]:
        response = federation.send("GET", path, signer=signer)
        return response.status_code, response.json().get("error", "")

    assert status(_attachment_path(message, good), other_peer) == (404, "not_found")  # not a recipient domain
    assert status(_attachment_path(uuid.uuid4(), good)) == (404, "not_found")  # unknown message
    assert status(_attachment_path(message, digest_of(b"other"))) == (404, "not_found")  # not in its manifest
    assert status(_attachment_path(message, "sha-256:XYZ")) == (404, "not_found")
    assert status(f"/federation/v1/messages/not-a-uuid/attachments/{good}") == (404, "not_found")
    assert federation.send("GET", _attachment_path(message, good), signer=None).status_code == 401

    Message.objects.filter(pk=message.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = federation.send("GET", _attachment_path(message, good), signer=peer)
    assert (response.status_code, response.json()["reason"]) == (410, "expired")

    withdraw_message(message=message)
    response = federation.send("GET", _attachment_path(message, good), signer=peer)
    assert (response.status_code, response.json()["reason"]) == (410, "withdrawn")
    assert not AttachmentFetch.objects.exists()


# --- recipient side ------------------------------------------------------------------------------------------


def _peer_message(recipient: User, files: list[tuple[str, str, bytes]], **overrides: Any) -> dict[str, Any]:
    """A message at the fake peer with attachments: its body, notification and file bytes."""
    global_id = uuid.uuid4()
    now = timezone.now().replace(microsecond=0)
    manifest = [{"name": n, "type": t, "size": len(c), "digest": digest_of(c)} for n, t, c in files]
    fields = {
        "global_id": global_id,
        "message_id": f"<{global_id}@peer.test>",
        "sender": "carol@peer.test",
        "to": [recipient.email],
        "cc": [],
        "subject": "Files for you",
        "date": now,
        "text": "Attached.",
        "html": None,
        "in_reply_to": "",
        "references": [],
        "attachments": overrides.pop("body_manifest", manifest),
    }
    content = payloads.canonical_body(**fields)
    notification = payloads.Notification(
        global_id=global_id,
        message_id=fields["message_id"],
        sender="carol@peer.test",
        recipients=[recipient.email],
        subject="Files for you",
        date=now,
        size=len(content),
        digest=payloads.digest(content),
        in_reply_to="",
        references=[],
        expires=now + timedelta(days=30),
        attachments=tuple(payloads.ManifestEntry(**{**m, "type": m["type"]}) for m in manifest),
    )
    return {
        "global_id": global_id,
        "content": content,
        "notification": notification,
        "files": {digest_of(c): c for _, _, c in files},
    }


def _receive(recipient: User, peer: FakePeer, files: list[tuple[str, str, bytes]], **overrides: Any) -> dict[str, Any]:
    message = _peer_message(recipient, files, **overrides)
    peer.bodies[str(message["global_id"])] = message["content"]
    serve = overrides.get("serve", message["files"])

    def handler(call: Call) -> http.Response:
        digest = call.path.rsplit("/", 1)[1]
        if digest not in serve:
            return http.Response(status=404, headers={}, content=b'{"error":"not_found"}', url=call.url)
        return http.Response(
            status=200, headers={"content-type": "application/octet-stream"}, content=serve[digest], url=call.url
        )

    peer.on("GET", r"/federation/v1/messages/[^/]+/attachments/[^/]+(.*)", handler)
    response = FederationClient().notify(peer, message["notification"].to_json())
    assert response.status_code == 200, response.content
    message["remote"] = RemoteMessage.objects.get(global_id=message["global_id"])
    message["entry"] = InboxEntry.objects.get(owner=recipient, remote=message["remote"])
    return message


def _attachment_gets(peer: FakePeer) -> list[Call]:
    return [c for c in peer.calls if "/attachments/" in c.path]


def _download(client: Client, entry: InboxEntry, index: int, **query: str) -> Any:
    return client.get(reverse("webmail:entry-attachment", kwargs={"entry_id": entry.pk, "index": index}), query)


def _run_fetches() -> None:
    """What a worker does: every attachment fetch that is due runs now."""
    due = ReceivedAttachment.objects.filter(state__in=["wanted", "unavailable"], next_attempt_at__lte=timezone.now())
    for job_id in due.values_list("pk", flat=True):
        fetching.fetch_attachment(job_id)


def _fetched(client: Client, entry: InboxEntry, index: int, **query: str) -> Any:
    """A download of a file still at the sender's: "Fetching attachment…", the worker, then the answer."""
    first = _download(client, entry, index, **query)
    if first.status_code != 202:
        return first
    assert "Fetching attachment…" in page_text(first)
    _run_fetches()
    return _download(client, entry, index, **query)


def test_the_notification_manifest_is_kept_and_nothing_is_fetched_until_a_download(
    alice: User, peer: FakePeer, media: Path
) -> None:
    received = _receive(alice, peer, [("logo.png", "image/png", PNG)])

    assert received["remote"].attachments == [
        {"name": "logo.png", "type": "image/png", "size": len(PNG), "digest": digest_of(PNG)}
    ]
    assert received["entry"].has_attachments
    assert received["entry"].attachments_size == len(PNG)
    [item] = attachment_items_for_entry(received["entry"])
    assert (item.name, item.content_type, item.size, item.at_sender) == ("logo.png", "image/png", len(PNG), True)
    assert item.preview_url == item.url + "?inline=1"
    assert not _attachment_gets(peer) and not Blob.objects.exists()


def test_download_fetches_verifies_stores_once_and_serves_the_same_bytes(
    alice: User, bob: User, peer: FakePeer, media: Path
) -> None:
    received = _receive(alice, peer, [("notes.txt", "text/plain", b"meeting notes"), ("logo.png", "image/png", PNG)])
    client = login(alice)

    response = _fetched(client, received["entry"], 1)

    assert response.status_code == 200
    assert b"".join(response.streaming_content) == PNG
    [call] = _attachment_gets(peer)
    assert call.path == f"/federation/v1/messages/{received['global_id']}/attachments/{digest_of(PNG)}"
    assert "Signature" in call.headers and call.headers["Accept"] == "application/octet-stream"
    assert Blob.objects.get().digest == digest_of(PNG)
    assert not attachment_items_for_entry(received["entry"])[1].at_sender

    again = _download(client, received["entry"], 1)
    assert b"".join(again.streaming_content) == PNG
    assert len(_attachment_gets(peer)) == 1  # stored once for the instance: no second transfer
    assert len(stored_files(media)) == 1


def test_swapped_attachment_bytes_are_refused_and_nothing_is_stored(alice: User, peer: FakePeer, media: Path) -> None:
    real = b"the contract v1"
    received = _receive(
        alice, peer, [("contract.txt", "text/plain", real)], serve={digest_of(real): b"the contract v2"}
    )

    response = _fetched(login(alice), received["entry"], 0)

    assert response.status_code == 502
    assert "contract.txt was refused: the sender's server sent other bytes than announced" in page_text(response)
    assert not Blob.objects.exists() and not stored_files(media)


def test_a_body_whose_manifest_differs_from_the_notification_is_tampered(alice: User, peer: FakePeer) -> None:
    swapped = [{"name": "logo.png", "type": "image/png", "size": 3, "digest": digest_of(b"bad")}]
    received = _receive(alice, peer, [("logo.png", "image/png", PNG)], body_manifest=swapped)
    RemoteMessage.objects.filter(pk=received["remote"].pk).update(
        state=FetchState.FETCHING, next_attempt_at=timezone.now()
    )

    fetch_body(received["remote"].pk)

    received["remote"].refresh_from_db()
    assert received["remote"].state == FetchState.TAMPERED
    assert "attachments differs" in received["remote"].last_error
    assert attachment_items_for_entry(InboxEntry.objects.get(pk=received["entry"].pk)) == []


def test_an_attachment_over_our_own_limit_is_not_fetched_and_the_reader_is_told(
    alice: User, peer: FakePeer, settings: Any
) -> None:
    received = _receive(alice, peer, [("video.mp4", "video/mp4", b"v" * 2000)])
    settings.PUSHMAIL_MAX_ATTACHMENT_BYTES = 1024

    response = _download(login(alice), received["entry"], 0)

    assert response.status_code == 413
    assert "video.mp4 is 2.0 KiB, larger than the 1.0 KiB this server accepts" in page_text(response)
    assert not _attachment_gets(peer)


def test_a_withdrawn_attachment_is_explained(alice: User, peer: FakePeer) -> None:
    received = _receive(alice, peer, [("a.txt", "text/plain", b"a")])
    peer.reply(
        "GET",
        r"/federation/v1/messages/[^/]+/attachments/[^/]+(.*)",
        410,
        {"error": "gone", "reason": "withdrawn", "detail": "x"},
    )

    response = _fetched(login(alice), received["entry"], 0)

    assert response.status_code == 410
    assert "a.txt was withdrawn by the sender." in page_text(response)


def test_a_sender_that_does_not_answer_is_explained(alice: User, peer: FakePeer) -> None:
    received = _receive(alice, peer, [("a.txt", "text/plain", b"a")])
    peer.fail("GET", r"/federation/v1/messages/[^/]+/attachments/[^/]+(.*)")

    response = _fetched(login(alice), received["entry"], 0)

    assert response.status_code == 502
    assert "is still at the sender's: their server did not answer" in page_text(response)
    assert not Blob.objects.exists()


def test_another_users_entry_and_a_missing_index_are_404(alice: User, bob: User, peer: FakePeer) -> None:
    received = _receive(alice, peer, [("a.txt", "text/plain", b"a")])

    assert _download(login(bob), received["entry"], 0).status_code == 404
    assert _download(login(alice), received["entry"], 1).status_code == 404
    assert not _attachment_gets(peer)


def test_a_local_message_streams_the_senders_blob_without_any_fetch(alice: User, bob: User, peer: FakePeer) -> None:
    message = _send(alice, [("notes.txt", "text/plain", b"local notes")], to=[bob.email])
    entry = InboxEntry.objects.get(owner=bob, local=message)

    assert entry.has_attachments and entry.attachments_size == len(b"local notes")
    [item] = attachment_items_for_entry(entry)
    assert not item.at_sender
    response = _download(login(bob), entry, 0)
    assert b"".join(response.streaming_content) == b"local notes"
    assert not _attachment_gets(peer)


# --- what the browser gets -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "content", "inline_type"),
    [
        ("logo.png", "image/png", PNG, "image/png"),
        ("plan.pdf", "application/pdf", b"%PDF-1.4", "application/pdf"),
        ("photo.jpg", "image/jpeg", b"\xff\xd8\xff", "image/jpeg"),
        ("drawing.svg", "image/svg+xml", SVG, None),
        ("page.html", "text/html", b"<script>alert(1)</script>", None),
        ("notes.txt", "text/plain", b"hello", None),
    ],
)
def test_only_raster_images_and_pdf_preview_inline_everything_else_downloads(
    alice: User, bob: User, name: str, kind: str, content: bytes, inline_type: str | None
) -> None:
    message = _send(alice, [(name, kind, content)], to=[bob.email])
    entry = InboxEntry.objects.get(owner=bob, local=message)
    client = login(bob)

    for query in ({}, {"inline": "1"}):
        response = _download(client, entry, 0, **query)
        assert response["X-Content-Type-Options"] == "nosniff"
        inline = bool(query) and inline_type is not None
        if inline:
            assert response["Content-Type"] == inline_type
            assert response["Content-Disposition"].startswith("inline;")
        else:
            assert response["Content-Type"] == "application/octet-stream"
            assert response["Content-Disposition"].startswith("attachment;")
        # Previews too: the page policy is replaced by a sandbox (a PDF still renders under it).
        assert response["Content-Security-Policy"] == "default-src 'none'; sandbox"
    [item] = attachment_items_for_entry(entry)
    assert (item.preview_url is not None) == (inline_type is not None)


def test_the_download_name_is_safe_and_exact(alice: User, bob: User) -> None:
    message = _send(alice, [('Grüße "Q4"; plan.txt', "text/plain", b"x")], to=[bob.email])
    entry = InboxEntry.objects.get(owner=bob, local=message)

    disposition = _download(login(bob), entry, 0)["Content-Disposition"]

    assert disposition == (
        'attachment; filename="Gruße _Q4__ plan.txt"'.replace("ß", "_")
        + "; filename*=UTF-8''Gr%C3%BC%C3%9Fe%20%22Q4%22%3B%20plan.txt"
    )
    assert "\n" not in disposition and "\r" not in disposition


def test_the_partial_lists_links_sizes_and_previews(alice: User, peer: FakePeer) -> None:
    from django.template.loader import render_to_string

    received = _receive(
        alice,
        peer,
        [("logo.png", "image/png", PNG), ("plan.pdf", "application/pdf", b"%PDF"), ("x.svg", "image/svg+xml", SVG)],
    )

    def render() -> str:
        items = attachment_items_for_entry(received["entry"])
        return render_to_string("webmail/partials/attachments.html", {"attachment_items": items})

    # Still at the sender's: previews are offered, not loaded (loading one would fetch the file).
    page = render()
    assert page.count('data-testid="attachment-link"') == 3
    assert 'data-testid="attachment-preview"' not in page
    assert re.search(r'hx-get="[^"]+/0/fetch/\?mode=preview"', page)
    assert re.search(r'hx-get="[^"]+/1/fetch/\?mode=preview"', page)
    assert "/2/fetch/?mode=preview" not in page
    assert "/2/?inline=1" not in page  # never SVG inline
    assert html.unescape(page).count("at sender's — fetched when you download or preview it") == 3
    assert "image/svg+xml" in page and f"{len(PNG)} bytes" in page

    # Once here, the image and the PDF are previewed in the page.
    for index in (0, 1):
        assert _fetched(login(alice), received["entry"], index).status_code == 200
    page = render()
    assert re.search(r'<img data-testid="attachment-preview" src="[^"]+/0/\?inline=1"', page)
    assert re.search(r'<iframe data-testid="attachment-preview" class="pdf-preview" src="[^"]+/1/\?inline=1"', page)
    assert "/2/?inline=1" not in page
    assert html.unescape(page).count("at sender's") == 1


# --- the sender's own copy and drafts ---------------------------------------------------------------------------


def test_the_sender_downloads_their_own_attachment_and_nobody_else_can(alice: User, bob: User) -> None:
    message = _send(alice, [("a.txt", "text/plain", b"mine")])
    url = reverse("webmail:sent-attachment", kwargs={"message_id": message.pk, "index": 0})

    response = login(alice).get(url)
    assert b"".join(response.streaming_content) == b"mine"
    assert response["Content-Disposition"].startswith("attachment;")
    assert login(bob).get(url).status_code == 404
    assert (
        login(alice).get(reverse("webmail:sent-attachment", kwargs={"message_id": message.pk, "index": 1})).status_code
        == 404
    )
    [item] = attachment_items_for_message(message)
    assert item.url == url and not item.at_sender


def test_a_draft_attachment_downloads_and_deletes_for_its_owner_only(alice: User, bob: User) -> None:
    draft = Draft.objects.create(owner=alice)
    blob = upload(b"draft bytes")
    attachment = DraftAttachment.objects.create(
        draft=draft, blob=blob, name="d.txt", content_type="text/plain", size=11
    )
    url = reverse("webmail:draft-attachment", kwargs={"draft_id": draft.pk, "attachment_id": attachment.pk})

    assert login(bob).get(url).status_code == 404
    assert login(bob).post(url).status_code == 404
    assert b"".join(login(alice).get(url).streaming_content) == b"draft bytes"

    response = login(alice).post(url)

    assert response.status_code == 302
    assert not DraftAttachment.objects.exists()
    assert Blob.objects.filter(pk=blob.pk).exists()  # the bytes may be shared


def test_a_second_message_with_the_same_file_fetches_it_from_its_own_sender(
    alice: User, peer: FakePeer, local_domain: Any, media: Path
) -> None:
    dave = MailboxFactory(domain=local_domain, local_part="dave")
    first = _receive(alice, peer, [("a.txt", "text/plain", b"shared file")])
    _fetched(login(alice), first["entry"], 0)
    second = _receive(dave, peer, [("copy.txt", "text/plain", b"shared file")])

    # Stored here already, but not fetched for this message: it is still at the sender's.
    assert attachment_items_for_entry(second["entry"])[0].at_sender
    response = _fetched(login(dave), second["entry"], 0)
    assert b"".join(response.streaming_content) == b"shared file"
    assert [c.path.split("/")[4] for c in _attachment_gets(peer)] == [
        str(first["global_id"]),
        str(second["global_id"]),
    ]
    assert len(stored_files(media)) == 1  # the bytes are still stored once
    assert not attachment_items_for_entry(second["entry"])[0].at_sender


# --- admin ---------------------------------------------------------------------------------------------------------


def test_admin_lists_blobs_by_digest_and_a_messages_attachments(alice: User, local_domain: Any, peer: FakePeer) -> None:
    from accounts.services import create_mailbox

    root = create_mailbox(address=f"root@{local_domain.name}", password="admin passphrase 123", is_staff=True)
    User.objects.filter(pk=root.pk).update(is_superuser=True)
    client = login(User.objects.get(pk=root.pk))
    message = _send(alice, [("plan.pdf", "application/pdf", b"%PDF-1.4 plan")])
    FederationClient().send("GET", _attachment_path(message, digest_of(b"%PDF-1.4 plan")), signer=peer)
    blob = Blob.objects.get()

    found = client.get("/admin/attachments/blob/", {"q": "sha-256:" + blob.sha256[:12]})
    assert found.status_code == 200 and blob.sha256 in found.content.decode()
    assert client.get("/admin/attachments/blob/", {"q": "0" * 12}).content.decode().count(blob.sha256) == 0
    assert client.get(f"/admin/attachments/blob/{blob.pk}/change/").status_code == 200
    assert client.get("/admin/attachments/blob/add/").status_code == 403

    page = client.get(f"/admin/outbox/message/{message.pk}/change/").content.decode()
    assert "plan.pdf" in page and "application/pdf" in page
    assert client.get("/admin/outbox/attachmentfetch/").status_code == 200


# --- user API -------------------------------------------------------------------------------------------------------


def test_the_api_sends_attachments_and_downloads_them(alice: User, bob: User, peer: FakePeer) -> None:
    import base64

    from tests.conftest import api_as

    response = api_as(alice).post(
        "/api/v1/messages/",
        {
            "to": [bob.email, "carol@peer.test"],
            "subject": "API files",
            "text": "see attached",
            "attachments": [{"name": "logo.png", "type": "image/png", "content": base64.b64encode(PNG).decode()}],
        },
        format="json",
    )

    assert response.status_code == 201, response.content
    assert response.json()["attachments"] == [
        {"name": "logo.png", "type": "image/png", "size": len(PNG), "digest": digest_of(PNG)}
    ]
    entry = InboxEntry.objects.get(owner=bob)
    detail = api_as(bob).get(f"/api/v1/inbox/{entry.pk}/").json()
    assert detail["attachments"][0]["name"] == "logo.png" and detail["attachments"][0]["at_sender"] is False
    download = api_as(bob).get(f"/api/v1/inbox/{entry.pk}/attachments/0/")
    assert download.status_code == 200 and b"".join(download.streaming_content) == PNG
    assert download["Content-Type"] == "application/octet-stream"
    assert api_as(alice).get(f"/api/v1/inbox/{entry.pk}/attachments/0/").status_code == 404


def test_the_api_refuses_bad_base64_and_oversized_files_with_a_message(alice: User, settings: Any) -> None:
    from tests.conftest import api_as

    send = {"to": ["carol@peer.test"], "subject": "x", "text": ""}
    bad = api_as(alice).post(
        "/api/v1/messages/", send | {"attachments": [{"name": "a", "content": "%%%"}]}, format="json"
    )
    assert bad.status_code == 400 and "not valid base64" in json.dumps(bad.json())

    settings.PUSHMAIL_MAX_ATTACHMENT_BYTES = 4
    big = api_as(alice).post(
        "/api/v1/messages/", send | {"attachments": [{"name": "big.bin", "content": "AAAAAAAA"}]}, format="json"
    )
    assert big.status_code == 400 and "big.bin is larger than the 4 bytes limit" in json.dumps(big.json())
    assert not Message.objects.exists()


def test_send_message_refuses_program_files_whatever_the_path(alice: User) -> None:
    with pytest.raises(ValidationError) as refused:
        _send(alice, [("setup.EXE", "application/octet-stream", b"MZ")])

    assert "setup.EXE: files of type .exe cannot be attached" in refused.value.message_dict["attachments"][0]
    assert not Message.objects.exists()


def test_unused_files_are_purged_after_a_grace_and_used_ones_stay(alice: User, peer: FakePeer, media: Path) -> None:
    from attachments.services import purge_unused_blobs

    sent = _send(alice, [("sent.txt", "text/plain", b"attached to a message")])
    draft = Draft.objects.create(owner=alice)
    on_draft = upload(b"on a draft")
    DraftAttachment.objects.create(draft=draft, blob=on_draft, name="d.txt", content_type="text/plain", size=10)
    received = _receive(alice, peer, [("r.txt", "text/plain", b"received file")])
    _fetched(login(alice), received["entry"], 0)
    orphan = upload(b"uploaded, never attached")
    assert Blob.objects.count() == 4

    assert purge_unused_blobs() == 0  # within the grace period nothing goes
    Blob.objects.update(last_stored_at=timezone.now() - timedelta(days=2))
    upload(b"on a draft")  # stored again: its clock restarts (it is also in use)

    with TestCase.captureOnCommitCallbacks(execute=True):
        assert purge_unused_blobs() == 1

    assert not Blob.objects.filter(pk=orphan.pk).exists()
    assert not default_storage.exists(orphan.file.name)
    assert set(Blob.objects.values_list("sha256", flat=True)) == {
        sent.attachments.get().blob.sha256,
        on_draft.sha256,
        digest_of(b"received file").removeprefix("sha-256:"),
    }


def test_a_second_reader_during_a_fetch_joins_it_instead_of_fetching_again(
    alice: User, bob: User, peer: FakePeer
) -> None:
    first = _receive(alice, peer, [("a.txt", "text/plain", b"one transfer")])
    client = login(alice)

    assert _download(client, first["entry"], 0).status_code == 202  # another request started the fetch
    assert _download(client, first["entry"], 0).status_code == 202  # this one joins it
    _run_fetches()
    response = _download(client, first["entry"], 0)

    assert b"".join(response.streaming_content) == b"one transfer"
    assert len(_attachment_gets(peer)) == 1


def test_quota_usage_reads_plainly(alice: User) -> None:
    from attachments.selectors import quota_for

    alice.quota_bytes = 4096
    alice.save(update_fields=["quota_bytes"])
    message = _send(alice, [("a.bin", "application/octet-stream", b"x" * 1024)])

    usage = quota_for(alice)

    assert usage.used == message.size + 1024 and usage.quota == 4096 and not usage.full
    assert str(usage) == f"{services.human_size(usage.used)} of 4.0 KiB used ({usage.percent}%)"


def test_attachments_outlive_an_early_body_deletion_until_expiry(
    alice: User, peer: FakePeer, federation: FederationClient
) -> None:
    message = _send(alice, [("a.txt", "text/plain", b"still here")])
    Message.objects.filter(pk=message.pk).update(fetched_by_all_at=timezone.now())  # every domain fetched it

    assert federation.fetch(peer, message.pk).status_code == 410  # the body is gone
    response = federation.send(
        "GET", _attachment_path(message, digest_of(b"still here")), signer=peer, headers={"Accept-Encoding": "gzip"}
    )
    assert response.status_code == 200 and b"".join(response.streaming_content) == b"still here"
    assert "Content-Encoding" not in response  # never content-coded: the digest is over these bytes
