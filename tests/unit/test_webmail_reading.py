"""Webmail reading: a conversation as one view, the pull made visible, the sender's delivery status."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import User
from mailbox.models import EntryState, FetchState, InboxEntry, RemoteMessage
from mailbox.services import accept_notification, accept_withdrawal, fetch_body, post_notice, request_fetch
from outbox.models import BodyFetch, Delivery, DeliveryState, Message, Recipient, RecipientStatus
from outbox.services import send_message
from tests.conftest import FakePeer, Queued, ago
from tests.factories import PeerMessage, PeerMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]


# --- helpers ---------------------------------------------------------------------------


def _client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _receive(peer: FakePeer, message: PeerMessage) -> InboxEntry:
    """The peer notified alice (and serves the body on request); her entry, not yet fetched."""
    peer.bodies[str(message.global_id)] = message.content()
    results = accept_notification(origin=peer.domain, notification=message.notification())
    assert any(r.status == "accepted" for r in results), results
    return InboxEntry.objects.get(remote__global_id=message.global_id, owner__email=message.to[0])


def _fetched(peer: FakePeer, message: PeerMessage) -> InboxEntry:
    """Received and its body pulled, as if someone had opened it before."""
    entry = _receive(peer, message)
    request_fetch(remote_id=entry.remote_id)
    fetch_body(entry.remote_id)
    entry.refresh_from_db()
    assert entry.state == EntryState.FETCHED
    return entry


def _page(response: Any) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def _thread_keys(html: str) -> list[str]:
    return re.findall(r'data-testid="thread-message" data-key="([^"]+)"', html)


def _entry_url(entry: InboxEntry) -> str:
    return f"/mail/entry/{entry.pk}/"


def _body_url(entry: InboxEntry) -> str:
    return f"/mail/entry/{entry.pk}/body/"


# --- conversations ---------------------------------------------------------------------


def test_conversation_shows_reply_chain_with_own_sent_replies_in_date_order(alice: User, peer: FakePeer) -> None:
    first = PeerMessageFactory(subject="Lunch?", text="Shall we have lunch on Friday?", date=ago(hours=3))
    first_entry = _fetched(peer, first)
    reply = send_message(
        sender=alice, to=["carol@peer.test"], subject="Re: Lunch?", text="Friday works.", in_reply_to=first.message_id
    )
    Message.objects.filter(pk=reply.pk).update(date=ago(hours=2))
    answer = PeerMessageFactory(
        subject="Re: Lunch?",
        text="Great, see you at noon.",
        date=ago(hours=1),
        in_reply_to=reply.message_id,
        references=[first.message_id, reply.message_id],
    )
    answer_entry = _fetched(peer, answer)
    unrelated = _fetched(peer, PeerMessageFactory(subject="Other", text="Unrelated topic"))
    InboxEntry.objects.filter(pk=first_entry.pk).update(read=True)  # read before: it stays collapsed

    html = _page(_client(alice).get(_entry_url(answer_entry)))

    assert _thread_keys(html) == [f"entry-{first_entry.pk}", f"sent-{reply.pk}", f"entry-{answer_entry.pk}"]
    assert "Shall we have lunch on Friday?" in html and "Friday works." in html and "see you at noon" in html
    assert "Unrelated topic" not in html and f"entry-{unrelated.pk}" not in html
    # The opened one is expanded, the older read ones collapsed.
    assert re.search(rf'data-key="entry-{answer_entry.pk}" data-state="fetched" open data-current="true"', html)
    assert not re.search(rf'data-key="entry-{first_entry.pk}"[^>]* open', html)
    # Opening it from the first message shows the same conversation.
    html = _page(_client(alice).get(_entry_url(first_entry)))
    assert _thread_keys(html) == [f"entry-{first_entry.pk}", f"sent-{reply.pk}", f"entry-{answer_entry.pk}"]
    assert f'href="/mail/sent/{reply.pk}/"' in html


def test_message_view_has_header_actions_and_marks_read(alice: User, peer: FakePeer) -> None:
    message = PeerMessageFactory(to=["alice@alpha.test"], cc=["bob@alpha.test"], text="Hello <b>there</b>")
    entry = _fetched(peer, message)

    html = _page(_client(alice).get(_entry_url(entry)))

    entry.refresh_from_db()
    assert entry.read and entry.opened_at is not None
    assert "carol@peer.test" in html and "alice@alpha.test" in html and "bob@alpha.test" in html
    assert "Hello &lt;b&gt;there&lt;/b&gt;" in html  # text is escaped, never markup
    for label in ("Reply", "Reply all", "Forward", "Archive", "Delete", "Mark unread", "Star"):
        assert f">{label}</button>" in html, label
    assert f'action="/compose/reply/{entry.pk}/"' in html
    assert f'action="/mail/entry/{entry.pk}/action/"' in html or 'name="action" value="archive"' in html
    assert "Plain text" in html and "Download .eml" in html
    assert 'data-testid="message-body"' in html


def test_attachments_of_the_opened_message_are_listed_as_still_at_the_senders(alice: User, peer: FakePeer) -> None:
    entry = _fetched(peer, PeerMessageFactory(text="See the report"))
    manifest = [{"name": "report.pdf", "type": "application/pdf", "size": 12345, "digest": "sha-256:" + "0" * 64}]
    RemoteMessage.objects.filter(pk=entry.remote_id).update(attachments=manifest)

    html = _page(_client(alice).get(_entry_url(entry)))

    assert 'data-testid="attachment-link"' in html and "report.pdf" in html
    assert f'href="/mail/entry/{entry.pk}/attachments/0/"' in html
    assert "at sender" in html
    # Nothing on the page loads the file by itself: a preview is only shown on request.
    assert 'data-testid="attachment-preview"' not in html
    assert f'hx-get="/mail/entry/{entry.pk}/attachments/0/fetch/?mode=preview"' in html
    assert "?inline=1" not in html
    assert ">Show preview</button>" in html


def test_plain_text_view(alice: User, peer: FakePeer) -> None:
    entry = _fetched(peer, PeerMessageFactory(text="Line one\nLine <two>"))

    html = _page(_client(alice).get(_entry_url(entry) + "?plain=1"))

    assert '<pre class="plain-text" data-testid="message-body">Line one\nLine &lt;two&gt;</pre>' in html


# --- the pull made visible ------------------------------------------------------------------


def test_indicator_turns_into_the_body_once_the_fetch_finishes(
    alice: User, peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    message = PeerMessageFactory(text="The body from afar")
    entry = _receive(peer, message)
    client = _client(alice)

    with django_capture_on_commit_callbacks(execute=True):
        html = _page(client.get(_entry_url(entry)))

    assert [q.name for q in queued] == ["mailbox.fetch_body"]  # opening queued the fetch
    assert 'data-testid="fetch-indicator"' in html and "Fetching from the sender's server…" in html
    assert f'hx-get="{_body_url(entry)}?n=1"' in html and 'hx-swap="outerHTML"' in html
    assert 'hx-trigger="load delay:500ms"' in html
    assert "The body from afar" not in html

    poll = _page(client.get(_body_url(entry) + "?n=1", headers={"HX-Request": "true"}))
    assert 'data-testid="fetch-indicator"' in poll and f'hx-get="{_body_url(entry)}?n=2"' in poll
    # A fetch that takes long is asked about less often; a bad counter is harmless.
    assert 'hx-trigger="load delay:2s"' in _page(client.get(_body_url(entry) + "?n=30"))
    assert 'hx-trigger="load delay:500ms"' in _page(client.get(_body_url(entry) + "?n=-1x"))
    assert "<html" not in poll  # a fragment, swapped in place

    fetch_body(entry.remote_id)  # the worker runs the task
    poll = _page(client.get(_body_url(entry), headers={"HX-Request": "true"}))

    assert 'data-testid="message-body"' in poll and "The body from afar" in poll
    assert "fetch-indicator" not in poll and "hx-get" not in poll  # polling stops
    entry.refresh_from_db()
    assert entry.opened_at is not None  # seen by the reader once the body was swapped in


def test_asking_for_the_body_of_an_unopened_entry_fetches_it(
    alice: User, peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    entry = _receive(peer, PeerMessageFactory(text="Straight to the body"))

    with django_capture_on_commit_callbacks(execute=True):
        poll = _page(_client(alice).get(_body_url(entry)))

    assert [q.name for q in queued] == ["mailbox.fetch_body"]  # otherwise the indicator would poll forever
    assert 'data-testid="fetch-indicator"' in poll and 'data-state="fetching"' in poll


def test_unavailable_is_shown_plainly_with_retry_now(
    alice: User, peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    message = PeerMessageFactory(text="Eventually here")
    entry = _receive(peer, message)
    client = _client(alice)
    client.get(_entry_url(entry))
    peer.go_down()
    fetch_body(entry.remote_id)

    html = _page(client.get(_entry_url(entry)))

    remote = RemoteMessage.objects.get(pk=entry.remote_id)
    assert remote.state == FetchState.UNAVAILABLE and remote.next_attempt_at > timezone.now()
    assert "Unavailable — the sender's server did not answer, retrying (last try " in html
    assert f'datetime="{remote.last_attempt_at.isoformat()}"' in html
    assert ">Retry now</button>" in html
    assert 'data-testid="fetch-indicator"' not in html

    peer.come_back()
    with django_capture_on_commit_callbacks(execute=True):
        retried = _page(client.post(f"/mail/entry/{entry.pk}/retry/", headers={"HX-Request": "true"}))
    remote.refresh_from_db()
    assert remote.next_attempt_at <= timezone.now()  # due now, not after the backoff
    assert [q.name for q in queued][-1] == "mailbox.fetch_body"
    assert 'data-testid="fetch-indicator"' in retried and 'hx-trigger="load delay:500ms"' in retried

    fetch_body(entry.remote_id)
    assert "Eventually here" in _page(client.get(_body_url(entry)))

    # Without htmx, Retry now is a plain form post that comes back to the message.
    response = client.post(f"/mail/entry/{entry.pk}/retry/")
    assert response.status_code == 302 and response["Location"] == _entry_url(entry)


def test_withdrawn_before_opening_is_shown_and_the_body_is_not(alice: User, peer: FakePeer) -> None:
    from federation import payloads

    message = PeerMessageFactory(text="Secret plans")
    entry = _fetched(peer, message)  # fetched (prefetch) but never opened
    accept_withdrawal(
        origin=peer.domain, withdrawal=payloads.Withdrawal(global_id=message.global_id, sender=message.sender)
    )

    html = _page(_client(alice).get(_entry_url(entry)))

    assert "Withdrawn by the sender" in html and "Secret plans" not in html
    assert 'data-testid="message-body"' not in html and "fetch-indicator" not in html


def test_withdrawn_after_opening_keeps_the_copy(alice: User, peer: FakePeer) -> None:
    from federation import payloads

    message = PeerMessageFactory(text="Already read")
    entry = _fetched(peer, message)
    client = _client(alice)
    client.get(_entry_url(entry))
    accept_withdrawal(
        origin=peer.domain, withdrawal=payloads.Withdrawal(global_id=message.global_id, sender=message.sender)
    )

    html = _page(client.get(_entry_url(entry)))

    assert "Already read" in html


def test_expired_and_tampered_are_shown_plainly(alice: User, peer: FakePeer) -> None:
    expired = _receive(peer, PeerMessageFactory(text="Too late"))
    RemoteMessage.objects.filter(pk=expired.remote_id).update(state=FetchState.EXPIRED)
    InboxEntry.objects.filter(pk=expired.pk).update(state=EntryState.EXPIRED)

    message = PeerMessageFactory(text="Original words")
    tampered = _receive(peer, message)
    original = message.content()
    peer.bodies[str(message.global_id)] = original.replace(b"Original words", b"Swapped words!")
    request_fetch(remote_id=tampered.remote_id)
    fetch_body(tampered.remote_id)
    client = _client(alice)

    html = _page(client.get(_entry_url(expired)))
    assert "Expired at the sender's" in html and "Too late" not in html and "fetch-indicator" not in html

    html = _page(client.get(_entry_url(tampered)))
    assert "Tampered — the body did not match its notification; not shown" in html
    assert "Swapped words" not in html and "Original words" not in html and "fetch-indicator" not in html


def test_notice_shows_its_text(alice: User) -> None:
    notice = post_notice(owner=alice, subject="Delivery failed", text="Your message to x@y.test could not be sent.")

    html = _page(_client(alice).get(_entry_url(notice)))

    assert "could not be sent." in html and "x@y.test" in html and "Delivery failed" in html


# --- the sender's view ---------------------------------------------------------------------


def test_sent_message_shows_status_per_domain_and_withdraws(alice: User, bob: User) -> None:
    message = send_message(
        sender=alice,
        to=["carol@peer.test", "bob@alpha.test"],
        cc=["dave@other.test", "nobody@peer.test"],
        subject="Plans",
        text="The plans for next week",
    )
    peer_delivery = Delivery.objects.get(message=message, domain="peer.test")
    Delivery.objects.filter(pk=peer_delivery.pk).update(
        state=DeliveryState.NOTIFIED, notified_at=ago(minutes=5), attempts=1
    )
    Recipient.objects.filter(message=message, address="carol@peer.test").update(status=RecipientStatus.ACCEPTED)
    Recipient.objects.filter(message=message, address="nobody@peer.test").update(
        status=RecipientStatus.REJECTED, reason="unknown mailbox"
    )
    BodyFetch.objects.create(message=message, domain="peer.test", bytes=message.size)
    Delivery.objects.filter(message=message, domain="other.test").update(
        state=DeliveryState.FAILED, attempts=3, last_error="other.test refused the connection"
    )
    client = _client(alice)

    html = _page(client.get(f"/mail/sent/{message.pk}/"))

    assert 'data-testid="delivery-status"' in html and "The plans for next week" in html
    rows = dict(re.findall(r'data-testid="domain-status" data-domain="([^"]+)" data-state="([^"]+)"', html))
    assert rows == {"alpha.test": "notified", "other.test": "failed", "peer.test": "fetched"}
    assert 'nobody@peer.test (Cc): <span class="recipient-rejected">rejected</span> (unknown mailbox)' in html
    assert "failed (other.test refused the connection)" in html
    assert "delivered on this server" in html and "fetched <time" in html
    assert ">Withdraw</button>" in html and f'action="/compose/reply-sent/{message.pk}/"' in html

    confirm = _page(client.get(f"/mail/sent/{message.pk}/withdraw/"))
    assert "Withdraw “Plans”?" in confirm and ">Withdraw</button>" in confirm
    message.refresh_from_db()
    assert message.withdrawn_at is None  # asking is not doing

    response = client.post(f"/mail/sent/{message.pk}/withdraw/")

    assert response.status_code == 302 and response["Location"] == f"/mail/sent/{message.pk}/"
    message.refresh_from_db()
    assert message.withdrawn_at is not None
    assert InboxEntry.objects.get(owner=bob, local=message).state == EntryState.WITHDRAWN
    html = _page(client.get(f"/mail/sent/{message.pk}/"))
    assert "Withdrawn: you withdrew this message" in html and ">Withdraw</button>" not in html
    cells = re.findall(r'data-domain="([^"]+)".*?</tr>', html, flags=re.S)
    assert cells == ["alpha.test", "other.test", "peer.test"]
    status = {d: row for d, row in re.findall(r'data-domain="([^"]+)"(.*?)</tr>', html, flags=re.S)}
    assert "withdrawn <time" in status["alpha.test"]
    assert "withdrawal pending" in status["peer.test"]
    assert "withdrawal pending" in status["other.test"]  # it may have been notified on an earlier try
    assert "Message withdrawn." in html


def test_bob_sees_withdrawn_local_message_as_withdrawn(alice: User, bob: User) -> None:
    message = send_message(sender=alice, to=["bob@alpha.test"], subject="Oops", text="Wrong recipient")
    _client(alice).post(f"/mail/sent/{message.pk}/withdraw/")
    entry = InboxEntry.objects.get(owner=bob, local=message)

    html = _page(_client(bob).get(_entry_url(entry)))

    assert "Withdrawn by the sender" in html and "Wrong recipient" not in html


# --- scoping and bad ids -------------------------------------------------------------------


def test_other_users_ids_and_bad_ids_are_404(alice: User, bob: User, peer: FakePeer) -> None:
    entry = _fetched(peer, PeerMessageFactory())
    message = send_message(sender=alice, to=["carol@peer.test"], subject="Mine", text="Mine only")
    client = _client(bob)

    for method, url in [
        ("get", _entry_url(entry)),
        ("get", _body_url(entry)),
        ("post", f"/mail/entry/{entry.pk}/retry/"),
        ("get", f"/mail/sent/{message.pk}/"),
        ("get", f"/mail/sent/{message.pk}/withdraw/"),
        ("post", f"/mail/sent/{message.pk}/withdraw/"),
        ("get", "/mail/entry/0/"),
        ("get", "/mail/entry/99999999999999999999999/"),
        ("get", "/mail/entry/99999999999999999999999/body/"),
        ("get", "/mail/sent/00000000-0000-0000-0000-000000000000/"),
        ("get", "/mail/sent/not-a-uuid/"),
    ]:
        assert getattr(client, method)(url).status_code == 404, (method, url)
    message.refresh_from_db()
    assert message.withdrawn_at is None
    entry.refresh_from_db()
    assert entry.opened_at is None  # bob's attempt did not open alice's message


def test_signed_out_readers_are_sent_to_login(alice: User, peer: FakePeer) -> None:
    entry = _fetched(peer, PeerMessageFactory())

    response = Client().get(_entry_url(entry))

    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


# --- speed: the query count does not grow with the conversation --------------------------


def _thread_of(alice: User, peer: FakePeer, size: int, bob: User) -> InboxEntry:
    """A conversation of ``size``: from carol (remote), alice's own replies, and bob's (local)."""
    root = PeerMessageFactory(subject="Thread", date=ago(days=1))
    first = _fetched(peer, root)
    chain = [root.message_id]
    for n in range(size - 1):
        if n % 3 == 0:
            sent = send_message(
                sender=alice, to=["carol@peer.test"], subject="Re: Thread", text=f"reply {n}", in_reply_to=chain[-1]
            )
            chain.append(sent.message_id)
        elif n % 3 == 2:
            local = send_message(
                sender=bob, to=["alice@alpha.test"], subject="Re: Thread", text=f"bob {n}", in_reply_to=chain[-1]
            )
            chain.append(local.message_id)
        else:
            message = PeerMessageFactory(
                subject="Re: Thread",
                date=ago(hours=size - n),
                in_reply_to=chain[-1],
                references=list(chain),
            )
            _fetched(peer, message)
            chain.append(message.message_id)
    return first


def _queries_to_open(client: Client, entry: InboxEntry) -> int:
    client.get(_entry_url(entry))  # the first open records the read; count a later one
    with CaptureQueriesContext(connection) as queries:
        html = _page(client.get(_entry_url(entry)))
    assert 'data-testid="message-body"' in html
    return len(queries)


def test_entry_page_query_count_does_not_grow_with_the_thread(alice: User, bob: User, peer: FakePeer) -> None:
    User.objects.filter(pk=bob.pk).update(display_name="Bob Builder")
    small = _thread_of(alice, peer, 4, bob)
    client = _client(alice)
    small_count = _queries_to_open(client, small)

    big = _thread_of(alice, peer, 16, bob)
    html = _page(client.get(_entry_url(big)))
    assert len(_thread_keys(html)) == 16
    assert (
        '<span class="person-name">Bob Builder</span> <span class="person-address">&lt;bob@alpha.test&gt;</span>'
        in html
    )
    assert "bob 14" in html and "reply 12" in html
    big_count = _queries_to_open(client, big)

    assert small_count == big_count
    assert big_count <= 12


def _unread_conversation(peer: FakePeer, bob: User, unread: int) -> InboxEntry:
    """A conversation of ``unread`` messages alice has not opened: from carol and dave (remote,
    their bodies already here) and bob (local). Returns its first message."""
    subject = f"Plans for {unread}"
    root = PeerMessageFactory(subject=subject, date=ago(days=1))
    first = _fetched(peer, root)
    chain = [root.message_id]
    for n in range(unread - 1):
        if n % 4 == 0:
            local = send_message(
                sender=bob, to=["alice@alpha.test"], subject=f"Re: {subject}", text=f"bob {n}", in_reply_to=chain[-1]
            )
            chain.append(local.message_id)
        else:
            message = PeerMessageFactory(
                sender="dave@peer.test" if n % 2 else "carol@peer.test",
                subject=f"Re: {subject}",
                date=ago(hours=unread - n),
                in_reply_to=chain[-1],
                references=list(chain),
            )
            _fetched(peer, message)
            chain.append(message.message_id)
    return first


def _reads_of(model: Any, **key: str) -> int:
    row = model.objects.filter(**key).first()
    return row.reads if row is not None else 0


def test_first_open_of_a_conversation_costs_the_same_whatever_its_unread(
    alice: User, bob: User, peer: FakePeer
) -> None:
    from reputation.models import OriginReputation, Read, SenderReputation

    client = _client(alice)
    _page(client.get("/mail/inbox/"))  # the session and the per-process caches, out of the count
    counts = {}
    for unread in (2, 10):
        first = _unread_conversation(peer, bob, unread)
        thread = InboxEntry.objects.filter(owner=alice, thread_key=first.thread_key)
        assert thread.filter(read=False).count() == unread
        remote = list(thread.filter(remote__isnull=False).select_related("remote"))
        by_sender = {s: sum(e.remote.sender == s for e in remote) for s in ("carol@peer.test", "dave@peer.test")}
        before = {s: _reads_of(SenderReputation, address=s) for s in by_sender}
        origin_before = _reads_of(OriginReputation, domain="peer.test")

        with CaptureQueriesContext(connection) as queries:
            html = _page(client.get(_entry_url(first)))
        counts[unread] = len(queries)

        # Every message of it is read and shown expanded; each remote one is counted once for its
        # sender and origin.
        assert len(_thread_keys(html)) == unread
        assert not thread.filter(read=False).exists()
        assert not thread.filter(remote__isnull=False, opened_at__isnull=True).exists()
        assert Read.objects.filter(reader=alice, message__in=[e.remote for e in remote]).count() == len(remote)
        for sender, n in by_sender.items():
            assert _reads_of(SenderReputation, address=sender) == before[sender] + n
        assert _reads_of(OriginReputation, domain="peer.test") == origin_before + len(remote)

        # Opening it again counts nobody twice.
        _page(client.get(_entry_url(thread.order_by("-pk")[0])))
        for sender, n in by_sender.items():
            assert _reads_of(SenderReputation, address=sender) == before[sender] + n
        assert _reads_of(OriginReputation, domain="peer.test") == origin_before + len(remote)

    assert counts[2] == counts[10], counts
