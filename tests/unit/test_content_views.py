"""Showing mail safely: the sandboxed HTML frame, remote-content choices, image proxy, plain text, .eml."""

from __future__ import annotations

import contextlib
import email
import email.policy
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core.files.base import ContentFile
from django.template.loader import render_to_string
from django.test import Client, RequestFactory
from django.urls import reverse

from accounts.models import RemoteContentPolicy, User
from attachments.services import AttachmentInput, store_upload
from mailbox import remote_content
from mailbox.models import AllowedSender, EntryState, FetchState, InboxEntry
from tests.factories import (
    InboxEntryFactory,
    MailboxFactory,
    PeerMessageFactory,
    RemoteMessageFactory,
    SentMessageFactory,
)

FRAME_CSP = (
    "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'self'; "
    "sandbox allow-popups allow-popups-to-escape-sandbox"
)
TRACKER = "https://tracker.example/pixel.gif"
HTML = (
    '<p style="color:#335">Hello <b>Alice</b></p><script>alert(1)</script>'
    f'<img src="{TRACKER}" alt="logo"><a href="https://example.org/">read more</a>'
    '<svg onload="alert(2)"><use href="data:image/svg+xml,x"/></svg>'
)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def received(
    owner: User, *, html: str | None = HTML, text: str = "Hello Alice", sender: str = "carol@peer.test", **extra: Any
) -> InboxEntry:
    """A fetched message from a remote sender in ``owner``'s inbox."""
    message = PeerMessageFactory(html=html, text=text, sender=sender, to=[owner.email], **extra)
    remote = RemoteMessageFactory(
        global_id=message.global_id,
        sender=sender,
        subject=message.subject,
        content=message.content(),
        state=FetchState.FETCHED,
        in_reply_to=message.in_reply_to,
        references=message.references,
    )
    return InboxEntryFactory(owner=owner, remote=remote, state=EntryState.FETCHED)


def signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def alice_client(alice: User) -> Client:
    return signed_in(alice)


def frame(client: Client, entry: InboxEntry) -> str:
    response = client.get(reverse("webmail:entry-html", args=[entry.pk]))
    assert response.status_code == 200
    return response.content.decode()


# --- the HTML frame --------------------------------------------------------------------


