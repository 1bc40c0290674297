"""Spam reports and the shared verdict: reports add up across a message's local recipients, and a
verdict hides every unopened copy (no fetch for it), files new notifications to Spam, spares known
correspondents, and is overturned by a domain admin."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import Domain, User
from accounts.services import create_mailbox
from federation import payloads
from mailbox.models import EntryState, Folder, InboxEntry, ReceivedAttachment, RemoteMessage
from mailbox.services import accept_notification, accept_withdrawal, fetch_body, open_entry, post_notice
from reputation.models import SpamReport, SpamVerdict
from tests.conftest import FakePeer, Queued, api_as, body_path
from tests.factories import (
    InboxEntryFactory,
    MailboxFactory,
    PeerMessage,
    PeerMessageFactory,
    RemoteMessageFactory,
    SentMessageFactory,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]


@pytest.fixture
def people(local_domain: Domain) -> list[User]:
    readers = [MailboxFactory(domain=local_domain, local_part=f"reader{n}") for n in range(8)]
    # Established accounts, whose reports count whole (reputation.trust).
    User.objects.filter(pk__in=[u.pk for u in readers]).update(date_joined=timezone.now() - timedelta(days=30))
    return readers


def digest_of(content: bytes) -> str:
    return "sha-256:" + hashlib.sha256(content).hexdigest()


def _receive(peer: FakePeer, message: PeerMessage, recipients: list[User]) -> RemoteMessage:
    peer.bodies[str(message.global_id)] = message.content()
    accept_notification(origin=peer.domain, notification=message.notification([u.email for u in recipients]))
    return RemoteMessage.objects.get(global_id=message.global_id)


def _entry(user: User, remote: RemoteMessage) -> InboxEntry:
    return InboxEntry.objects.select_related("remote").get(owner=user, remote=remote)


def _report(user: User, remote: RemoteMessage, what: str = "spam") -> Any:
    return api_as(user).post(f"/api/v1/inbox/{_entry(user, remote).pk}/{what}/")


def _open_fetched(users: list[User], remote: RemoteMessage) -> None:
    """These users opened the message (its body fetched on the first open)."""
    open_entry(entry=_entry(users[0], remote))
    fetch_body(remote.pk)
    for user in users:
        open_entry(entry=_entry(user, remote))


def _folders(remote: RemoteMessage) -> dict[str, str]:
    return {e.owner.email: e.folder for e in InboxEntry.objects.filter(remote=remote).select_related("owner")}


def test_a_report_moves_the_readers_copy_to_spam_and_a_repeat_says_so(people: list[User], peer: FakePeer) -> None:
    remote = _receive(peer, PeerMessageFactory(), people[:3])

    first = _report(people[0], remote)
    assert first.status_code == 200, first.content
    assert first.json()["folder"] == "spam" and first.json()["repeated"] is False
    again = _report(people[0], remote)
    assert again.status_code == 200 and again.json()["repeated"] is True
    assert "already" in again.json()["detail"]
    assert SpamReport.objects.filter(message=remote).count() == 1
    assert _folders(remote) == {people[0].email: "spam", people[1].email: "inbox", people[2].email: "inbox"}

    back = _report(people[0], remote, "not-spam")
    assert back.status_code == 200 and back.json()["folder"] == "inbox" and back.json()["spam"] is False
    assert _entry(people[0], remote).folder == Folder.INBOX


def test_two_reports_reaching_the_ratio_hide_every_unopened_copy(people: list[User], peer: FakePeer) -> None:
    remote = _receive(peer, PeerMessageFactory(), people)
    _open_fetched(people[:1], remote)  # one reader has read it: their copy is theirs
    _report(people[1], remote)
    second = _report(people[2], remote)
    # 2 reports of the 3 local users who opened or reported it: past 30%, with the 2 reports it needs.
    assert second.json()["judged_spam"] is True
    remote.refresh_from_db()
    assert remote.spam_verdict == "2 people at alpha.test reported this"
    verdict = SpamVerdict.objects.get(message=remote)
    assert verdict.reports == 2 and verdict.hidden == 5

    folders = _folders(remote)
    assert folders.pop(people[0].email) == "inbox"  # opened before the verdict
    assert set(folders.values()) == {"spam"}
    hidden = InboxEntry.objects.filter(remote=remote, hidden_from=Folder.INBOX)
    assert hidden.count() == 5 and not hidden.filter(read=False).exists()  # no longer unread


def test_reports_count_up_to_the_threshold_when_many_have_read_it(
    people: list[User], peer: FakePeer, settings: Any
) -> None:
    remote = _receive(peer, PeerMessageFactory(), people)
    _open_fetched(people[:7], remote)  # 7 readers: 2 reports are under 30%
    assert _report(people[0], remote).json()["judged_spam"] is False
    assert _report(people[1], remote).json()["judged_spam"] is False
    assert _entry(people[7], remote).folder == Folder.INBOX
    assert _report(people[2], remote).json()["judged_spam"] is True  # PUSHMAIL_SPAM_REPORTS = 3
    assert _entry(people[7], remote).folder == Folder.SPAM
    assert _entry(people[3], remote).folder == Folder.INBOX  # opened: left alone


def test_thresholds_follow_the_settings(people: list[User], peer: FakePeer, settings: Any) -> None:
    settings.PUSHMAIL_SPAM_REPORTS = 5
    settings.PUSHMAIL_SPAM_RATIO = 0.9
    remote = _receive(peer, PeerMessageFactory(), people)
    _open_fetched(people[:7], remote)
    for reporter in people[:4]:
        assert _report(reporter, remote).json()["judged_spam"] is False  # under 5 reports and 90% of 7 readers
    assert not SpamVerdict.objects.exists()
    assert _report(people[4], remote).json()["judged_spam"] is True


def test_one_report_is_never_a_verdict(people: list[User], peer: FakePeer) -> None:
    remote = _receive(peer, PeerMessageFactory(), people[:2])
    assert _report(people[0], remote).json()["judged_spam"] is False  # 1 of 1 is 100%, but under 2 reports
    assert _entry(people[1], remote).folder == Folder.INBOX


def test_not_spam_replaces_the_readers_report(people: list[User], peer: FakePeer) -> None:
    remote = _receive(peer, PeerMessageFactory(), people)
    _open_fetched(people[:7], remote)
    _report(people[0], remote)
    _report(people[0], remote, "not-spam")
    _report(people[1], remote)
    _report(people[2], remote)
    assert not SpamVerdict.objects.exists()  # 2 spam reports of 7 readers


def test_hidden_copies_are_never_fetched_and_new_notifications_go_to_spam(
    people: list[User], peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    message = PeerMessageFactory()
    remote = _receive(peer, message, people[:4])
    _report(people[0], remote)
    _report(people[1], remote)
    _report(people[2], remote)
    with django_capture_on_commit_callbacks(execute=True):
        opened = open_entry(entry=_entry(people[3], remote))
    assert opened.state == EntryState.NOTIFIED and opened.opened_at is None
    assert queued == [] and peer.calls_to("GET", body_path(message.global_id)) == []

    later = _receive(peer, message, people[4:6])  # the run's next notification
    assert later.pk == remote.pk
    for user in people[4:6]:
        entry = _entry(user, remote)
        assert entry.folder == Folder.SPAM and entry.read  # Spam, and not counted as unread


def test_a_copy_hidden_after_the_first_readers_fetched_it_shows_no_body_until_not_spam(
    people: list[User], peer: FakePeer
) -> None:
    # A reader who listed their Inbox before the verdict opens the message after it: the body is
    # here (the first readers fetched it), yet the run stops at the readers it had reached.
    message = PeerMessageFactory(text="Claim your prize at once")
    remote = _receive(peer, message, people)
    _open_fetched(people[:1], remote)
    _report(people[1], remote)
    assert _report(people[2], remote).json()["judged_spam"] is True
    late = _entry(people[5], remote)
    assert late.folder == Folder.SPAM and remote.entries.get(pk=late.pk).state == EntryState.FETCHED

    shown = api_as(people[5]).get(f"/api/v1/inbox/{late.pk}/")
    assert shown.status_code == 200 and shown.json()["body"] is None
    page = _client_of(people[5]).get(reverse("webmail:entry", args=[late.pk])).content.decode()
    assert "Claim your prize" not in page and "Judged spam here" in page
    late = _entry(people[5], remote)
    assert late.opened_at is None  # not counted as a reader who saw it

    # Their own "Not spam" brings it back, body and all.
    assert _report(people[5], remote, "not-spam").json()["folder"] == "inbox"
    shown = api_as(people[5]).get(f"/api/v1/inbox/{late.pk}/")
    assert "Claim your prize" in shown.json()["body"]["text"]
    # The first reader keeps what they read.
    assert (
        "Claim your prize"
        in api_as(people[0]).get(f"/api/v1/inbox/{_entry(people[0], remote).pk}/").json()["body"]["text"]
    )


def test_a_reader_who_listed_it_before_the_verdict_and_opens_it_after_fetches_nothing(
    people: list[User], peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    # A spam run of personalized messages: each body is fetched only for a reader who gets to see it.
    message = PeerMessageFactory(text="Claim your prize at once")
    remote = _receive(peer, message, people[:4])
    listed = _entry(people[3], remote)  # in their Inbox when they listed it
    for user in people[:3]:
        _report(user, remote)
    assert _entry(people[3], remote).folder == Folder.SPAM

    with django_capture_on_commit_callbacks(execute=True):
        opened = open_entry(entry=listed)
    remote.refresh_from_db()
    assert remote.state == EntryState.NOTIFIED and opened.state == EntryState.NOTIFIED
    assert queued == [] and peer.calls_to("GET", body_path(message.global_id)) == []
    # Nothing is on its way for them: answered at once, no body, not "ask again" (202).
    shown = api_as(people[3]).get(f"/api/v1/inbox/{listed.pk}/")
    assert shown.status_code == 200 and shown.json()["body"] is None
    assert queued == [] and peer.calls_to("GET", body_path(message.global_id)) == []


def test_a_fetch_asked_for_before_the_verdict_is_called_off_when_it_hides_every_copy(
    people: list[User], peer: FakePeer, django_capture_on_commit_callbacks: Any
) -> None:
    message = PeerMessageFactory(text="Claim your prize at once")
    remote = _receive(peer, message, people[:4])
    asked = _entry(people[3], remote)
    assert open_entry(entry=asked).state == EntryState.FETCHING  # its fetch queued, not run yet
    for user in people[:3]:
        _report(user, remote)  # the verdict hides the asker's copy: nobody here may read it now

    fetch_body(remote.pk)
    assert peer.calls_to("GET", body_path(message.global_id)) == []
    remote.refresh_from_db()
    assert remote.state == EntryState.NOTIFIED and remote.next_attempt_at is None and remote.content is None
    assert _entry(people[3], remote).state == EntryState.NOTIFIED

    # Their own "Not spam" gives it back: opening it fetches the body then.
    _report(people[3], remote, "not-spam")
    with django_capture_on_commit_callbacks(execute=True):
        open_entry(entry=_entry(people[3], remote))
    fetch_body(remote.pk)
    shown = api_as(people[3]).get(f"/api/v1/inbox/{asked.pk}/")
    assert shown.status_code == 200 and "Claim your prize" in shown.json()["body"]["text"]
    assert len(peer.calls_to("GET", body_path(message.global_id))) == 1


def _client_of(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_an_on_notify_fetch_is_not_made_for_a_message_judged_spam(
    people: list[User], peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    message = PeerMessageFactory()
    remote = _receive(peer, message, people[:3])
    for user in people[:3]:
        _report(user, remote)
    eager = people[5]
    User.objects.filter(pk=eager.pk).update(fetch_policy="on_notify")
    with django_capture_on_commit_callbacks(execute=True):
        _receive(peer, message, [eager])
    assert queued == [] and peer.calls_to("GET", body_path(message.global_id)) == []
    assert _entry(eager, remote).folder == Folder.SPAM


def test_a_known_correspondent_keeps_the_message_with_a_warning(
    people: list[User], peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    friend = people[6]
    SentMessageFactory(sender=friend, to=["carol@peer.test"])
    message = PeerMessageFactory(sender="carol@peer.test")
    remote = _receive(peer, message, people)
    for user in people[:3]:
        _report(user, remote)
    assert _entry(friend, remote).folder == Folder.INBOX
    assert _entry(people[7], remote).folder == Folder.SPAM

    newcomer_friend = MailboxFactory(domain=friend.domain, local_part="pal")
    SentMessageFactory(sender=newcomer_friend, to=["carol@peer.test"])
    _receive(peer, message, [newcomer_friend])
    assert _entry(newcomer_friend, remote).folder == Folder.INBOX

    with django_capture_on_commit_callbacks(execute=True):
        open_entry(entry=_entry(friend, remote))
    assert [q.name for q in queued] == ["mailbox.fetch_body"]  # a correspondent may read it
    web = Client()
    web.force_login(friend)
    page = web.get(reverse("webmail:entry", args=[_entry(friend, remote).pk])).content.decode()
    assert 'data-testid="spam-warning"' in page and "2 people at alpha.test reported this" in page


def test_the_spam_folder_says_why(people: list[User], peer: FakePeer) -> None:
    remote = _receive(peer, PeerMessageFactory(), people[:4])
    for user in people[:3]:
        _report(user, remote)
    web = Client()
    web.force_login(people[3])
    page = web.get(reverse("webmail:folder", args=["spam"])).content.decode()
    assert 'data-testid="spam-reason">2 people at alpha.test reported this<' in page
    inbox = web.get(reverse("webmail:folder", args=["inbox"])).content.decode()
    assert "reported this" not in inbox


def test_an_admin_overturns_a_verdict_and_copies_go_back(people: list[User], peer: FakePeer) -> None:
    remote = _receive(peer, PeerMessageFactory(), people)
    archived = people[7]
    InboxEntry.objects.filter(owner=archived, remote=remote).update(folder=Folder.ARCHIVE)
    trashed = people[6]
    InboxEntry.objects.filter(owner=trashed, remote=remote).update(folder=Folder.TRASH)
    for user in people[:3]:
        _report(user, remote)
    assert _entry(archived, remote).folder == Folder.SPAM
    assert _entry(trashed, remote).folder == Folder.TRASH  # the owner's own choice stays
    verdict = SpamVerdict.objects.get(message=remote)

    admin = create_mailbox(address=f"admin@{people[0].domain.name}", password="admin pass phrase 9", is_staff=True)
    client = Client()
    client.force_login(admin)  # a domain admin, not a superuser
    changelist = reverse("admin:reputation_spamverdict_changelist")
    assert "2 people at alpha.test reported this" in client.get(changelist).content.decode()
    response = client.post(changelist, {"action": "overturn", "_selected_action": [verdict.pk]})
    assert response.status_code == 302

    verdict.refresh_from_db()
    remote.refresh_from_db()
    assert verdict.overturned_at is not None and verdict.overturned_by == admin and remote.spam_verdict == ""
    assert _entry(archived, remote).folder == Folder.ARCHIVE
    assert _entry(people[4], remote).folder == Folder.INBOX and not _entry(people[4], remote).read
    assert _entry(people[0], remote).folder == Folder.SPAM  # reporters' own choice stays
    assert not InboxEntry.objects.filter(remote=remote).exclude(hidden_from="").exists()


def test_someone_elses_entry_is_404_and_changes_nothing(people: list[User], peer: FakePeer) -> None:
    remote = _receive(peer, PeerMessageFactory(), people[:2])
    theirs = _entry(people[1], remote)
    response = api_as(people[0]).post(f"/api/v1/inbox/{theirs.pk}/spam/")
    assert response.status_code == 404 and response.json()["error"] == "not_found"
    assert api_as(people[0]).post("/api/v1/inbox/999999/not-spam/").status_code == 404
    assert not SpamReport.objects.exists() and _entry(people[1], remote).folder == Folder.INBOX


def test_a_notice_cannot_be_reported(alice: User) -> None:
    notice = post_notice(owner=alice, subject="Delivery failed", text="details")
    response = api_as(alice).post(f"/api/v1/inbox/{notice.pk}/spam/")
    assert response.status_code == 400 and response.json()["error"] == "notice"
    assert "notice" in response.json()["detail"]
    notice.refresh_from_db()
    assert notice.folder == Folder.INBOX


def test_withdrawn_mail_cannot_be_reported(people: list[User], peer: FakePeer) -> None:
    message = PeerMessageFactory()
    remote = _receive(peer, message, people[:1])
    accept_withdrawal(origin=peer.domain, withdrawal=payloads.Withdrawal(message.global_id, message.sender))
    response = _report(people[0], remote)
    assert response.status_code == 409 and response.json()["error"] == "withdrawn"
    assert "withdrew" in response.json()["detail"]
    assert not SpamReport.objects.exists()


def test_the_api_schema_documents_both_endpoints(api: Any) -> None:
    schema = api.get("/api/schema/", {"format": "json"}).json()
    assert "post" in schema["paths"]["/api/v1/inbox/{entry_id}/spam/"]
    assert "post" in schema["paths"]["/api/v1/inbox/{entry_id}/not-spam/"]


def test_webmail_report_and_not_spam_buttons(people: list[User], peer: FakePeer) -> None:
    remote = _receive(peer, PeerMessageFactory(), people[:3])
    reader = people[0]
    web = Client()
    web.force_login(reader)
    entry = _entry(reader, remote)
    page = web.get(reverse("webmail:entry", args=[entry.pk])).content.decode()
    assert 'value="report_spam"><button type="submit" data-shortcut="!">Report spam</button>' in page
    listing = web.get(reverse("webmail:folder", args=["inbox"])).content.decode()
    assert 'value="report_spam" class="bulk" title="Report spam">' in listing
    assert '<span class="action-label">Report spam</span></button>' in listing

    web.post(reverse("webmail:entry-action", args=[entry.pk]), {"action": "report_spam"})
    assert _entry(reader, remote).folder == Folder.SPAM
    assert SpamReport.objects.filter(reporter=reader, spam=True).count() == 1
    page = web.get(reverse("webmail:entry", args=[entry.pk])).content.decode()
    assert 'value="not_spam"><button type="submit">Not spam</button>' in page

    web.post(reverse("webmail:bulk-action"), {"action": "not_spam", "ids": [entry.pk]})
    assert _entry(reader, remote).folder == Folder.INBOX

    # A selection: two readers' own copies cannot be mixed; a foreign id refuses the whole selection.
    other = _receive(peer, PeerMessageFactory(), people[:2])
    response = web.post(
        reverse("webmail:bulk-action"),
        {"action": "report_spam", "ids": [_entry(reader, other).pk, _entry(people[1], remote).pk]},
        follow=True,
    )
    assert any("not found" in str(m) for m in response.context["messages"])
    assert _entry(reader, other).folder == Folder.INBOX
    web.post(reverse("webmail:bulk-action"), {"action": "report_spam", "ids": [_entry(reader, other).pk, entry.pk]})
    assert _entry(reader, other).folder == Folder.SPAM and _entry(reader, remote).folder == Folder.SPAM


def test_the_keyboard_shortcut_reports_spam() -> None:
    script = (Path(__file__).parents[2] / "static/js/webmail.js").read_text()
    assert 'case "!"' in script and '"!": "report_spam"' in script


def test_no_attachment_is_fetched_for_a_hidden_copy(people: list[User], peer: FakePeer) -> None:
    content = b"%PDF-1.4 a file from a spam run"
    manifest = [{"name": "invoice.pdf", "type": "application/pdf", "size": len(content), "digest": digest_of(content)}]
    remote = RemoteMessageFactory(attachments=manifest)
    entries = [InboxEntryFactory(owner=user, remote=remote) for user in people[:4]]
    for user in people[:3]:
        _report(user, remote)
    hidden = entries[3]
    response = api_as(people[3]).get(f"/api/v1/inbox/{hidden.pk}/attachments/0/")
    assert response.status_code == 404
    assert not ReceivedAttachment.objects.filter(remote=remote).exists()
    assert [c for c in peer.calls if "/attachments/" in c.path] == []


def test_reporting_twice_counts_once_towards_a_verdict(people: list[User], peer: FakePeer) -> None:
    remote = _receive(peer, PeerMessageFactory(), people[:4])
    entry = _entry(people[0], remote)
    assert _report(people[0], remote).json()["judged_spam"] is False
    assert _report(people[0], remote).json()["repeated"] is True
    web = Client()
    web.force_login(people[0])
    web.post(reverse("webmail:bulk-action"), {"action": "report_spam", "ids": [entry.pk, entry.pk]})
    assert SpamReport.objects.filter(message=remote).count() == 1
    assert not SpamVerdict.objects.exists() and _entry(people[1], remote).folder == Folder.INBOX

    assert _report(people[1], remote).json()["judged_spam"] is True  # a second reader: two of two
    assert SpamVerdict.objects.get(message=remote).reports == 2


def test_a_flood_of_reports_from_one_reader_is_refused_with_429_and_changes_nothing(
    people: list[User], peer: FakePeer, settings: Any
) -> None:
    settings.PUSHMAIL_SPAM_REPORTS_PER_HOUR = 3
    flooder, other = people[0], people[1]
    run = [_receive(peer, PeerMessageFactory(subject=f"Note about {word}"), [flooder, other]) for word in
           ("apples", "bridges", "candles", "dolphins", "engines")]  # fmt: skip
    for remote in run[:2]:
        assert _report(flooder, remote).status_code == 200
    assert _report(flooder, run[0], "not-spam").status_code == 200  # a change of mind counts too

    refused = _report(flooder, run[3])
    assert refused.status_code == 429, refused.content
    assert refused.json()["error"] == "too_many_reports"
    assert "limit of 3 spam reports an hour" in refused.json()["detail"]
    assert 0 < int(refused["Retry-After"]) <= 3601
    assert _report(flooder, run[3], "not-spam").status_code == 429
    assert _entry(flooder, run[3]).folder == Folder.INBOX
    assert not SpamReport.objects.filter(message=run[3]).exists()

    # The webmail says so, and the whole selection stays as it was.
    web = Client()
    web.force_login(flooder)
    response = web.post(
        reverse("webmail:bulk-action"),
        {"action": "report_spam", "ids": [_entry(flooder, run[3]).pk, _entry(flooder, run[4]).pk]},
        follow=True,
    )
    notices = [str(m) for m in response.context["messages"]]
    assert any("limit of 3 spam reports an hour" in n and "Nothing was changed" in n for n in notices), notices
    assert {_entry(flooder, r).folder for r in run[3:]} == {Folder.INBOX}

    # Other readers have their own allowance.
    assert _report(other, run[3]).status_code == 200


def test_a_refused_report_does_not_use_up_the_allowance(people: list[User], peer: FakePeer, settings: Any) -> None:
    settings.PUSHMAIL_SPAM_REPORTS_PER_HOUR = 1
    mine = _receive(peer, PeerMessageFactory(), people[:1])
    theirs = _receive(peer, PeerMessageFactory(), people[1:2])
    assert api_as(people[0]).post(f"/api/v1/inbox/{_entry(people[1], theirs).pk}/spam/").status_code == 404
    notice = post_notice(owner=people[0], subject="Delivery failed", text="details")
    assert api_as(people[0]).post(f"/api/v1/inbox/{notice.pk}/spam/").status_code == 400
    assert _report(people[0], mine).status_code == 200
    assert _report(people[0], mine).status_code == 429
