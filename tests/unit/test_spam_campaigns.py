"""Campaigns (reputation.campaigns): a run split into many messages, with personalized subjects and
many senders on one origin, is grouped before any fetch and joined by its text after one; reports on
any of its messages judge it all, hiding every unopened copy in bulk and filing new ones to Spam;
an admin overturns it."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.models import Domain, User
from accounts.services import create_mailbox
from mailbox.models import Folder, InboxEntry, RemoteMessage
from mailbox.search import parse_query, search_entries
from mailbox.services import accept_notification, fetch_body, open_entry
from outbox.models import Message, Recipient
from reputation import campaigns
from reputation.campaigns import campaign_id_of, subject_key, subject_shape, text_fingerprint
from reputation.models import Campaign, CampaignMessage, SpamVerdict
from reputation.services import overturn_verdict, report_spam
from reputation.tasks import join_campaign_by_text, requeue_unfingerprinted
from tests.conftest import FakePeer, Queued, body_path
from tests.factories import PeerMessage, PeerMessageFactory, RemoteMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]

PRIZE = "{name}, your parcel {n} is waiting at the depot"
PRIZE_TEXT = (
    "Dear {name}, a parcel addressed to you (number {n}) could not be delivered. Pay the customs fee of "
    "{n} cents within 24 hours at http://parcels.peer.test/pay?ref={n} or it goes back to the sender."
)


@pytest.fixture(autouse=True)
def _count_to_the_threshold(settings: Any) -> None:
    """These tests count reports to PUSHMAIL_SPAM_REPORTS (3); the ratio rule (2 reports of few readers)
    is tested in test_spam_reports and test_spam_trust."""
    settings.PUSHMAIL_SPAM_RATIO = 1.5


def opened_fetched(user: User, remote: RemoteMessage) -> None:
    """``user`` opens the message, whose body is fetched then (as a worker would)."""
    open_entry(entry=entry(user, remote))
    fetch_body(remote.pk)


def accounts(domain: Domain, prefix: str, count: int, *, age_days: float = 30) -> list[User]:
    joined = timezone.now() - timedelta(days=age_days)
    made = User.objects.bulk_create(
        [
            User(email=f"{prefix}{n}@{domain.name}", local_part=f"{prefix}{n}", domain=domain, date_joined=joined)
            for n in range(count)
        ]
    )
    return list(User.objects.filter(pk__in=[u.pk for u in made]).order_by("pk"))


def personalized(sender: str, user: User, n: int, **fields: Any) -> PeerMessage:
    name = user.local_part
    return PeerMessageFactory(
        sender=sender,
        subject=fields.pop("subject", PRIZE).format(name=name, n=n),
        text=fields.pop("text", PRIZE_TEXT).format(name=name, n=n),
        **fields,
    )


def receive(peer: FakePeer, message: PeerMessage, recipients: list[User]) -> RemoteMessage:
    peer.bodies[str(message.global_id)] = message.content()
    accept_notification(origin=peer.domain, notification=message.notification([u.email for u in recipients]))
    return RemoteMessage.objects.get(global_id=message.global_id)


def split_run(peer: FakePeer, users: list[User], *, senders: int = 3) -> list[RemoteMessage]:
    """One message per user, each personalized, from ``senders`` addresses on the peer."""
    return [
        receive(peer, personalized(f"agent{n % senders}@peer.test", user, 1000 + n * 37), [user])
        for n, user in enumerate(users)
    ]


def entry(user: User, remote: RemoteMessage) -> InboxEntry:
    return InboxEntry.objects.get(owner=user, remote=remote)


def report(user: User, remote: RemoteMessage) -> bool:
    return report_spam(user=user, entry_id=entry(user, remote).pk).judged_spam


def folders(remotes: list[RemoteMessage]) -> set[str]:
    return set(InboxEntry.objects.filter(remote__in=remotes).values_list("folder", flat=True))


def wrote_to(user: User, address: str) -> None:
    now = timezone.now()
    sent = Message.objects.create(
        sender=user,
        sender_address=user.email,
        to=[address],
        message_id=f"<{uuid.uuid4()}@{user.domain.name}>",
        date=now,
        size=10,
        digest="sha-256:0",
        expires_at=now + timedelta(days=30),
    )
    Recipient.objects.create(message=sent, address=address, domain=address.rpartition("@")[2], kind="to")


# --- grouping before any fetch ----------------------------------------------------------------------


def test_subjects_fold_case_digits_spaces_and_the_recipients_names() -> None:
    assert subject_key("RE: Fwd: Your  ORDER 12345\tshipped") == "your order # shipped"
    key = subject_key("Alice.Smith, your parcel 4821 is waiting at the depot")
    assert subject_shape(key, ["alice.smith@beta.test"]) == "~ your parcel # is waiting at the depot"
    assert subject_shape(subject_key("Code A7X2K for your account access"), []) == "code # for your account access"
    assert subject_shape(subject_key("Re: lunch"), []) == ""  # too generic to join different senders


def test_a_split_run_is_one_campaign_before_any_fetch(local_domain: Domain, peer: FakePeer) -> None:
    users = accounts(local_domain, "reader", 9)
    run = split_run(peer, users)
    assert len({m.sender for m in run}) == 3 and len({m.subject for m in run}) == 9
    assert {campaign_id_of(m) for m in run} == {campaign_id_of(run[0])}
    assert not CampaignMessage.objects.exclude(fingerprint="").exists()  # nothing fetched to know it

    unrelated = receive(peer, PeerMessageFactory(sender="agent0@peer.test", subject="Minutes of the board"), users)
    elsewhere = personalized("agent0@other.test", users[0], 5)
    other_origin = RemoteMessage.objects.create(
        origin_domain="other.test",
        global_id=elsewhere.global_id,
        message_id=elsewhere.message_id,
        sender=elsewhere.sender,
        subject=elsewhere.subject,
        date=elsewhere.date,
        size=run[0].size,
        digest="sha-256:0",
        expires_at=elsewhere.expires,
        local_domain=local_domain.name,
    )
    assert campaign_id_of(unrelated) != campaign_id_of(run[0])
    assert campaign_id_of(other_origin) != campaign_id_of(run[0])


def test_a_campaign_takes_new_messages_only_within_its_window(
    local_domain: Domain, peer: FakePeer, settings: Any
) -> None:
    users = accounts(local_domain, "reader", 2)
    first = split_run(peer, users[:1])[0]
    Campaign.objects.update(first_seen_at=timezone.now() - timedelta(days=settings.PUSHMAIL_CAMPAIGN_WINDOW_DAYS + 1))
    later = split_run(peer, users[1:])[0]
    assert campaign_id_of(later) != campaign_id_of(first)


# --- reports count per campaign ----------------------------------------------------------------------


def test_reports_on_different_messages_judge_the_whole_campaign(
    local_domain: Domain, peer: FakePeer, queued: list[Queued]
) -> None:
    users = accounts(local_domain, "reader", 12)
    run = split_run(peer, users)
    assert report(users[0], run[0]) is False
    assert report(users[4], run[4]) is False
    assert folders(run[1:4] + run[5:]) == {Folder.INBOX}
    assert report(users[8], run[8]) is True

    assert folders(run) == {Folder.SPAM}
    hidden = InboxEntry.objects.filter(remote__in=run, hidden_from=Folder.INBOX)
    assert hidden.count() == 9 and not hidden.filter(read=False).exists()
    verdict = SpamVerdict.objects.get()
    assert verdict.reason == "3 people at alpha.test reported mail from this campaign" and verdict.hidden == 9
    assert {m.spam_verdict for m in RemoteMessage.objects.filter(pk__in=[m.pk for m in run])} == {verdict.reason}
    assert queued == [] and all(peer.calls_to("GET", body_path(m.global_id)) == [] for m in run)

    web = Client()
    web.force_login(users[2])
    page = web.get(reverse("webmail:folder", args=["spam"])).content.decode()
    assert 'data-testid="spam-reason">3 people at alpha.test reported mail from this campaign<' in page


def test_a_new_message_of_a_judged_campaign_goes_straight_to_spam_unfetched(
    local_domain: Domain, peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    users = accounts(local_domain, "reader", 6)
    run = split_run(peer, users[:3])
    for user, remote in zip(users[:3], run, strict=True):
        report(user, remote)
    eager = users[5]
    User.objects.filter(pk=eager.pk).update(fetch_policy="on_notify")

    with django_capture_on_commit_callbacks(execute=True):
        late = [
            receive(peer, personalized("agent9@peer.test", user, 77 + n), [user]) for n, user in enumerate(users[3:])
        ]
    assert campaign_id_of(late[0]) == campaign_id_of(run[0])
    assert folders(late) == {Folder.SPAM}
    assert not InboxEntry.objects.filter(remote__in=late, read=False).exists()
    assert queued == [] and all(peer.calls_to("GET", body_path(m.global_id)) == [] for m in late)


def test_a_known_correspondent_keeps_campaign_mail(local_domain: Domain, peer: FakePeer) -> None:
    users = accounts(local_domain, "reader", 6)
    wrote_to(users[4], "agent1@peer.test")
    run = split_run(peer, users)
    for user, remote in zip(users[:3], run[:3], strict=True):
        report(user, remote)
    assert entry(users[4], run[4]).folder == Folder.INBOX  # from agent1, to whom they wrote
    assert entry(users[5], run[5]).folder == Folder.SPAM


@pytest.mark.parametrize("copies", [1, 20])
def test_a_verdict_on_a_three_message_campaign_is_a_constant_number_of_queries(
    local_domain: Domain, peer: FakePeer, copies: int, django_assert_max_num_queries: Any
) -> None:
    reporters = accounts(local_domain, "reporter", 3)
    readers = accounts(local_domain, "reader", copies)
    run = [
        receive(peer, personalized(f"agent{n}@peer.test", reporter, 500 + n), [reporter, *readers])
        for n, reporter in enumerate(reporters)
    ]
    report(reporters[0], run[0])
    report(reporters[1], run[1])
    deciding = entry(reporters[2], run[2])
    # Whatever the campaign's size: the weighing, the bulk hiding, and what a verdict sets off (the
    # signed report to the origin, the content filter's lesson, the sender's and origin's scores),
    # the reporter's weight for the scores, and the reader's hourly allowance of reports (in the
    # shared cache: a dozen queries here, where the tests' cache is the database; two Redis calls live).
    with django_assert_max_num_queries(64):
        assert report_spam(user=reporters[2], entry_id=deciding.pk).judged_spam is True
    # Every reader's copy of each message (the reporters' own copies are in Spam by their own report).
    assert InboxEntry.objects.filter(remote__in=run, folder=Folder.SPAM, hidden_from=Folder.INBOX).count() == 3 * copies


def test_a_verdict_on_ten_thousand_copies_is_a_few_bulk_statements(local_domain: Domain) -> None:
    reporters = accounts(local_domain, "reporter", 3)
    readers = accounts(local_domain, "reader", 10_000)
    run = [
        RemoteMessageFactory(sender=f"agent{n}@peer.test", subject="Your parcel is waiting at the depot")
        for n in range(2)
    ]
    for remote in run:
        campaigns.place(remote=remote)
    assert campaign_id_of(run[0]) == campaign_id_of(run[1])
    InboxEntry.objects.bulk_create(
        [
            InboxEntry(owner=user, remote=run[n % 2], sender=run[n % 2].sender, subject="x", state="notified")
            for n, user in enumerate(reporters + readers)
        ],
        batch_size=2000,
    )
    report(reporters[0], run[0])
    report(reporters[1], run[1])
    with CaptureQueriesContext(connection) as queries:
        assert report(reporters[2], run[0]) is True
    assert InboxEntry.objects.filter(remote__in=run, folder=Folder.SPAM).count() == 10_003
    # Its time is bench/spam_run.py's to measure; here, that no statement is per copy (65 with
    # the report's lock on the message, taken before the reporter's copy: reputation.spam._report).
    assert len(queries) <= 65


# --- after a fetch: the text's fingerprint ------------------------------------------------------


def test_texts_alike_join_their_campaigns_after_a_fetch(
    local_domain: Domain, peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    users = accounts(local_domain, "reader", 8)
    # Subjects too different to group before a fetch; texts that differ by a name and numbers.
    a = receive(peer, personalized("agent0@peer.test", users[0], 1234, subject="Delivery notice"), users[:4])
    b = receive(peer, personalized("agent1@peer.test", users[4], 5678, subject="Action needed"), users[4:])
    assert campaign_id_of(a) != campaign_id_of(b)

    for remote in (a, b):
        with django_capture_on_commit_callbacks(execute=True):
            open_entry(entry=InboxEntry.objects.filter(remote=remote).first())
        with django_capture_on_commit_callbacks(execute=True):
            fetch_body(remote.pk)
    assert [q.args for q in queued if q.name == "reputation.join_campaign_by_text"] == [(a.pk,), (b.pk,)]
    for q in queued:
        if q.name == "reputation.join_campaign_by_text":
            join_campaign_by_text(*q.args)
    assert campaign_id_of(a) == campaign_id_of(b)
    assert CampaignMessage.objects.get(pk=b.pk).fingerprint.startswith("T1")

    report(users[0], a)
    report(users[1], a)
    assert entry(users[5], b).folder == Folder.INBOX
    assert report(users[4], b) is True  # the third report, on the other message
    assert entry(users[5], b).folder == Folder.SPAM and entry(users[2], a).folder == Folder.SPAM


def test_unrelated_texts_stay_apart(local_domain: Domain, peer: FakePeer) -> None:
    users = accounts(local_domain, "reader", 2)
    a = receive(peer, personalized("agent0@peer.test", users[0], 1, subject="Delivery notice"), users[:1])
    minutes = (
        "Minutes of the garden club: we agreed to plant the tulips in October, Jane brings the compost, "
        "and the next meeting is at the library on the first Tuesday."
    )
    b = receive(peer, PeerMessageFactory(sender="agent1@peer.test", subject="Minutes", text=minutes), users[1:])
    for user, remote in zip(users, (a, b), strict=True):
        opened_fetched(user, remote)
        join_campaign_by_text(remote.pk)
    assert campaign_id_of(a) != campaign_id_of(b)


def test_short_texts_join_only_when_equal_once_case_digits_and_spaces_are_folded(
    local_domain: Domain, peer: FakePeer
) -> None:
    assert text_fingerprint("Buy now 24") == text_fingerprint("BUY  now 99")
    assert text_fingerprint("Buy now 24").startswith("sha:")
    users = accounts(local_domain, "reader", 3)
    texts = ["Call me at 555 1234", "CALL me at 555   9876", "See you at lunch"]
    subjects = ["Hi", "Hello", "Hey"]
    remotes = [
        receive(peer, PeerMessageFactory(sender=f"p{n}@peer.test", subject=s, text=t), [users[n]])
        for n, (s, t) in enumerate(zip(subjects, texts, strict=True))
    ]
    for user, remote in zip(users, remotes, strict=True):
        opened_fetched(user, remote)
        join_campaign_by_text(remote.pk)
    ids = [campaign_id_of(r) for r in remotes]
    assert ids[0] == ids[1] != ids[2]


def test_a_message_whose_text_joins_a_judged_campaign_is_hidden(local_domain: Domain, peer: FakePeer) -> None:
    users = accounts(local_domain, "reader", 8)
    run = split_run(peer, users[:3])
    opened_fetched(users[0], run[0])  # its reader opened it: its text is known
    join_campaign_by_text(run[0].pk)
    for user, remote in zip(users[:3], run, strict=True):
        report(user, remote)
    odd = receive(peer, personalized("agent5@peer.test", users[3], 4242, subject="Final reminder"), users[3:])
    assert campaign_id_of(odd) != campaign_id_of(run[0]) and entry(users[4], odd).folder == Folder.INBOX

    opened_fetched(users[3], odd)  # one of them opens it
    open_entry(entry=entry(users[3], odd))
    join_campaign_by_text(odd.pk)
    assert campaign_id_of(odd) == campaign_id_of(run[0])
    assert entry(users[4], odd).folder == Folder.SPAM  # the others' unopened copies
    assert entry(users[3], odd).folder == Folder.INBOX  # the reader's own
    assert SpamVerdict.objects.get().hidden == 4  # the run's own copies were all reported


# --- the admin --------------------------------------------------------------------------------------


def test_an_admin_sees_a_campaign_and_overturns_it(local_domain: Domain, peer: FakePeer) -> None:
    users = accounts(local_domain, "reader", 9)
    run = split_run(peer, users)
    for user, remote in zip(users[:3], run[:3], strict=True):
        report(user, remote)
    campaign = Campaign.objects.get(pk=campaign_id_of(run[0]))

    admin = create_mailbox(address=f"admin@{local_domain.name}", password="admin pass phrase 9", is_staff=True)
    client = Client()
    client.force_login(admin)  # a domain admin
    changelist = reverse("admin:reputation_campaign_changelist")
    listing = client.get(changelist).content.decode()
    assert "judged spam: 3 people at alpha.test reported mail from this campaign; 6 copies hidden" in listing
    assert '<td class="field-messages">9</td>' in listing and '<td class="field-spam_reports">3</td>' in listing
    detail = client.get(reverse("admin:reputation_campaign_change", args=[campaign.pk])).content.decode()
    assert all(m.subject in detail for m in run)

    response = client.post(changelist, {"action": "overturn", "_selected_action": [campaign.pk]})
    assert response.status_code == 302
    assert folders(run[3:]) == {Folder.INBOX}
    assert not InboxEntry.objects.filter(remote__in=run[3:], read=True).exists()
    assert entry(users[0], run[0]).folder == Folder.SPAM  # the reporters' own choice stays
    assert "overturned" in client.get(changelist).content.decode()

    later = receive(peer, personalized("agent7@peer.test", users[0], 99), users[:2])
    assert campaign_id_of(later) == campaign.pk and entry(users[1], later).folder == Folder.INBOX


def test_another_domains_admin_does_not_see_the_campaign(local_domain: Domain, peer: FakePeer) -> None:
    users = accounts(local_domain, "reader", 3)
    run = split_run(peer, users)
    Domain.objects.create(name="gamma.test")
    admin = create_mailbox(address="admin@gamma.test", password="admin pass phrase 9", is_staff=True)
    client = Client()
    client.force_login(admin)
    listing = client.get(reverse("admin:reputation_campaign_changelist")).content.decode()
    assert "0 campaigns" in listing and "your parcel" not in listing
    page = client.get(reverse("admin:reputation_campaign_change", args=[campaign_id_of(run[0])]))
    assert page.status_code == 302  # not theirs: back to the admin index


def test_the_sweep_queues_again_a_fingerprint_the_broker_lost(
    local_domain: Domain, peer: FakePeer, queued: list[Queued]
) -> None:
    users = accounts(local_domain, "reader", 1)
    (remote,) = split_run(peer, users)
    opened_fetched(users[0], remote)  # body_fetched's task never ran (lost with the broker, say)
    assert requeue_unfingerprinted() == 0  # not overdue yet: the broker still has its chance
    RemoteMessage.objects.filter(pk=remote.pk).update(fetched_at=timezone.now() - timedelta(hours=1))

    assert requeue_unfingerprinted() == 1
    assert [q.args for q in queued if q.name == "reputation.join_campaign_by_text"] == [(remote.pk,)]
    join_campaign_by_text(remote.pk)
    assert CampaignMessage.objects.get(pk=remote.pk).fingerprint.startswith("T1")
    assert requeue_unfingerprinted() == 0


def test_hidden_copies_are_matched_on_their_subject_and_sender_only(local_domain: Domain) -> None:
    """The body was fetched for its first reader, so every copy was searchable by its text; a hidden
    copy, never opened, is matched on its head only (which also spares the verdict recomputing the
    full-text index of 10,000 bodies: bench/spam_run.py measures it), and an overturn brings it back."""
    reporters = accounts(local_domain, "reporter", 3)
    readers = accounts(local_domain, "reader", 10_000)
    remote = RemoteMessageFactory(sender="agent@peer.test", subject="Your parcel is waiting at the depot")
    campaigns.place(remote=remote)
    body = " ".join(f"customs clearance fee number {n} pay today" for n in range(60))  # ~2,500 characters
    document = f"{remote.subject}\n{remote.sender}\n{body}".lower()
    InboxEntry.objects.bulk_create(
        [
            InboxEntry(
                owner=user,
                remote=remote,
                sender=remote.sender,
                subject=remote.subject,
                state="fetched",
                search_document=document,
            )
            for user in reporters + readers
        ],
        batch_size=2000,
    )
    report(reporters[0], remote)
    report(reporters[1], remote)

    assert report(reporters[2], remote) is True

    reader = readers[0]
    assert search_entries(user=reader, query=parse_query("parcel depot")).filter(folder=Folder.SPAM).exists()
    assert not search_entries(user=reader, query=parse_query("customs clearance")).exists()

    verdict = SpamVerdict.objects.get()
    assert overturn_verdict(verdict_id=verdict.pk, by=None) == 10_000
    assert search_entries(user=reader, query=parse_query("parcel depot")).filter(folder=Folder.INBOX).exists()


def test_an_overturn_makes_hidden_copies_searchable_by_their_text_again(local_domain: Domain, peer: FakePeer) -> None:
    reporters = accounts(local_domain, "reporter", 3)
    reader = accounts(local_domain, "reader", 1)[0]
    message = PeerMessageFactory(subject="Quarterly statement", text="Your allotment of marmalade shares is ready")
    peer.bodies[str(message.global_id)] = message.content()
    accept_notification(origin=peer.domain, notification=message.notification([u.email for u in [*reporters, reader]]))
    remote = RemoteMessage.objects.get(global_id=message.global_id)
    opened_fetched(reporters[0], remote)
    assert search_entries(user=reader, query=parse_query("marmalade")).exists()  # fetched: every copy

    for user in reporters:
        report(user, remote)
    assert not search_entries(user=reader, query=parse_query("marmalade")).exists()
    assert search_entries(user=reader, query=parse_query("quarterly")).exists()

    overturn_verdict(verdict_id=SpamVerdict.objects.get().pk, by=None)
    found = search_entries(user=reader, query=parse_query("marmalade"))
    assert [e.folder for e in found] == [Folder.INBOX]