@pytest.mark.django_db
def test_html_frame_has_its_own_strict_policy(alice: User, alice_client: Client) -> None:
    entry = received(alice)
    response = alice_client.get(reverse("webmail:entry-html", args=[entry.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "text/html; charset=utf-8"
    assert response["Content-Security-Policy"] == FRAME_CSP
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "no-referrer"
    assert "private" in response["Cache-Control"]
    body = response.content.decode()
    assert "Hello <b>Alice</b>" in body
    assert 'style="color:#335"' in body
    assert "<script" not in body.lower()
    assert "alert(" not in body
    assert "<svg" not in body.lower()
    assert 'href="https://example.org/"' in body and 'target="_blank"' in body


@pytest.mark.django_db
def test_remote_images_are_blocked_by_default(alice: User, alice_client: Client) -> None:
    entry = received(alice)
    body = frame(alice_client, entry)
    assert "tracker.example" not in body
    assert "/proxy/image/" not in body
    assert 'alt="logo"' in body


@pytest.mark.django_db
def test_other_users_cannot_see_the_frame_text_or_eml(alice: User, bob: User) -> None:
    entry = received(alice)
    bob_client = signed_in(bob)
    for name in ("entry-html", "entry-text", "entry-eml"):
        assert bob_client.get(reverse(f"webmail:{name}", args=[entry.pk])).status_code == 404, name
    response = bob_client.post(reverse("webmail:entry-allow-remote", args=[entry.pk]), {"scope": "message"})
    assert response.status_code == 404
    assert bob_client.get(reverse("webmail:entry-allow-remote", args=[entry.pk])).status_code == 404
    entry.refresh_from_db()
    assert not entry.remote_content_allowed


@pytest.mark.django_db
def test_signed_out_visitors_are_sent_to_login(alice: User) -> None:
    entry = received(alice)
    response = Client().get(reverse("webmail:entry-html", args=[entry.pk]))
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


@pytest.mark.django_db
def test_unfetched_message_has_no_frame_yet(alice: User, alice_client: Client) -> None:
    entry = InboxEntryFactory(owner=alice)  # notified, body still at the sender's
    assert alice_client.get(reverse("webmail:entry-html", args=[entry.pk])).status_code == 404


# --- the body partial ---------------------------------------------------------------------


def render_partial(user: User, **context: Any) -> str:
    request = RequestFactory().get("/")
    request.user = user
    return render_to_string("webmail/partials/message_body.html", context, request)


@pytest.mark.django_db
def test_partial_frames_html_in_a_sandbox_without_scripts(alice: User) -> None:
    from mailbox.selectors import body_of

    entry = received(alice)
    page = render_partial(alice, entry=entry, body=body_of(entry))
    assert 'data-testid="message-html"' in page
    assert 'sandbox="allow-popups allow-popups-to-escape-sandbox"' in page
    assert "allow-scripts" not in page and "allow-same-origin" not in page
    assert f'src="{reverse("webmail:entry-html", args=[entry.pk])}"' in page
    assert 'data-testid="remote-content-banner"' in page
    assert "Remote images are hidden to protect your privacy." in page
    assert "Show images" in page and "Always show from this sender" in page
    assert "<script" not in page  # the HTML itself never enters the page


@pytest.mark.django_db
def test_partial_has_no_banner_without_remote_content(alice: User) -> None:
    from mailbox.selectors import body_of

    entry = received(alice, html="<p>Only <i>local</i> formatting</p>")
    page = render_partial(alice, entry=entry, body=body_of(entry))
    assert 'data-testid="message-html"' in page
    assert "remote-content-banner" not in page


@pytest.mark.django_db
def test_partial_shows_plain_text_escaped(alice: User) -> None:
    from mailbox.selectors import body_of

    entry = received(alice, html=None, text="<b>not bold</b> & https://example.org/x")
    page = render_partial(alice, entry=entry, body=body_of(entry))
    assert 'data-testid="message-body"' in page
    assert "&lt;b&gt;not bold&lt;/b&gt; &amp;" in page
    assert "<iframe" not in page
    assert 'href="https://example.org/x"' in page


# --- allowing remote content ------------------------------------------------------------------


def proxied_image_urls(body: str) -> list[str]:
    import re

    return [u.replace("&amp;", "&") for u in re.findall(r'src="(http://testserver/proxy/image/\?[^"]+)"', body)]


@pytest.mark.django_db
def test_show_images_for_one_message(alice: User, alice_client: Client) -> None:
    entry = received(alice)
    other = received(alice)  # same sender
    response = alice_client.post(reverse("webmail:entry-allow-remote", args=[entry.pk]), {"scope": "message"})
    assert response.status_code == 302
    assert response["Location"] == reverse("webmail:entry", args=[entry.pk])

    urls = proxied_image_urls(frame(alice_client, entry))
    assert len(urls) == 1
    assert parse_qs(urlsplit(urls[0]).query)["u"] == [TRACKER]
    assert "tracker.example/pixel.gif" not in frame(alice_client, entry).split("/proxy/image/")[0]
    assert proxied_image_urls(frame(alice_client, other)) == []
    assert not AllowedSender.objects.filter(owner=alice).exists()


@pytest.mark.django_db
def test_always_show_from_this_sender(alice: User, alice_client: Client) -> None:
    entry = received(alice, sender="Carol@Peer.test")
    later = received(alice, sender="carol@peer.test")
    stranger = received(alice, sender="dave@peer.test")
    alice_client.post(reverse("webmail:entry-allow-remote", args=[entry.pk]), {"scope": "sender"})
    assert AllowedSender.objects.filter(owner=alice, address="carol@peer.test").exists()
    assert len(proxied_image_urls(frame(alice_client, later))) == 1
    assert proxied_image_urls(frame(alice_client, stranger)) == []


@pytest.mark.django_db
def test_user_setting_always_shows_images(alice: User, alice_client: Client) -> None:
    alice.remote_content = RemoteContentPolicy.ALWAYS
    alice.save(update_fields=["remote_content"])
    entry = received(alice)
    assert len(proxied_image_urls(frame(alice_client, entry))) == 1
    from mailbox.selectors import body_of

    assert "remote-content-banner" not in render_partial(alice, entry=entry, body=body_of(entry))


@pytest.mark.django_db
def test_allowing_through_htmx_swaps_in_the_body_without_the_banner(alice: User, alice_client: Client) -> None:
    entry = received(alice)
    response = alice_client.post(
        reverse("webmail:entry-allow-remote", args=[entry.pk]), {"scope": "message"}, headers={"HX-Request": "true"}
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert 'data-testid="message-html"' in page
    assert "remote-content-banner" not in page


@pytest.mark.django_db
def test_allow_remote_needs_post_and_a_known_scope(alice: User, alice_client: Client) -> None:
    entry = received(alice)
    url = reverse("webmail:entry-allow-remote", args=[entry.pk])
    assert alice_client.get(url).status_code == 405
    assert alice_client.post(url, {"scope": "everything"}).status_code == 400
    entry.refresh_from_db()
    assert not entry.remote_content_allowed


# --- the image proxy -------------------------------------------------------------------------


class ImageServer:
    """A real HTTP server on 127.0.0.1 that records every request it gets."""

    def __init__(self, routes: dict[str, tuple[str, bytes]]) -> None:
        self.routes = routes
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.connections: list[socket.socket] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so pooled connections get reused

            def setup(self) -> None:
                super().setup()
                owner.connections.append(self.connection)

            def do_GET(self) -> None:
                owner.requests.append((self.path, dict(self.headers)))
                content_type, body = owner.routes.get(self.path, ("text/plain", b""))
                self.send_response(200 if self.path in owner.routes else 404)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Set-Cookie", "tracking=1")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = None
        for port in range(18610, 18640):
            try:
                self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
                break
            except OSError:
                continue
        assert self.httpd is not None, "no free port in 18610-18639"
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        assert self.httpd is not None
        self.httpd.shutdown()
        self.httpd.server_close()
        for connection in self.connections:  # kept-alive ones too, so no later test reaches this server
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def image_server(settings: Any) -> Iterator[Callable[[dict[str, tuple[str, bytes]]], ImageServer]]:
    settings.PUSHMAIL_PEERS = {}
    settings.PUSHMAIL_IMAGE_PROXY_ALLOW_HOSTS = ["127.0.0.1"]
    servers: list[ImageServer] = []

    def start(routes: dict[str, tuple[str, bytes]]) -> ImageServer:
        server = ImageServer(routes)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def proxy(client: Client, user: User, url: str, **kwargs: Any):  # type: ignore[no-untyped-def]
    return client.get(remote_content.proxy_path(url, user=user), **kwargs)


@pytest.mark.django_db
def test_proxy_serves_a_signed_image_without_exposing_the_reader(alice: User, image_server: Any) -> None:
    server = image_server({"/logo.png": ("image/png", PNG)})
    browser = signed_in(alice)
    response = proxy(browser, alice, server.url("/logo.png"), headers={"Referer": "http://testserver/mail/entry/1/"})
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert response.content == PNG
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response["Content-Security-Policy"]
    assert "Set-Cookie" not in response or "tracking" not in response["Set-Cookie"]
    [(path, headers)] = server.requests
    assert path == "/logo.png"
    names = {name.lower() for name in headers}
    assert "cookie" not in names and "referer" not in names
    assert headers["User-Agent"] == remote_content.PROXY_USER_AGENT


@pytest.mark.django_db
def test_proxy_works_without_the_session_cookie(alice: User, image_server: Any) -> None:
    # Images inside the sandboxed frame come from an opaque origin, without cookies.
    server = image_server({"/a.gif": ("image/gif", b"GIF89a" + b"\x00" * 20)})
    response = proxy(Client(), alice, server.url("/a.gif"))
    assert response.status_code == 200
    assert response["Content-Type"] == "image/gif"


@pytest.mark.django_db
def test_proxy_refuses_unsigned_and_tampered_urls(alice: User, image_server: Any) -> None:
    server = image_server({"/a.png": ("image/png", PNG), "/b.png": ("image/png", PNG)})
    client = signed_in(alice)
    endpoint = reverse("webmail:image-proxy")
    assert client.get(endpoint, {"u": server.url("/a.png")}).status_code == 403
    assert client.get(endpoint, {"u": server.url("/a.png"), "s": "1.2.abc"}).status_code == 403
    good = parse_qs(urlsplit(remote_content.proxy_path(server.url("/a.png"), user=alice)).query)["s"][0]
    assert client.get(endpoint, {"u": server.url("/b.png"), "s": good}).status_code == 403
    user_id, issued, mac = good.split(".")
    assert (
        client.get(endpoint, {"u": server.url("/a.png"), "s": f"{user_id}.{int(issued) + 3600}.{mac}"}).status_code
        == 403
    )
    assert server.requests == []


@pytest.mark.django_db
def test_proxy_links_expire_and_die_with_the_account(alice: User, image_server: Any) -> None:
    server = image_server({"/a.png": ("image/png", PNG)})
    url = server.url("/a.png")
    old = remote_content.sign_url(url, user_id=alice.pk, now=time.time() - remote_content.PROXY_LINK_SECONDS - 7200)
    endpoint = reverse("webmail:image-proxy")
    assert Client().get(endpoint, {"u": url, "s": old}).status_code == 403
    fresh = remote_content.sign_url(url, user_id=alice.pk)
    alice.is_active = False
    alice.save(update_fields=["is_active"])
    assert Client().get(endpoint, {"u": url, "s": fresh}).status_code == 403
    assert server.requests == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("content_type", "content"),
    [
        ("image/png", b"<html><script>alert(1)</script></html>"),
        ("image/svg+xml", b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>'),
        ("image/png", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>'),
        ("text/plain", b"just text"),
    ],
    ids=["html-labelled-png", "svg", "svg-labelled-png", "text"],
)
def test_proxy_refuses_what_is_not_a_raster_image(
    alice: User, image_server: Any, content_type: str, content: bytes
) -> None:
    server = image_server({"/x": (content_type, content)})
    response = proxy(signed_in(alice), alice, server.url("/x"))
    assert response.status_code == 415
    assert response["Content-Type"].startswith("text/plain")
    assert response["X-Content-Type-Options"] == "nosniff"


@pytest.mark.django_db
def test_proxy_refuses_oversized_images(alice: User, image_server: Any, settings: Any) -> None:
    settings.PUSHMAIL_IMAGE_PROXY_MAX_BYTES = 1000
    server = image_server({"/big.png": ("image/png", PNG + b"\x00" * 2000)})
    assert proxy(signed_in(alice), alice, server.url("/big.png")).status_code == 413


@pytest.mark.django_db
def test_proxy_refuses_private_addresses_not_allowlisted(alice: User, image_server: Any, settings: Any) -> None:
    server = image_server({"/a.png": ("image/png", PNG)})
    settings.PUSHMAIL_IMAGE_PROXY_ALLOW_HOSTS = []
    client = signed_in(alice)
    for url in (server.url("/a.png"), f"http://localhost:{server.port}/a.png", "http://169.254.169.254/latest/"):
        response = proxy(client, alice, url)
        assert response.status_code == 403, url
    assert server.requests == []


@pytest.mark.django_db
def test_shown_images_load_through_the_proxy_end_to_end(alice: User, image_server: Any) -> None:
    server = image_server({"/logo.png": ("image/png", PNG)})
    entry = received(alice, html=f'<p>Hi</p><img src="{server.url("/logo.png")}">')
    client = signed_in(alice)
    assert proxied_image_urls(frame(client, entry)) == []
    assert server.requests == []  # showing the message reached nobody
    client.post(reverse("webmail:entry-allow-remote", args=[entry.pk]), {"scope": "message"})
    [url] = proxied_image_urls(frame(client, entry))
    assert server.requests == []  # still nobody: the browser has not asked yet
    response = Client().get(url)  # the frame's image request, without cookies
    assert response.status_code == 200 and response.content == PNG
    assert len(server.requests) == 1


@pytest.mark.django_db
def test_a_host_that_does_not_answer_is_left_alone_for_a_while(
    alice: User, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    from federation import http

    calls: list[str] = []

    def down(method: str, url: str, **kwargs: Any) -> http.Response:
        calls.append(url)
        raise http.OutboundError("timed out after 5s contacting slow.example")

    monkeypatch.setattr(http, "request", down)
    client = signed_in(alice)
    first = proxy(client, alice, "https://slow.example/a.png")
    second = proxy(client, alice, "https://slow.example/b.png")
    assert (first.status_code, second.status_code) == (502, 502)
    assert calls == ["https://slow.example/a.png"]
    assert proxy(client, alice, "https://other.example/c.png").status_code == 502
    assert len(calls) == 2


def test_the_proxy_allowlist_does_not_outlive_its_call(image_server: Any) -> None:
    """Hosts allowed for one image-proxy fetch stay blocked for every other outbound request."""
    from federation import http

    server = image_server({"/a.png": ("image/png", PNG)})
    url = f"http://localhost:{server.port}/a.png"
    assert http.request("GET", url, extra_private_hosts=frozenset({"localhost"}), allow_http=True).status == 200
    # Same host again: the keep-alive connection in the pool must be refused too.
    with pytest.raises(http.BlockedAddress):
        http.request("GET", url, allow_http=True)
    with pytest.raises(http.BlockedAddress):
        http.request("GET", url)
    assert len(server.requests) == 1


# --- plain text and .eml --------------------------------------------------------------------


@pytest.mark.django_db
def test_plain_text_view(alice: User, alice_client: Client) -> None:
    entry = received(alice, text="Line one\n<script>x</script>")
    response = alice_client.get(reverse("webmail:entry-text", args=[entry.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response["Content-Security-Policy"]
    assert response.content.decode() == "Line one\n<script>x</script>"


@pytest.mark.django_db
def test_plain_text_of_an_html_only_message(alice: User, alice_client: Client) -> None:
    entry = received(alice, text="", html="<p>First &amp; foremost</p><p>Second<script>evil()</script></p>")
    text = alice_client.get(reverse("webmail:entry-text", args=[entry.pk])).content.decode()
    assert "First & foremost" in text and "Second" in text
    assert "<p>" not in text and "evil" not in text


def parse_eml(response: Any) -> email.message.EmailMessage:
    return email.message_from_bytes(response.content, policy=email.policy.default)  # type: ignore[return-value]


@pytest.mark.django_db
def test_entry_downloads_as_eml(alice: User, alice_client: Client) -> None:
    entry = received(
        alice,
        subject="Quarterly report: Q3/Q4",
        in_reply_to="<parent@peer.test>",
        references=["<root@peer.test>", "<parent@peer.test>"],
    )
    response = alice_client.get(reverse("webmail:entry-eml", args=[entry.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "message/rfc822"
    assert response["Content-Disposition"] == 'attachment; filename="Quarterly_report_Q3Q4.eml"'
    assert response["X-Content-Type-Options"] == "nosniff"
    msg = parse_eml(response)
    assert msg["From"] == "carol@peer.test"
    assert msg["To"] == "alice@alpha.test"
    assert msg["Subject"] == "Quarterly report: Q3/Q4"
    assert msg["Message-ID"] == entry.remote.message_id  # type: ignore[union-attr]
    assert msg["In-Reply-To"] == "<parent@peer.test>"
    assert msg["References"] == "<root@peer.test> <parent@peer.test>"
    assert msg["Date"].datetime == entry.remote.date  # type: ignore[union-attr]
    assert msg.get_body(("plain",)).get_content().strip() == "Hello Alice"  # type: ignore[union-attr]
    assert "<b>Alice</b>" in msg.get_body(("html",)).get_content()  # type: ignore[union-attr]


@pytest.mark.django_db
def test_eml_lists_attachments_still_at_the_sender(alice: User, alice_client: Client) -> None:
    entry = received(alice, html=None)
    entry.remote.attachments = [  # type: ignore[union-attr]
        {"name": "plan.pdf", "type": "application/pdf", "size": 1234, "digest": "sha-256:" + "ab" * 32}
    ]
    entry.remote.save(update_fields=["attachments"])  # type: ignore[union-attr]
    msg = parse_eml(alice_client.get(reverse("webmail:entry-eml", args=[entry.pk])))
    assert not list(msg.iter_attachments())
    assert "plan.pdf (application/pdf, 1234 bytes)" in msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]


@pytest.mark.django_db
def test_sent_message_eml_includes_attachments_held_here(alice: User, net: Any) -> None:
    blob = store_upload(file=ContentFile(b"%PDF-1.4 plan", name="plan.pdf"))
    message = SentMessageFactory(
        sender=alice,
        subject="Plan",
        text="See attached",
        html="<p>See <i>attached</i></p>",
        attachments=[AttachmentInput(blob=blob, name="plan.pdf", content_type="application/pdf")],
    )
    client = signed_in(alice)
    msg = parse_eml(client.get(reverse("webmail:sent-eml", args=[message.pk])))
    assert msg["From"] == "alice@alpha.test"
    assert msg["Message-ID"] == message.message_id
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_filename() == "plan.pdf"
    assert attachment.get_content() == b"%PDF-1.4 plan"
    stranger = signed_in(MailboxFactory(domain=alice.domain))
    assert stranger.get(reverse("webmail:sent-eml", args=[message.pk])).status_code == 404


@pytest.mark.django_db
def test_sent_html_frame_is_for_its_sender_only(alice: User, bob: User, net: Any) -> None:
    message = SentMessageFactory(sender=alice, html="<p>Hi <b>there</b></p><script>x()</script>")
    response = signed_in(alice).get(reverse("webmail:sent-html", args=[message.pk]))
    assert response.status_code == 200
    assert response["Content-Security-Policy"] == FRAME_CSP
    assert "<b>there</b>" in response.content.decode() and "<script" not in response.content.decode()
    assert signed_in(bob).get(reverse("webmail:sent-html", args=[message.pk])).status_code == 404


@pytest.mark.django_db
def test_eml_headers_cannot_be_injected(alice: User, alice_client: Client) -> None:
    entry = received(alice, html=None)
    InboxEntry.objects.filter(pk=entry.pk).update(subject="Hi\r\nBcc: victim@example.org")
    response = alice_client.get(reverse("webmail:entry-eml", args=[entry.pk]))
    msg = parse_eml(response)
    assert msg["Bcc"] is None
    assert msg["Subject"] == "Hi Bcc: victim@example.org"
    assert b"\r\nBcc:" not in response.content


@pytest.mark.django_db
def test_long_plain_text_is_shown_whole_and_escaped(alice: User) -> None:
    from mailbox.selectors import body_of

    text = "<i>x</i> https://example.org/ " * 2000
    entry = received(alice, html=None, text=text)
    page = render_partial(alice, entry=entry, body=body_of(entry))
    assert page.count("&lt;i&gt;x&lt;/i&gt;") == 2000
    assert "<i>" not in page


@pytest.mark.django_db
def test_a_conversation_reads_the_allowed_senders_once(alice: User) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from mailbox.selectors import body_of

    entries = [received(alice) for _ in range(4)]
    bodies = [body_of(e) for e in entries]
    request = RequestFactory().get("/")
    request.user = alice
    with CaptureQueriesContext(connection) as queries:
        pages = [
            render_to_string("webmail/partials/message_body.html", {"entry": e, "body": b}, request)
            for e, b in zip(entries, bodies, strict=True)
        ]
    assert all('data-testid="remote-content-banner"' in page for page in pages)
    assert sum("mailbox_allowedsender" in q["sql"] for q in queries.captured_queries) == 1


@pytest.mark.django_db
def test_eml_keeps_a_non_ascii_subject(alice: User, alice_client: Client) -> None:
    entry = received(alice, subject="Café ☕ plans", text="Ça va ?")
    response = alice_client.get(reverse("webmail:entry-eml", args=[entry.pk]))
    assert response["Content-Disposition"] == "attachment; filename*=utf-8''Caf%C3%A9_plans.eml"
    msg = parse_eml(response)
    assert msg["Subject"] == "Café ☕ plans"
    assert msg.get_body(("plain",)).get_content().strip() == "Ça va ?"  # type: ignore[union-attr]
    assert all(byte < 128 for byte in response.content)  # 7-bit clean on the wire
