"""Search: what a user finds, and when. Runs on SQLite (substring fallback) and, in CI, on
PostgreSQL (full-text search with the GIN index); the PostgreSQL-only tests check the index
is really used and websearch syntax."""

from __future__ import annotations

import dataclasses
import io
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from accounts.models import User
from federation import payloads
from mailbox import search
from mailbox.models import EntryState, Folder, InboxEntry, RemoteMessage
from mailbox.services import accept_notification, accept_withdrawal, fetch_body, hide_as_spam, open_entry, post_notice
from tests.conftest import FakePeer
from tests.factories import InboxEntryFactory, PeerMessage, PeerMessageFactory, SentMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="full-text search runs on PostgreSQL (CI: tools/test.sh)"
)

ROW = re.compile(r'<tr data-testid="message-row" data-entry-id="(\d+)" data-state="([a-z]+)"')
NOTE = "Messages whose bodies are still at the sender's are matched on subject and sender only."


def _receive(peer: FakePeer, message: PeerMessage, recipients: list[str] | None = None) -> RemoteMessage:
    peer.bodies[str(message.global_id)] = message.content()
    results = accept_notification(origin=peer.domain, notification=message.notification(recipients))
    assert any(r.status == "accepted" for r in results), results
    return RemoteMessage.objects.get(global_id=message.global_id)


def _open_and_fetch(user: User, remote: RemoteMessage) -> None:
    """The reader opens the message, the fetch task runs, and the reader sees the body."""
    open_entry(entry=InboxEntry.objects.select_related("remote").get(owner=user, remote=remote))
    fetch_body(remote.pk)
    open_entry(entry=InboxEntry.objects.select_related("remote").get(owner=user, remote=remote))


def _client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _search(client: Client, **params: Any) -> tuple[list[int], str]:
    response = client.get("/search/", params)
    assert response.status_code == 200
    html = response.content.decode()
    return [int(entry_id) for entry_id, _state in ROW.findall(html)], html


def _entry(user: User, remote: RemoteMessage) -> InboxEntry:
    return InboxEntry.objects.get(owner=user, remote=remote)


@pytest.fixture
def alice_client(alice: User) -> Client:
    return _client(alice)


def test_page_shows_the_form_and_says_what_unfetched_mail_is_matched_on(alice_client: Client) -> None:
    ids, html = _search(alice_client)
    assert ids == []
    assert '<label for="search-q" class="visually-hidden">Search mail</label>' in html
    assert html.count(">Search mail</label>") == 1  # the top bar's box is this page's query field
    for label in ("In folder", "From", "Has attachment", "After", "Before"):
        assert f">{label}</label>" in html
    assert NOTE in html


def test_signed_out_visitor_is_sent_to_log_in(db: None) -> None:
    response = Client().get("/search/", {"q": "anything"})
    assert response.status_code == 302 and "login" in response["Location"]


def test_unfetched_mail_matches_on_subject_and_sender_and_the_body_once_fetched(
    alice: User, alice_client: Client, peer: FakePeer
) -> None:
    message = PeerMessageFactory(subject="Quarterly figures", text="The walrus report is attached.")
    remote = _receive(peer, message)
    entry = _entry(alice, remote)

    ids, html = _search(alice_client, q="quarterly")
    assert ids == [entry.pk]
    assert "at sender's" in html  # the row says the body is not here yet
    assert _search(alice_client, q="carol")[0] == [entry.pk]  # the sender's local part
    assert _search(alice_client, q="carol@peer.test")[0] == [entry.pk]
    assert _search(alice_client, q="peer.test")[0] == [entry.pk]
    assert _search(alice_client, q="walrus")[0] == []  # the body is still at the sender's

    _open_and_fetch(alice, remote)

    ids, html = _search(alice_client, q="walrus")
    assert ids == [entry.pk]
    assert 'data-state="fetched"' in html and "at sender's" not in html
    assert _search(alice_client, q="WALRUS quarterly")[0] == [entry.pk]  # case-insensitive, every word


def test_every_word_must_appear(alice: User, alice_client: Client, peer: FakePeer) -> None:
    both = _entry(alice, _receive(peer, PeerMessageFactory(subject="Budget meeting")))
    _receive(peer, PeerMessageFactory(subject="Budget only"))

    assert _search(alice_client, q="budget meeting")[0] == [both.pk]
    assert len(_search(alice_client, q="budget")[0]) == 2


