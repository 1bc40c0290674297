"""A sender's own sent mail is theirs until they delete it; retention and "every domain
fetched it" only end what recipient domains can fetch (docs/protocol.md §3.4, §5, §9)."""

from __future__ import annotations

import email
import email.policy
import gzip
import hashlib
import html
import json
import re
import threading
import zlib
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from attachments.models import Blob
from attachments.selectors import usage_bytes
from attachments.services import AttachmentInput, purge_unused_blobs, store_upload
from federation import http
from mailbox.models import InboxEntry
from outbox.models import BodyFetch, Delivery, Message
from outbox.services import deliver_notification, send_message, trash_sent
from pushmail_site.celery import app
from tests.conftest import NOTIFICATIONS, Call, FakePeer, FederationClient, Queued, api_as, json_response

ROOT = Path(__file__).resolve().parents[2]
FILE = b"the quarterly plan, attached\n" * 20
TEXT = "Sent words that must stay 4f2c"
HTML = "<p>Formatted words that must stay 9b1e</p>"


@pytest.fixture(autouse=True)
def media(settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def _send(sender: User, *to: str, files: bytes | None = FILE, text: str = TEXT, **kwargs: Any) -> Message:
    attachments = []
    if files is not None:
        blob = store_upload(file=SimpleUploadedFile("plan.txt", files))
        attachments.append(AttachmentInput(blob=blob, name="plan.txt", content_type="text/plain"))
    message = send_message(
        sender=sender,
        to=list(to),
        subject="Quarterly plan",
        text=text,
        html=HTML,
        attachments=attachments,
        **kwargs,
    )
    for delivery in Delivery.objects.filter(message=message, local=False):
        deliver_notification(delivery.pk)
    return message


def _attachment_path(message: Message, content: bytes = FILE) -> str:
    return f"/federation/v1/messages/{message.pk}/attachments/sha-256:{hashlib.sha256(content).hexdigest()}"


def run_periodic_jobs() -> None:
    """Every job the scheduler runs, once, as a worker would (what they queue is not run)."""
    app.loader.import_default_modules()
    for entry in django_settings.CELERY_BEAT_SCHEDULE.values():
        app.tasks[entry["task"]]()


def login(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def page(client: Client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return html.unescape(response.content.decode())


def _eml_text(client: Client, message: Message) -> tuple[str, str, list[tuple[str, bytes]]]:
    response = client.get(reverse("webmail:sent-eml", args=[message.pk]))
    assert response.status_code == 200
    parsed = email.message_from_bytes(response.content, policy=email.policy.default)
    text = parsed.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    formatted = parsed.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    files = [(part.get_filename() or "", part.get_content()) for part in parsed.iter_attachments()]
    return text, formatted, files


def assert_the_sender_still_has_it(sender: User, message: Message) -> None:
    """What the sender sees of their own message: every view still has the text and the file."""
    client = login(sender)
    sent_page = page(client, reverse("webmail:sent-message", args=[message.pk]))
    assert reverse("webmail:sent-html", args=[message.pk]) in sent_page  # the formatted body's frame
    assert "xpired" not in sent_page
    assert "no longer stored" not in sent_page

    assert TEXT in page(client, reverse("webmail:sent-text", args=[message.pk]))
    assert "Formatted words that must stay 9b1e" in page(client, reverse("webmail:sent-html", args=[message.pk]))
    download = client.get(reverse("webmail:sent-attachment", args=[message.pk, 0]))
    assert download.status_code == 200 and b"".join(download.streaming_content) == FILE  # type: ignore[attr-defined]

    text, formatted, files = _eml_text(client, message)
    assert TEXT in text and "9b1e" in formatted
    assert files == [("plan.txt", FILE)]

    data = api_as(sender).get(f"/api/v1/messages/{message.pk}/").json()
    assert data["text"] == TEXT and data["html"] == HTML
    assert [a["name"] for a in data["attachments"]] == ["plan.txt"]
    assert "expired" not in json.dumps(data).lower()

    # Replying quotes it.
    reply = client.post(reverse("webmail:reply-sent", args=[message.pk]), follow=True)
    assert TEXT in html.unescape(reply.content.decode())


# --- item: the sender's copy outlives the federation offer ------------------------------------------


@pytest.mark.usefixtures("net")
def test_the_sent_copy_keeps_its_text_and_files_after_every_domain_fetched_it(
    alice: User, bob: User, peer: FakePeer, federation: FederationClient, queued: list[Queued]
) -> None:
    message = _send(alice, "carol@peer.test")
    assert federation.fetch(peer, message.pk).status_code == 200

    run_periodic_jobs()

    assert_the_sender_still_has_it(alice, message)
    sent_page = page(login(alice), reverse("webmail:sent-message", args=[message.pk]))
    assert "No longer offered to recipients: every recipient domain had fetched it" in sent_page
    data = api_as(alice).get(f"/api/v1/messages/{message.pk}/").json()
    assert data["offered_to_recipients"] is False and data["offer_ended"]["reason"] == "fetched_by_all"
    assert [row["offered"] for row in data["deliveries"]] == [False]
    # The federation endpoint no longer serves the body, and says why; files stay until expires.
    gone = federation.fetch(peer, message.pk)
    assert (gone.status_code, gone.json()["error"], gone.json()["reason"]) == (410, "gone", "fetched")
    assert federation.send("GET", _attachment_path(message), signer=peer).status_code == 200


@pytest.mark.usefixtures("net")
def test_the_sent_copy_keeps_its_text_and_files_after_retention_ended(
    alice: User, peer: FakePeer, federation: FederationClient, queued: list[Queued]
) -> None:
    message = _send(alice, "carol@peer.test")
    ended = timezone.now().replace(microsecond=0) - timedelta(minutes=1)
    Message.objects.filter(pk=message.pk).update(expires_at=ended)

    run_periodic_jobs()

    assert_the_sender_still_has_it(alice, message)
    sent_page = page(login(alice), reverse("webmail:sent-message", args=[message.pk]))
    assert "No longer offered to recipients: retention ended on" in sent_page
    assert "no longer offered (retention ended on" in sent_page  # the domain's row
    data = api_as(alice).get(f"/api/v1/messages/{message.pk}/").json()
    assert data["offer_ended"]["reason"] == "retention_ended"
    for path in (f"/federation/v1/messages/{message.pk}/body", _attachment_path(message)):
        gone = federation.send("GET", path, signer=peer)
        assert (gone.status_code, gone.json()["reason"]) == (410, "expired")


@pytest.mark.usefixtures("net")
def test_the_thread_shows_the_senders_own_message_after_every_domain_fetched_it(
    alice: User, bob: User, peer: FakePeer, federation: FederationClient, queued: list[Queued]
) -> None:
    message = _send(alice, "carol@peer.test")
    federation.fetch(peer, message.pk)
    run_periodic_jobs()
    # Bob, on this instance, answers it: Alice's conversation holds her message and his reply.
    send_message(
        sender=bob, to=[alice.email], subject="Re: Quarterly plan", text="Got it", in_reply_to=message.message_id
    )
    entry = InboxEntry.objects.get(owner=alice)

    thread = page(login(alice), reverse("webmail:entry", args=[entry.pk]))

    assert "Got it" in thread and TEXT in thread


@pytest.mark.usefixtures("net")
def test_a_sent_copy_in_trash_keeps_its_body_until_deleted_for_good(
    alice: User, peer: FakePeer, federation: FederationClient, queued: list[Queued]
) -> None:
    message = _send(alice, "carol@peer.test")
    federation.fetch(peer, message.pk)
    trash_sent(user=alice, message_ids=[message.pk])

    run_periodic_jobs()

    assert_the_sender_still_has_it(alice, message)


@pytest.mark.usefixtures("net")
def test_sent_mail_counts_against_the_quota_until_deleted_for_good(
    alice: User, peer: FakePeer, federation: FederationClient, queued: list[Queued]
) -> None:
    message = _send(alice, "carol@peer.test")
    full = message.size + len(FILE)
    assert usage_bytes(alice) == full

    federation.fetch(peer, message.pk)
    run_periodic_jobs()
    assert usage_bytes(alice) == full  # fetched or not, it is still hers
    trash_sent(user=alice, message_ids=[message.pk])
    assert usage_bytes(alice) == full  # in Trash: still hers

    trash_sent(user=alice, message_ids=[message.pk])  # delete forever

    assert usage_bytes(alice) == 0
    client = login(alice)
    for name in ("webmail:sent-message", "webmail:sent-text", "webmail:sent-eml"):
        assert client.get(reverse(name, args=[message.pk])).status_code == 404
    assert client.get(reverse("webmail:sent-attachment", args=[message.pk, 0])).status_code == 404
    assert api_as(alice).get(f"/api/v1/messages/{message.pk}/").status_code == 404
    # The file is still offered to the recipients until expires (readers open files later).
    assert federation.send("GET", _attachment_path(message), signer=peer).status_code == 200


@pytest.mark.usefixtures("net")
def test_deleting_for_good_drops_the_body_and_the_file_once_nothing_needs_them(
    alice: User, peer: FakePeer, federation: FederationClient, queued: list[Queued]
) -> None:
    kept = _send(alice, "carol@peer.test")  # the same file, in another message
    message = _send(alice, "carol@peer.test", text="the other one")
    blob = Blob.objects.get()
    trash_sent(user=alice, message_ids=[message.pk])
    trash_sent(user=alice, message_ids=[message.pk])
    assert Message.objects.filter(pk=message.pk).exists()  # recipients may still fetch it

    Message.objects.filter(pk=message.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    run_periodic_jobs()

    assert not Message.objects.filter(pk=message.pk).exists()
    assert purge_unused_blobs(grace=timedelta(0)) == 0  # the other message still names the file
    assert Blob.objects.filter(pk=blob.pk).exists()
    assert_the_sender_still_has_it(alice, kept)

    trash_sent(user=alice, message_ids=[kept.pk])
    trash_sent(user=alice, message_ids=[kept.pk])
    Message.objects.filter(pk=kept.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    run_periodic_jobs()
    assert not Message.objects.filter(pk=kept.pk).exists()
    assert purge_unused_blobs(grace=timedelta(0)) == 1
    assert not Blob.objects.exists()


# --- item: a domain whose recipients were all rejected cannot fetch ------------------------------------


def _reject_everyone(call: Call) -> http.Response:
    payload = call.json()
    results = [{"address": a, "status": "rejected", "reason": "unknown mailbox"} for a in payload["recipients"]]
    return json_response(200, {"id": payload["id"], "results": results}, url=call.url)


@pytest.mark.usefixtures("net")
def test_a_domain_whose_recipients_were_all_rejected_cannot_fetch(
    alice: User, peer: FakePeer, other_peer: FakePeer, federation: FederationClient, queued: list[Queued]
) -> None:
    other_peer.on("POST", NOTIFICATIONS, _reject_everyone)
    message = _send(alice, "carol@peer.test", "nobody@other.test")

    for path in (f"/federation/v1/messages/{message.pk}/body", _attachment_path(message)):
        refused = federation.send("GET", path, signer=other_peer)
        assert refused.status_code == 403
        assert refused.json()["error"] == "not_accepted" and "other.test" in refused.json()["detail"]
        assert federation.send("GET", path, signer=peer).status_code == 200
    assert set(BodyFetch.objects.values_list("domain", flat=True)) == {"peer.test"}

    # The refused domain does not hold the offer open: once peer.test fetched, it ends.
    run_periodic_jobs()
    assert federation.fetch(peer, message.pk).json()["reason"] == "fetched"
    assert federation.fetch(other_peer, message.pk).status_code == 403
    rows = {r["domain"]: r for r in api_as(alice).get(f"/api/v1/messages/{message.pk}/").json()["deliveries"]}
    assert rows["other.test"]["offered"] is False


@pytest.mark.usefixtures("net")
def test_a_domain_whose_answer_is_not_recorded_yet_may_fetch(
    alice: User, peer: FakePeer, federation: FederationClient, queued: list[Queued]
) -> None:
    # The notification is accepted there, but its answer is lost: the sender will retry.
    peer.fail("POST", NOTIFICATIONS, "connection reset")
    message = _send(alice, "carol@peer.test")
    assert Delivery.objects.get(message=message).state == "retrying"

    assert federation.fetch(peer, message.pk).status_code == 200


# --- item: the body response and §11.4 agree on Content-Digest ------------------------------------------------


def _section(number: str) -> str:
    doc = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    match = re.search(rf"^#+ {re.escape(number)} .*?(?=^#+ \d|\Z)", doc, re.M | re.S)
    assert match, number
    return match.group(0)


@pytest.mark.usefixtures("net")
def test_the_body_response_has_no_content_digest_and_the_document_says_so_everywhere(
    alice: User, peer: FakePeer, federation: FederationClient
) -> None:
    message = _send(alice, "carol@peer.test", files=None)
    for headers in ({}, {"Accept-Encoding": "gzip"}):
        response = federation.fetch(peer, message.pk, headers=headers)
        assert response.status_code == 200 and "Content-Digest" not in response

    assert "no `Content-Digest`" in _section("7.1")
    assert "No `Content-Digest`" in _section("5.5")
    worked = _section("11.4")
    assert "body-content-digest" not in worked
    answer = worked.split("answers `200`", 1)[1]
    # Every mention of the header after the answer says there is none.
    assert all(m.group(1) == "no " for m in re.finditer(r"(no |)`Content-Digest`", answer)), answer


# --- item: which content codings a peer may answer with ---------------------------------------------------


PAYLOAD = json.dumps({"words": "pulled on read " * 400}).encode()


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


CODED = {
    "/identity": ("", PAYLOAD),
    "/gzip": ("gzip", gzip.compress(PAYLOAD)),
    "/deflate": ("deflate", zlib.compress(PAYLOAD)),
    "/raw-deflate": ("deflate", _raw_deflate(PAYLOAD)),
    "/br": ("br", b"\x1b\x00\x00"),
    "/twice": ("gzip, gzip", gzip.compress(gzip.compress(PAYLOAD))),
}


@pytest.fixture
def coding_server(settings: Any) -> Iterator[tuple[str, list[str]]]:
    """A peer on loopback that answers each path with one content coding, whatever was asked."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            asked.append(self.headers.get("Accept-Encoding", ""))
            coding, body = CODED[self.path]
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if coding:
                self.send_header("Content-Encoding", coding)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    settings.PUSHMAIL_PEERS = {"beta.test": base}
    try:
        yield base, asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_the_client_asks_for_gzip_only_and_reads_identity_and_gzip(coding_server: tuple[str, list[str]]) -> None:
    base, asked = coding_server
    for path in ("/identity", "/gzip"):
        assert http.request("GET", base + path).content == PAYLOAD
    assert asked == ["gzip", "gzip"]


@pytest.mark.parametrize("path", ["/deflate", "/raw-deflate", "/br", "/twice"])
def test_the_client_refuses_any_other_content_coding(coding_server: tuple[str, list[str]], path: str) -> None:
    base, _ = coding_server
    with pytest.raises(http.OutboundError, match="Content-Encoding") as refused:
        http.request("GET", base + path)
    assert refused.value.retryable  # an unreadable answer: try again later


@pytest.mark.usefixtures("net")
def test_the_server_answers_identity_or_gzip_only(alice: User, peer: FakePeer, federation: FederationClient) -> None:
    message = _send(alice, "carol@peer.test", files=None, text="compressible words " * 200)
    answers = {}
    for accept in ("", "gzip", "gzip, deflate", "deflate", "br", "identity", "deflate;q=1, gzip;q=0.5"):
        headers = {"Accept-Encoding": accept} if accept else {}
        response = federation.fetch(peer, message.pk, headers=headers)
        assert response.status_code == 200
        coding = response.get("Content-Encoding")
        content = gzip.decompress(response.content) if coding == "gzip" else response.content
        assert "sha-256:" + hashlib.sha256(content).hexdigest() == message.digest
        answers[accept] = coding
    assert answers == {
        "": None,
        "gzip": "gzip",
        "gzip, deflate": "gzip",
        "deflate": None,
        "br": None,
        "identity": None,
        "deflate;q=1, gzip;q=0.5": "gzip",
    }


# --- item: the README and §8.3 say what the code answers and records ---------------------------------------


def test_the_readme_documents_every_attachment_unavailable_answer() -> None:
    source = (ROOT / "mailbox" / "received_attachments.py").read_text()
    statuses = {"502"} | set(re.findall(r"AttachmentUnavailable\([^)]*status=(\d{3})", source, re.S))
    readme = (ROOT / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `GET /api/v1/inbox/{id}/attachments/"))
    assert "attachment_unavailable" in row
    for status in statuses:
        assert f"`{status}`" in row, status


@pytest.mark.usefixtures("net")
def test_a_permanent_error_is_recorded_as_section_8_3_says(alice: User, peer: FakePeer, queued: list[Queued]) -> None:
    peer.reply("POST", NOTIFICATIONS, 403, {"error": "blocked", "detail": "notifications from alpha.test are blocked"})
    message = _send(alice, "carol@peer.test", files=None)
    recipient = message.recipients.get()
    assert (recipient.status, recipient.reason) == ("rejected", "HTTP 403: notifications from alpha.test are blocked")

    peer.reply("POST", NOTIFICATIONS, 404, {"error": "not_found"})
    message = _send(alice, "dave@peer.test", files=None)
    assert message.recipients.get().reason == "HTTP 404: not_found"

    section = _section("8.3")
    assert "`HTTP <status>: <detail>`" in section and "its `error` when it has no `detail`" in section


@pytest.mark.usefixtures("net")
def test_mail_between_mailboxes_here_never_reads_as_no_longer_offered(
    alice: User, bob: User, queued: list[Queued]
) -> None:
    message = _send(alice, bob.email)
    Message.objects.filter(pk=message.pk).update(expires_at=timezone.now() - timedelta(days=1))
    run_periodic_jobs()

    sent_page = page(login(alice), reverse("webmail:sent-message", args=[message.pk]))

    assert "No longer offered" not in sent_page and "xpired" not in sent_page
    assert_the_sender_still_has_it(alice, message)
