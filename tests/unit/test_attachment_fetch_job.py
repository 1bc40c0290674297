"""A received attachment is fetched like a body: a durable row, a task, backoff and "retry now".

The reader's download, preview or API call starts (or joins) the fetch and is
answered at once; a worker brings the file, retrying a sender that does not
answer until the message expires; a worker killed mid-transfer is taken over
by the sweep. Peers are faked at the outbound client, except for the slow
sender, which is a real server on 127.0.0.1 behind the real client.
"""

from __future__ import annotations

import hashlib
import html
import re
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.template.loader import render_to_string
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from attachments.models import Blob
from federation import client as federation_client
from federation import discovery, http
from mailbox import attachment_fetching as fetching
from mailbox.models import AttachmentFetchState as S
from mailbox.models import InboxEntry, ReceivedAttachment, RemoteMessage
from mailbox.selectors import attachment_items_for_entry
from mailbox.states import ATTACHMENT_FETCH
from pushmail_site.states import IllegalTransition, transition
from tests.conftest import PEER, Call, FakePeer, Queued, api_as
from tests.factories import InboxEntryFactory, MailboxFactory, RemoteMessageFactory

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
FILE = b"%PDF-1.4 the minutes of the meeting, in full"
ATTACHMENT_PATH = r"/federation/v1/messages/[^/]+/attachments/[^/]+(.*)"