def test_excluded_word_and_quoted_phrase(alice: User, alice_client: Client, peer: FakePeer) -> None:
    plan = _entry(alice, _receive(peer, PeerMessageFactory(subject="the launch plan")))
    other = _entry(alice, _receive(peer, PeerMessageFactory(subject="plan the launch")))

    assert _search(alice_client, q='"launch plan"')[0] == [plan.pk]
    assert _search(alice_client, q="launch -plan")[0] == []
    assert sorted(_search(alice_client, q="launch")[0]) == sorted([plan.pk, other.pk])


def test_html_only_body_is_matched_on_its_text_not_its_markup_or_scripts(
    alice: User, alice_client: Client, peer: FakePeer
) -> None:
    message = PeerMessageFactory(
        text="", html='<p class="zzclass">Hello <b>narwhal</b> &amp; friends</p><script>zzscript()</script>'
    )
    remote = _receive(peer, message)
    _open_and_fetch(alice, remote)

    assert _search(alice_client, q="narwhal")[0] == [_entry(alice, remote).pk]
    assert _search(alice_client, q="zzscript")[0] == []
    assert _search(alice_client, q="zzclass")[0] == []


def _receive_with_attachment(peer: FakePeer, message: PeerMessage, name: str) -> RemoteMessage:
    manifest = (payloads.ManifestEntry(name=name, type="application/pdf", size=10, digest="sha-256:" + "0" * 64),)
    content = payloads.canonical_body(
        global_id=message.global_id,
        message_id=message.message_id,
        sender=message.sender,
        to=message.to,
        cc=message.cc,
        subject=message.subject,
        date=message.date,
        text=message.text,
        html=message.html,
        in_reply_to="",
        references=[],
        attachments=[entry.to_json() for entry in manifest],
    )
    notification = dataclasses.replace(
        message.notification(), size=len(content), digest=payloads.digest(content), attachments=manifest
    )
    peer.bodies[str(message.global_id)] = content
    accept_notification(origin=peer.domain, notification=notification)
    return RemoteMessage.objects.get(global_id=message.global_id)


def test_attachment_names_are_searchable_once_fetched(alice: User, alice_client: Client, peer: FakePeer) -> None:
    remote = _receive_with_attachment(peer, PeerMessageFactory(subject="Numbers"), "budget-2026.pdf")
    entry = _entry(alice, remote)
    assert _search(alice_client, q="budget")[0] == []

    _open_and_fetch(alice, remote)

    assert RemoteMessage.objects.get(pk=remote.pk).state == "fetched"
    assert _search(alice_client, q="budget")[0] == [entry.pk]
    assert _search(alice_client, q="budget-2026.pdf")[0] == [entry.pk]


def test_the_document_is_capped(alice: User, peer: FakePeer) -> None:
    remote = _receive(peer, PeerMessageFactory(text="word " * 100_000))
    _open_and_fetch(alice, remote)

    document = InboxEntry.objects.get(remote=remote).search_document
    assert len(document) == search.MAX_DOCUMENT_CHARS


def test_local_mail_is_searchable_by_body_at_once(alice: User, bob: User) -> None:
    SentMessageFactory(sender=alice, to=["bob@alpha.test"], subject="Lunch", text="Meet at the okapi cafe")
    entry = InboxEntry.objects.get(owner=bob)

    assert _search(_client(bob), q="okapi")[0] == [entry.pk]


def test_withdrawn_message_is_no_longer_found_by_its_body(alice: User, bob: User, peer: FakePeer) -> None:
    message = PeerMessageFactory(
        subject="Oops", text="The secret quokka plan", to=["alice@alpha.test", "bob@alpha.test"]
    )
    remote = _receive(peer, message)
    _open_and_fetch(alice, remote)  # alice read it; bob did not

    accept_withdrawal(
        origin=peer.domain,
        withdrawal=payloads.Withdrawal(global_id=message.global_id, sender=message.sender),
    )

    assert _search(_client(alice), q="quokka")[0] == [_entry(alice, remote).pk]
    assert _search(_client(bob), q="quokka")[0] == []
    assert _search(_client(bob), q="oops")[0] == [_entry(bob, remote).pk]