@pytest.fixture(autouse=True)
def media(settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def digest_of(content: bytes) -> str:
    return "sha-256:" + hashlib.sha256(content).hexdigest()


def login(user: User) -> Client:
    web = Client()
    web.force_login(user)
    return web


def text_of(response: Any) -> str:
    return html.unescape(response.content.decode())


def body_of(response: Any) -> bytes:
    return b"".join(response.streaming_content) if getattr(response, "streaming", False) else response.content


def received(
    *owners: User, name: str = "minutes.pdf", kind: str = "application/pdf", content: bytes = FILE, **fields: Any
) -> list[InboxEntry]:
    """A message from carol@peer.test with one file, in each owner's inbox (its body still at the sender's)."""
    manifest = [{"name": name, "type": kind, "size": len(content), "digest": digest_of(content)}]
    remote = RemoteMessageFactory(attachments=manifest, **fields)
    return [InboxEntryFactory(owner=owner, remote=remote) for owner in owners]


def serve(peer: FakePeer, content: bytes = FILE) -> None:
    """The peer serves these bytes for any attachment digest."""
    peer.on(
        "GET",
        ATTACHMENT_PATH,
        lambda call: http.Response(
            status=200, headers={"content-type": "application/octet-stream"}, content=content, url=call.url
        ),
    )


def gets(peer: FakePeer) -> list[Call]:
    return [c for c in peer.calls if "/attachments/" in c.path]


def url(name: str, entry: InboxEntry, index: int = 0) -> str:
    return reverse(f"webmail:{name}", kwargs={"entry_id": entry.pk, "index": index})


def job_of(entry: InboxEntry, index: int = 0) -> ReceivedAttachment:
    return ReceivedAttachment.objects.get(remote_id=entry.remote_id, position=index)


def run_due() -> int:
    """What a worker does with what the broker hands it: every fetch that is due runs now."""
    due = list(
        ReceivedAttachment.objects.filter(
            state__in=[S.WANTED, S.UNAVAILABLE], next_attempt_at__lte=timezone.now()
        ).values_list("pk", flat=True)
    )
    for job_id in due:
        fetching.fetch_attachment(job_id)
    return len(due)


# --- the graph and the document ------------------------------------------------------------------------------------


def _section(number: str) -> str:
    text = (ROOT / "docs" / "protocol.md").read_text()
    start = text.index(f"### {number} ")
    end = text.find("\n## ", start)
    following = text.find("\n### ", start + 4)
    ends = [i for i in (end, following) if i != -1]
    return text[start : min(ends)]


def test_the_attachment_fetch_graph_is_the_one_in_the_protocol_document() -> None:
    section = _section("8.4")
    [block] = re.findall(r"```\n(.*?)```", section, re.S)
    edges = set()
    for line in block.splitlines():
        found = re.fullmatch(r"(\w+)\s+--.*?-+>\s+(\w+)(\s+\(.*\))?", line.strip())
        assert found, line
        edges.add((found.group(1), found.group(2)))
    states = re.findall(r"^\| `(\w+)` \|", section, re.M)

    assert edges == ATTACHMENT_FETCH.edge_set()
    assert states == ATTACHMENT_FETCH.values
    final = re.search(r"\n(`\w+`(?:, `\w+`)* and `\w+`) are final\.", section)
    assert final is not None
    assert set(re.findall(r"`(\w+)`", final.group(1))) == {s.value for s in ATTACHMENT_FETCH.states if s.terminal}


def test_an_undeclared_move_is_refused_and_nothing_is_saved(alice: User) -> None:
    [entry] = received(alice)
    job = ReceivedAttachment.objects.create(remote=entry.remote, position=0)

    with pytest.raises(IllegalTransition):
        transition(job, ATTACHMENT_FETCH, S.FETCHED)  # bytes without a fetch: never

    assert ReceivedAttachment.objects.get(pk=job.pk).state == S.WANTED
    done = ReceivedAttachment.objects.create(remote=RemoteMessageFactory(), position=0, state=S.TAMPERED)
    with pytest.raises(IllegalTransition):
        transition(done, ATTACHMENT_FETCH, S.WANTED)  # a refused file is not asked for again


# --- the reader's side -----------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("net")
def test_a_download_is_answered_at_once_and_starts_when_the_worker_brought_the_file(
    alice: User, peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    [entry] = received(alice)
    serve(peer)
    web = login(alice)

    with django_capture_on_commit_callbacks(execute=True):
        page = web.get(url("entry-attachment", entry))

    # Answered without a transfer: the page says what is happening and follows the fetch by itself.
    assert page.status_code == 202
    assert "Fetching attachment… (44 bytes)" in text_of(page)
    assert f'hx-get="{url("entry-attachment-fetch", entry)}?mode=download' in page.content.decode()
    assert not gets(peer)
    job = job_of(entry)
    assert job.state == S.WANTED
    assert [(q.name, q.args) for q in queued] == [("mailbox.fetch_attachment", (job.pk,))]
    polled = web.get(url("entry-attachment-fetch", entry), {"mode": "download", "n": "1"})
    assert "Fetching attachment…" in text_of(polled) and 'data-state="wanted"' in polled.content.decode()

    fetching.fetch_attachment(job.pk)  # the worker

    polled = web.get(url("entry-attachment-fetch", entry), {"mode": "download", "n": "2"})
    assert polled.status_code == 200
    ready = re.search(r'<a class="attachment-ready"[^>]*data-auto-download href="([^"]+)"', polled.content.decode())
    assert ready is not None and "hx-get" not in polled.content.decode()  # no more polling: the download starts
    download = web.get(ready.group(1))
    assert download.status_code == 200 and body_of(download) == FILE
    assert download["Content-Disposition"].startswith("attachment;")
    assert len(gets(peer)) == 1
    assert job_of(entry).state == S.FETCHED and job_of(entry).blob == Blob.objects.get()


@pytest.mark.usefixtures("net")
def test_a_preview_shows_fetching_then_the_image(alice: User, peer: FakePeer) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
    [entry] = received(alice, name="photo.png", kind="image/png", content=png)
    serve(peer, png)
    web = login(alice)

    # The message lists the file with a "Show preview" that asks for the fetch, not the image.
    listed = render_to_string(
        "webmail/partials/attachments.html", {"attachment_items": attachment_items_for_entry(entry)}
    )
    items = re.search(r'hx-get="([^"]+)\?mode=preview"', listed)
    assert items is not None and items.group(1) == url("entry-attachment-fetch", entry)
    assert "?inline=1" not in listed
    first = web.get(url("entry-attachment-fetch", entry), {"mode": "preview"})
    assert "Fetching attachment… (48 bytes)" in text_of(first) and "The preview shows as soon as it is here" in text_of(
        first
    )
    assert web.get(url("entry-attachment", entry), {"inline": "1"}).status_code == 202  # opened on its own: the same

    run_due()

    shown = web.get(url("entry-attachment-fetch", entry), {"mode": "preview", "n": "1"}).content.decode()
    assert f'<img data-testid="attachment-preview" src="{url("entry-attachment", entry)}?inline=1"' in shown
    image = web.get(url("entry-attachment", entry), {"inline": "1"})
    assert image["Content-Type"] == "image/png" and body_of(image) == png
    assert len(gets(peer)) == 1


@pytest.mark.usefixtures("net")
def test_the_api_answers_202_with_retry_after_until_the_bytes_are_here(alice: User, peer: FakePeer) -> None:
    [entry] = received(alice)
    serve(peer)
    api = api_as(alice)
    path = f"/api/v1/inbox/{entry.pk}/attachments/0/"

    waiting = api.get(path)

    assert waiting.status_code == 202
    assert waiting["Retry-After"] == "1"
    assert waiting.json()["status"] == "fetching" and waiting.json()["size"] == len(FILE)
    assert api.get(path).status_code == 202  # asked again meanwhile: the same fetch
    assert run_due() == 1
    done = api.get(path)
    assert done.status_code == 200 and body_of(done) == FILE
    assert len(gets(peer)) == 1


@pytest.mark.usefixtures("net")
def test_two_readers_of_one_message_share_one_fetch(alice: User, local_domain: Any, peer: FakePeer) -> None:
    dave = MailboxFactory(domain=local_domain, local_part="dave")
    alices, daves = received(alice, dave)
    serve(peer)

    assert login(alice).get(url("entry-attachment", alices)).status_code == 202
    assert api_as(dave).get(f"/api/v1/inbox/{daves.pk}/attachments/0/").status_code == 202
    assert ReceivedAttachment.objects.count() == 1
    run_due()

    assert body_of(login(dave).get(url("entry-attachment", daves))) == FILE
    assert body_of(api_as(alice).get(f"/api/v1/inbox/{alices.pk}/attachments/0/")) == FILE
    assert len(gets(peer)) == 1


# --- a sender that does not answer, or answers no --------------------------------------------------------------------


@pytest.mark.usefixtures("net")
def test_a_sender_that_does_not_answer_is_retried_with_backoff_and_retry_now_skips_it(
    alice: User, peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    [entry] = received(alice)
    peer.fail("GET", ATTACHMENT_PATH, "connection refused")
    web = login(alice)
    web.get(url("entry-attachment", entry))

    with django_capture_on_commit_callbacks(execute=True):
        run_due()

    job = job_of(entry)
    assert job.state == S.UNAVAILABLE and job.attempts == 1 and "connection refused" in job.last_error
    assert job.next_attempt_at > timezone.now()
    [retry] = [q for q in queued if q.name == "mailbox.fetch_attachment"]
    assert retry.args == (job.pk,) and retry.countdown and retry.countdown > 0  # the next attempt is queued
    assert run_due() == 0  # not due yet: the backoff holds
    assert len(gets(peer)) == 1

    # The reader sees it plainly, with the time of the last try and a way to try now.
    page = web.get(url("entry-attachment", entry))
    assert page.status_code == 502
    text = text_of(page)
    assert "Unavailable — retrying (last try" in text and "Retry now" in text
    assert "minutes.pdf is still at the sender's: their server did not answer (connection refused" in text
    api = api_as(alice).get(f"/api/v1/inbox/{entry.pk}/attachments/0/")
    assert api.status_code == 502 and api.json()["error"] == "attachment_unavailable"
    assert api.json()["status"] == "unavailable" and api.json()["next_attempt_at"]

    serve(peer)  # the sender is back
    queued.clear()
    with django_capture_on_commit_callbacks(execute=True):
        retried = web.post(url("entry-attachment-fetch", entry), {"mode": "download"}, HTTP_HX_REQUEST="true")
    assert "Fetching attachment…" in text_of(retried)
    assert job_of(entry).state == S.WANTED
    assert [q.args for q in queued] == [(job.pk,)]
    run_due()
    assert body_of(web.get(url("entry-attachment", entry))) == FILE
    assert job_of(entry).attempts == 2


@pytest.mark.usefixtures("net")
def test_a_404_is_retried_and_a_retry_after_is_honoured(alice: User, peer: FakePeer) -> None:
    [entry] = received(alice)
    peer.reply("GET", ATTACHMENT_PATH, 404, {"error": "not_found"})
    api_as(alice).get(f"/api/v1/inbox/{entry.pk}/attachments/0/")
    run_due()
    assert job_of(entry).state == S.UNAVAILABLE and "404" in job_of(entry).last_error

    ReceivedAttachment.objects.update(next_attempt_at=timezone.now())
    peer.reply("GET", ATTACHMENT_PATH, 503, {"error": "busy"}, headers={"Retry-After": "120"})
    run_due()

    job = job_of(entry)
    assert job.state == S.UNAVAILABLE and job.attempts == 2
    assert timedelta(seconds=110) < job.next_attempt_at - timezone.now() <= timedelta(seconds=120)


@pytest.mark.usefixtures("net")
def test_a_failure_once_the_message_expired_ends_the_fetch(alice: User, peer: FakePeer) -> None:
    [entry] = received(alice)
    peer.fail("GET", ATTACHMENT_PATH)
    api_as(alice).get(f"/api/v1/inbox/{entry.pk}/attachments/0/")
    run_due()
    RemoteMessage.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    ReceivedAttachment.objects.update(next_attempt_at=timezone.now())

    run_due()

    assert job_of(entry).state == S.EXPIRED
    assert len(gets(peer)) == 1  # not asked once it had expired
    answer = api_as(alice).get(f"/api/v1/inbox/{entry.pk}/attachments/0/")
    assert answer.status_code == 410


@pytest.mark.usefixtures("net")
@pytest.mark.parametrize(
    ("reason", "state", "words"),
    [
        ("withdrawn", S.WITHDRAWN, "minutes.pdf was withdrawn by the sender."),
        ("expired", S.EXPIRED, "minutes.pdf was no longer kept by the sender's server."),
    ],
)
def test_410_from_the_sender_is_final_and_said_plainly(
    alice: User, peer: FakePeer, reason: str, state: str, words: str
) -> None:
    [entry] = received(alice)
    peer.reply("GET", ATTACHMENT_PATH, 410, {"error": "gone", "reason": reason})
    web = login(alice)
    web.get(url("entry-attachment", entry))

    run_due()

    assert job_of(entry).state == state
    page = web.get(url("entry-attachment", entry))
    assert page.status_code == 410 and words in text_of(page)
    fragment = web.get(url("entry-attachment-fetch", entry)).content.decode()
    assert words in html.unescape(fragment) and "hx-get" not in fragment and "Retry now" not in fragment
    ReceivedAttachment.objects.update(next_attempt_at=timezone.now() - timedelta(hours=1))
    assert fetching.requeue_due() == 0 and run_due() == 0
    assert len(gets(peer)) == 1


@pytest.mark.usefixtures("net")
def test_bytes_other_than_announced_are_refused_stored_nowhere_and_not_asked_for_again(
    alice: User, peer: FakePeer, media: Path
) -> None:
    [entry] = received(alice)
    serve(peer, FILE.replace(b"minutes", b"MINUTES"))
    web = login(alice)
    web.get(url("entry-attachment", entry))

    run_due()

    assert job_of(entry).state == S.TAMPERED and job_of(entry).blob is None
    assert not Blob.objects.exists() and not [p for p in media.rglob("*") if p.is_file()]
    page = web.get(url("entry-attachment", entry))
    assert page.status_code == 502
    assert "minutes.pdf was refused: the sender's server sent other bytes than announced" in text_of(page)
    assert web.post(url("entry-attachment-fetch", entry)).status_code == 302  # "retry now" has nothing to retry
    assert job_of(entry).state == S.TAMPERED and run_due() == 0
    assert len(gets(peer)) == 1


@pytest.mark.usefixtures("net")
def test_a_file_over_the_limit_or_of_a_blocked_type_gets_no_fetch(alice: User, peer: FakePeer, settings: Any) -> None:
    [big] = received(alice)
    [program] = received(alice, name="setup.exe", kind="application/octet-stream")
    settings.PUSHMAIL_MAX_ATTACHMENT_BYTES = 10

    assert login(alice).get(url("entry-attachment", big)).status_code == 413
    refused = api_as(alice).get(f"/api/v1/inbox/{program.pk}/attachments/0/")
    assert refused.status_code == 403 and refused.json()["error"] == "attachment_blocked"
    assert not ReceivedAttachment.objects.exists() and not gets(peer)

    # A limit lowered after a reader asked: the worker checks again before asking the sender.
    settings.PUSHMAIL_MAX_ATTACHMENT_BYTES = 1000
    login(alice).get(url("entry-attachment", big))
    settings.PUSHMAIL_MAX_ATTACHMENT_BYTES = 10
    run_due()
    assert job_of(big).state == S.TOO_LARGE and not gets(peer)
    assert api_as(alice).get(f"/api/v1/inbox/{big.pk}/attachments/0/").status_code == 413


# --- workers that die, the sweep, and the admin ----------------------------------------------------------------------


class WorkerKilled(BaseException):
    """What a SIGKILL looks like from inside the task: nothing after it runs."""


@pytest.mark.usefixtures("net")
def test_a_worker_killed_mid_fetch_is_taken_over_by_the_sweep(
    alice: User,
    peer: FakePeer,
    queued: list[Queued],
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    [entry] = received(alice)
    serve(peer)
    api_as(alice).get(f"/api/v1/inbox/{entry.pk}/attachments/0/")
    job = job_of(entry)

    def killed(**kwargs: Any) -> None:
        raise WorkerKilled()

    with monkeypatch.context() as patched:
        patched.setattr(federation_client, "fetch_attachment", killed)
        with pytest.raises(WorkerKilled):
            fetching.fetch_attachment(job.pk)

    job.refresh_from_db()
    assert job.state == S.FETCHING and job.next_attempt_at > timezone.now()  # held by the dead worker's claim
    assert fetching.requeue_due() == 0 and run_due() == 0  # nobody else takes it meanwhile
    assert api_as(alice).get(f"/api/v1/inbox/{entry.pk}/attachments/0/").status_code == 202  # still on its way

    ReceivedAttachment.objects.update(next_attempt_at=timezone.now() - timedelta(seconds=1))  # the claim lapses
    queued.clear()
    with django_capture_on_commit_callbacks(execute=True):
        fetching.requeue_due()

    assert job_of(entry).state == S.WANTED
    assert [(q.name, q.args) for q in queued] == [("mailbox.fetch_attachment", (job.pk,))]
    run_due()
    assert body_of(api_as(alice).get(f"/api/v1/inbox/{entry.pk}/attachments/0/")) == FILE
    assert job_of(entry).attempts == 2


@pytest.mark.usefixtures("net")
def test_a_worker_whose_claim_lapsed_does_not_overwrite_the_one_that_took_over(
    alice: User, peer: FakePeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    [entry] = received(alice)
    serve(peer)
    api_as(alice).get(f"/api/v1/inbox/{entry.pk}/attachments/0/")
    job = job_of(entry)
    real = federation_client.fetch_attachment

    def slow_then_fails(**kwargs: Any) -> None:
        # While this worker is stuck, its claim lapses and another worker fetches the file.
        ReceivedAttachment.objects.update(next_attempt_at=timezone.now() - timedelta(seconds=1))
        fetching.requeue_due()
        monkeypatch.setattr(federation_client, "fetch_attachment", real)
        fetching.fetch_attachment(job.pk)
        raise federation_client.PeerError("timed out", retryable=True)

    monkeypatch.setattr(federation_client, "fetch_attachment", slow_then_fails)
    fetching.fetch_attachment(job.pk)

    assert job_of(entry).state == S.FETCHED and job_of(entry).last_error == ""


@pytest.mark.usefixtures("net")
def test_the_sweep_queues_due_fetches_and_is_on_the_beat_schedule(
    alice: User, peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    [entry] = received(alice)
    peer.fail("GET", ATTACHMENT_PATH)
    api_as(alice).get(f"/api/v1/inbox/{entry.pk}/attachments/0/")
    run_due()
    queued.clear()

    with django_capture_on_commit_callbacks(execute=True):
        assert fetching.requeue_due() == 0  # not due yet
        ReceivedAttachment.objects.update(next_attempt_at=timezone.now() - timedelta(minutes=5))
        assert fetching.requeue_due() == 1

    assert [(q.name, q.args) for q in queued] == [("mailbox.fetch_attachment", (job_of(entry).pk,))]
    schedule = {entry["task"] for entry in django_settings.CELERY_BEAT_SCHEDULE.values()}
    assert "mailbox.requeue_due_attachments" in schedule


@pytest.mark.usefixtures("net")
def test_retry_now_in_the_admin(alice: User, local_domain: Any, peer: FakePeer) -> None:
    from accounts.services import create_mailbox

    [waiting] = received(alice)
    [refused] = received(alice)
    peer.fail("GET", ATTACHMENT_PATH)
    for entry in (waiting, refused):
        api_as(alice).get(f"/api/v1/inbox/{entry.pk}/attachments/0/")
    run_due()
    ReceivedAttachment.objects.filter(remote=refused.remote).update(state=S.TAMPERED, next_attempt_at=None)
    root = create_mailbox(address=f"root@{local_domain.name}", password="admin passphrase 123", is_staff=True)
    User.objects.filter(pk=root.pk).update(is_superuser=True)
    admin = login(User.objects.get(pk=root.pk))
    assert admin.get("/admin/mailbox/receivedattachment/").status_code == 200

    response = admin.post(
        "/admin/mailbox/receivedattachment/",
        {"action": "retry_fetch_now", "_selected_action": [job_of(waiting).pk, job_of(refused).pk]},
        follow=True,
    )

    assert "1 fetch queued now." in text_of(response)
    assert job_of(waiting).state == S.WANTED and job_of(refused).state == S.TAMPERED
    serve(peer)
    run_due()
    assert job_of(waiting).state == S.FETCHED


# --- a large file from a slow sender, over a real socket ------------------------------------------------------------


class SlowSender:
    """A sender on 127.0.0.1 that publishes its discovery document and trickles a file out."""

    def __init__(self, peer: FakePeer, content: bytes, *, pieces: int, pause: float) -> None:
        server = self
        self.requests: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the standard library's name
                server.requests.append(self.path)
                if self.path == discovery.WELL_KNOWN_PATH:
                    document = peer.document()
                    document["api"] = server.base + "/federation/v1/"
                    self._send(200, "application/json", http_json(document))
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                step = -(-len(content) // pieces)
                for start in range(0, len(content), step):
                    time.sleep(pause)
                    self.wfile.write(content[start : start + step])
                    self.wfile.flush()

            def _send(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def http_json(data: Any) -> bytes:
    import json

    return json.dumps(data).encode()


@pytest.fixture
def slow_sender(settings: Any) -> Iterator[SlowSender]:
    big = bytes(range(256)) * 512  # 128 KiB
    sender = SlowSender(FakePeer(PEER, "http://unused"), big, pieces=8, pause=0.2)  # about 1.6 s in all
    settings.PUSHMAIL_PEERS = {PEER: sender.base}
    settings.PUSHMAIL_HTTP_TIMEOUT = 0.5  # a reader's request could not have waited this long
    sender.content = big  # type: ignore[attr-defined]
    yield sender
    sender.close()


def test_a_large_file_from_a_slow_sender_arrives(alice: User, slow_sender: SlowSender) -> None:
    content: bytes = slow_sender.content  # type: ignore[attr-defined]
    [entry] = received(alice, name="scan.bin", kind="application/octet-stream", content=content)
    api = api_as(alice)
    path = f"/api/v1/inbox/{entry.pk}/attachments/0/"

    started = time.monotonic()
    assert api.get(path).status_code == 202
    assert time.monotonic() - started < 1.0  # the request did not wait for the transfer

    fetching.fetch_attachment(job_of(entry).pk)  # the worker, with a deadline for this size

    assert job_of(entry).state == S.FETCHED, job_of(entry).last_error
    assert body_of(api.get(path)) == content
    assert sum("/attachments/" in p for p in slow_sender.requests) == 1