def test_other_users_mail_never_appears(alice: User, bob: User, alice_client: Client, peer: FakePeer) -> None:
    shared = _receive(peer, PeerMessageFactory(subject="Shared zebra", to=["alice@alpha.test", "bob@alpha.test"]))
    bobs = _receive(peer, PeerMessageFactory(subject="Private zebra", to=["bob@alpha.test"]))
    _open_and_fetch(bob, bobs)
    SentMessageFactory(sender=alice, to=["bob@alpha.test"], subject="zebra from alice")

    ids, _ = _search(alice_client, q="zebra")
    assert ids == [_entry(alice, shared).pk]
    assert _search(alice_client, folder="inbox")[0] == [_entry(alice, shared).pk]
    assert _search(alice_client, sender="alice")[0] == []  # her own sent mail is in bob's inbox, not hers


def test_folder_filter(alice: User, alice_client: Client, peer: FakePeer) -> None:
    inbox = _entry(alice, _receive(peer, PeerMessageFactory(subject="report one")))
    archived = _entry(alice, _receive(peer, PeerMessageFactory(subject="report two")))
    InboxEntry.objects.filter(pk=archived.pk).update(folder=Folder.ARCHIVE)

    assert _search(alice_client, q="report", folder="archive")[0] == [archived.pk]
    assert _search(alice_client, q="report", folder="inbox")[0] == [inbox.pk]
    assert _search(alice_client, q="report", folder="trash")[0] == []
    assert sorted(_search(alice_client, q="report")[0]) == sorted([inbox.pk, archived.pk])


def test_sender_filter_and_from_syntax(alice: User, alice_client: Client, peer: FakePeer) -> None:
    carol = _entry(alice, _receive(peer, PeerMessageFactory(subject="status", sender="carol@peer.test")))
    dave = _entry(alice, _receive(peer, PeerMessageFactory(subject="status", sender="dave@peer.test")))

    assert _search(alice_client, q="status", sender="Dave@")[0] == [dave.pk]
    assert _search(alice_client, q="status from:carol@peer.test")[0] == [carol.pk]
    assert _search(alice_client, q="from:dave")[0] == [dave.pk]
    assert sorted(_search(alice_client, sender="@peer.test")[0]) == sorted([carol.pk, dave.pk])
    assert _search(alice_client, sender="@other.test")[0] == []
    assert sorted(_search(alice_client, q="status")[0]) == sorted([carol.pk, dave.pk])


def test_has_attachment_filter(alice: User, alice_client: Client, peer: FakePeer) -> None:
    plain = _entry(alice, _receive(peer, PeerMessageFactory(subject="photos")))
    with_file = _entry(alice, _receive_with_attachment(peer, PeerMessageFactory(subject="photos"), "beach.jpg"))

    assert _search(alice_client, q="photos", has_attachment="1")[0] == [with_file.pk]
    assert _search(alice_client, has_attachment="1")[0] == [with_file.pk]
    assert sorted(_search(alice_client, q="photos")[0]) == sorted([plain.pk, with_file.pk])


def test_date_range_is_inclusive_and_results_are_newest_first(
    alice: User, alice_client: Client, peer: FakePeer
) -> None:
    days = {
        "march": datetime(2026, 3, 1, 0, 0, tzinfo=UTC),
        "april_start": datetime(2026, 4, 1, 0, 0, tzinfo=UTC),
        "april_end": datetime(2026, 4, 30, 23, 59, tzinfo=UTC),
        "may": datetime(2026, 5, 1, 0, 0, tzinfo=UTC),
    }
    entries = {}
    for name, moment in days.items():
        entry = _entry(alice, _receive(peer, PeerMessageFactory(subject="invoice")))
        InboxEntry.objects.filter(pk=entry.pk).update(received_at=moment)
        entries[name] = entry.pk

    ids, _ = _search(alice_client, q="invoice", after="2026-04-01", before="2026-04-30")
    assert ids == [entries["april_end"], entries["april_start"]]
    assert _search(alice_client, after="2026-05-01")[0] == [entries["may"]]
    assert _search(alice_client, before="2026-03-01")[0] == [entries["march"]]
    assert _search(alice_client, q="invoice")[0] == [entries[n] for n in ("may", "april_end", "april_start", "march")]
    assert len(_search(alice_client, q="invoice", after="0001-01-01", before="9999-12-31")[0]) == 4  # the extremes


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"after": "2026-13-01"}, "Enter a date as YYYY-MM-DD, for example 2026-03-31."),
        ({"before": "yesterday"}, "Enter a date as YYYY-MM-DD, for example 2026-03-31."),
        ({"after": "2026-05-02", "before": "2026-05-01"}, "is later than"),
        ({"folder": "secret"}, "Choose a folder from the list."),
        ({"q": "x" * 301}, "The search is too long: at most 300 characters."),
        ({"q": " ".join(f"w{i}" for i in range(13))}, "The search has too many words: at most 12."),
        ({"q": "hello", "cursor": "not-a-cursor"}, "That page link is not valid"),
        ({"q": "hello", "cursor": "9" * 40 + ".1"}, "That page link is not valid"),
        ({"q": "hello", "cursor": "1." + uuid.uuid4().hex}, "That page link is not valid"),  # a Sent page's link
        ({"q": "hello", "folder": "sent", "cursor": "1.5"}, "That page link is not valid"),
        ({"sender": "a" * 400}, "The sender is too long"),
    ],
)
def test_bad_input_gets_a_clear_message(
    alice: User, alice_client: Client, peer: FakePeer, params: dict[str, str], message: str
) -> None:
    _receive(peer, PeerMessageFactory(subject="hello"))

    response = alice_client.get("/search/", params)

    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-testid="search-error"' in html
    assert message in html.replace("&quot;", '"').replace("&#x27;", "'")


def test_pages_of_50_by_keyset_cover_every_match_once(alice: User, alice_client: Client) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    created = InboxEntryFactory.create_batch(120, owner=alice, search_document="harvest")
    # Some share a timestamp: the id breaks the tie, so nothing is skipped or repeated.
    for n, entry in enumerate(created):
        InboxEntry.objects.filter(pk=entry.pk).update(received_at=base + timedelta(minutes=n // 3))

    seen: list[int] = []
    params: dict[str, str] = {"q": "harvest"}
    for expected in (50, 50, 20):
        ids, html = _search(alice_client, **params)
        assert len(ids) == expected
        seen.extend(ids)
        next_link = re.search(r'href="\?([^"]+)" rel="next"', html)
        if expected < 50:
            assert next_link is None
        else:
            assert next_link is not None
            params = dict(pair.split("=", 1) for pair in next_link.group(1).replace("&amp;", "&").split("&"))
    order = {e.pk: (e.received_at, e.pk) for e in InboxEntry.objects.filter(owner=alice)}
    assert len(set(seen)) == 120
    assert seen == sorted(seen, key=lambda pk: order[pk], reverse=True)


def test_results_page_runs_a_fixed_number_of_queries(alice: User, alice_client: Client) -> None:
    def queries_for(q: str) -> tuple[int, int]:
        with CaptureQueriesContext(connection) as ctx:
            ids, _ = _search(alice_client, q=q, has_attachment="1", folder="inbox")
        return len(ids), len(ctx.captured_queries)

    rows, empty_page = queries_for("nothing-matches-this")  # the page's shell: session, user, sidebar
    assert rows == 0
    InboxEntryFactory.create_batch(3, owner=alice, search_document="ledger", has_attachments=True)
    rows, few = queries_for("ledger")
    assert rows == 3
    InboxEntryFactory.create_batch(80, owner=alice, search_document="ledger", has_attachments=True, starred=True)
    rows, many = queries_for("ledger")
    assert rows == 50

    assert few == many
    # The results, then their labels and their senders' display names: one query each.
    assert many == empty_page + 2


# --- PostgreSQL only: the full-text path and its index -----------------------------------


@postgres_only
def test_postgres_search_uses_the_gin_index(alice: User) -> None:
    """With a rare word in a big mailbox the planner must choose the GIN index: the query's
    expression is the indexed one. (docs/benchmarks.md has the plan at 100,000 rows.)"""
    filler = [
        InboxEntry(owner=alice, sender="carol@peer.test", state=EntryState.NOTICE, search_document=f"note {n}")
        for n in range(3000)
    ]
    InboxEntry.objects.bulk_create(filler)
    InboxEntryFactory(owner=alice, search_document="apple banana")
    entries = search.search_entries(user=alice, query=search.parse_query("banana"))
    sql, params = entries[:51].query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'mailbox_entry_search_fts'")
        (indexdef,) = cursor.fetchone()
        assert "gin (to_tsvector('simple'::regconfig, search_document))" in indexdef
        cursor.execute("ANALYZE mailbox_inboxentry")
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Bitmap Index Scan on mailbox_entry_search_fts" in plan, plan
    assert [e.search_document for e in InboxEntry.objects.filter(pk__in=entries.values("pk"))] == ["apple banana"]


@postgres_only
def test_postgres_websearch_syntax(alice: User, alice_client: Client, peer: FakePeer) -> None:
    apples = _entry(alice, _receive(peer, PeerMessageFactory(subject="apples and pears")))
    plums = _entry(alice, _receive(peer, PeerMessageFactory(subject="plums")))

    assert sorted(_search(alice_client, q="apples or plums")[0]) == sorted([apples.pk, plums.pk])
    assert _search(alice_client, q="pears -plums")[0] == [apples.pk]


def test_row_carries_the_entry_state(alice: User, alice_client: Client) -> None:
    withdrawn = InboxEntryFactory(owner=alice, search_document="tapir", state=EntryState.WITHDRAWN)
    _ids, html = _search(alice_client, q="tapir")
    assert f'data-entry-id="{withdrawn.pk}" data-state="withdrawn"' in html


SENT_ROW = re.compile(r'<tr data-testid="sent-row" data-message-id="([0-9a-f-]+)"')


def test_sent_mail_is_searched_when_sent_is_chosen(alice: User, bob: User, alice_client: Client) -> None:
    mine = SentMessageFactory(sender=alice, to=["carol@peer.test"], subject="Kiwi plan", text="bring the mango")
    SentMessageFactory(sender=bob, to=["carol@peer.test"], subject="Kiwi plan", text="bring the mango")

    def sent_ids(**params: str) -> list[str]:
        response = alice_client.get("/search/", {"folder": "sent", **params})
        assert response.status_code == 200
        return SENT_ROW.findall(response.content.decode())

    assert sent_ids(q="mango") == [str(mine.pk)]
    assert sent_ids(q="carol@peer") == [str(mine.pk)]  # a recipient
    assert sent_ids(q="kiwi -mango") == []
    assert sent_ids(q="mango", has_attachment="1") == []
    assert sent_ids(q="mango", after="2000-01-01", before="2000-12-31") == []
    assert _search(alice_client, q="mango")[0] == []  # "Any folder" is the mail she received


def test_cursor_round_trip() -> None:
    moment = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    for key in (42, uuid.uuid4()):
        cursor = search.Cursor(moment=moment, key=key)
        assert search.Cursor.parse(str(cursor)) == cursor


def test_case_does_not_matter_beyond_ascii(alice: User, alice_client: Client, peer: FakePeer) -> None:
    entry = _entry(alice, _receive(peer, PeerMessageFactory(subject="Grüße aus MÜNCHEN")))

    assert _search(alice_client, q="münchen grüße")[0] == [entry.pk]
    assert _search(alice_client, q="GRÜSSE")[0] == []  # no folding of ß to ss, on either database


def test_notices_are_searchable(alice: User, alice_client: Client) -> None:
    notice = post_notice(owner=alice, subject="Delivery failed", text="nobody at wombat.example answered")

    assert _search(alice_client, q="wombat")[0] == [notice.pk]


def test_reindexsearch_rebuilds_every_document(alice: User, bob: User, peer: FakePeer) -> None:
    fetched = _receive(peer, PeerMessageFactory(subject="Rebuilt", text="the axolotl chapter"))
    _open_and_fetch(alice, fetched)
    unfetched = _receive(peer, PeerMessageFactory(subject="Waiting", text="the secret pangolin"))
    SentMessageFactory(sender=bob, to=["alice@alpha.test"], subject="Local", html="<p>a <b>capybara</b></p>", text="")
    post_notice(owner=alice, subject="Notice", text="about the dugong")
    before = dict(InboxEntry.objects.values_list("pk", "search_document"))
    InboxEntry.objects.update(search_document="")  # as if written by an older version

    out = io.StringIO()
    call_command("reindexsearch", "--batch-size", "2", stdout=out)

    assert "4 entries" in out.getvalue()
    assert dict(InboxEntry.objects.values_list("pk", "search_document")) == before
    client = _client(alice)
    for word in ("axolotl", "capybara", "dugong", "waiting"):
        assert len(_search(client, q=word)[0]) == 1, word
    assert _search(client, q="pangolin")[0] == []
    assert InboxEntry.objects.filter(remote=unfetched).exists()


def test_words_inside_addresses_file_names_and_links_are_found(
    alice: User, alice_client: Client, peer: FakePeer
) -> None:
    text = "Slides at https://files.example.com/q3-figures.pdf, ask ops@example.com"
    remote = _receive(peer, PeerMessageFactory(text=text))
    _open_and_fetch(alice, remote)
    entry = _entry(alice, remote)

    for query in ("q3", "figures", "files.example.com", "ops", "ops@example.com", '"q3-figures.pdf"'):
        assert _search(alice_client, q=query)[0] == [entry.pk], query
    assert _search(alice_client, q="q3-figures.docx")[0] == []


@pytest.mark.parametrize(
    "q",
    ['"', "-", "!", "&|!", "':*", "a:*", "from:", 'from:"x"', "\\", "(((", "or", "-or -and", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\x00", "日本"],
)
@pytest.mark.parametrize("sender", ["", "a:*|b", "&", "\\"])
def test_odd_input_never_breaks_the_page(
    alice: User, alice_client: Client, peer: FakePeer, q: str, sender: str
) -> None:
    _receive(peer, PeerMessageFactory(subject="anything"))

    response = alice_client.get("/search/", {"q": q, "sender": sender})

    assert response.status_code == 200


def test_recipient_notified_after_the_fetch_finds_the_body(alice: User, bob: User, peer: FakePeer) -> None:
    message = PeerMessageFactory(text="the late numbat", to=["alice@alpha.test", "bob@alpha.test"])
    remote = _receive(peer, message, recipients=["alice@alpha.test"])
    _open_and_fetch(alice, remote)

    _receive(peer, message, recipients=["bob@alpha.test"])  # the same message, notified for bob later

    assert _search(_client(bob), q="numbat")[0] == [_entry(bob, remote).pk]


def test_a_body_with_many_copies_is_readable_at_once_and_indexed_for_them_after_the_fetch(
    monkeypatch: pytest.MonkeyPatch,
    alice: User,
    bob: User,
    peer: FakePeer,
    queued: list[Any],
    django_capture_on_commit_callbacks: Any,
) -> None:
    # A run to thousands here: the fetch must not make its first readers wait for every copy's
    # full-text index entry. Two copies stand for "more than INDEX_AT_ONCE".
    monkeypatch.setattr(search, "INDEX_AT_ONCE", 1)
    remote = _receive(
        peer,
        PeerMessageFactory(subject="Field notes", text="The numbat census", to=["alice@alpha.test", "bob@alpha.test"]),
    )
    with django_capture_on_commit_callbacks(execute=True):
        _open_and_fetch(alice, remote)

    # Both readers have the body (the message is fetched for everyone); the index follows in a task.
    assert set(InboxEntry.objects.filter(remote=remote).values_list("state", flat=True)) == {EntryState.FETCHED}
    indexing = [q for q in queued if q.name == "mailbox.index_fetched_copies"]
    assert [(q.args, q.countdown) for q in indexing] == [((remote.pk,), search.INDEX_LATER_SECONDS)]
    assert _search(_client(bob), q="numbat")[0] == []

    assert search.index_copies(remote_id=remote.pk, batch_size=1) == 2
    assert _search(_client(bob), q="numbat")[0] == [_entry(bob, remote).pk]
    assert _search(_client(alice), q="numbat")[0] == [_entry(alice, remote).pk]
    assert search.index_copies(remote_id=remote.pk) == 0, "done once: a repeat finds nothing to do"


def test_the_deferred_index_leaves_out_a_copy_a_spam_verdict_hid(
    monkeypatch: pytest.MonkeyPatch, alice: User, bob: User, peer: FakePeer, queued: list[Any]
) -> None:
    monkeypatch.setattr(search, "INDEX_AT_ONCE", 1)
    remote = _receive(
        peer, PeerMessageFactory(subject="Prize", text="Claim a wombat", to=["alice@alpha.test", "bob@alpha.test"])
    )
    _open_and_fetch(alice, remote)
    hide_as_spam(remote_id=remote.pk, reason="3 people at alpha.test reported this")  # bob never opened it

    assert search.index_copies(remote_id=remote.pk) == 1
    assert _search(_client(bob), q="wombat")[0] == [], "a hidden copy is matched on its subject and sender only"
    assert _search(_client(alice), q="wombat")[0] == [_entry(alice, remote).pk]
