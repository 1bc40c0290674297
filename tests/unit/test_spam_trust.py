"""Reports weighted by trust (reputation.trust): colluding accounts cannot hide a sender many read and
answer, a spammer's accounts cannot clear its run, new accounts and overturned reporters count less,
and one trusted reporter hides nothing while three do."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from accounts.models import Domain, User
from mailbox.models import Folder, InboxEntry, RemoteMessage
from mailbox.services import accept_notification
from outbox.models import Message, Recipient
from reputation import trust
from reputation.campaigns import campaign_id_of
from reputation.models import SpamVerdict
from reputation.services import overturn_verdict, record_read, report_not_spam, report_spam
from tests.conftest import FakePeer
from tests.factories import PeerMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]

NEWS = "news@peer.test"


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def accounts(domain: Domain, prefix: str, count: int, *, age_days: float = 30) -> list[User]:
    """Mailboxes made ``age_days`` ago, in one insert."""
    joined = timezone.now() - timedelta(days=age_days)
    made = User.objects.bulk_create(
        [
            User(email=f"{prefix}{n}@{domain.name}", local_part=f"{prefix}{n}", domain=domain, date_joined=joined)
            for n in range(count)
        ]
    )
    return list(User.objects.filter(pk__in=[u.pk for u in made]).order_by("pk"))


def receive(peer: FakePeer, recipients: list[User], **fields: Any) -> RemoteMessage:
    message = PeerMessageFactory(**fields)
    peer.bodies[str(message.global_id)] = message.content()
    accept_notification(origin=peer.domain, notification=message.notification([u.email for u in recipients]))
    return RemoteMessage.objects.get(global_id=message.global_id)


def wrote_to(user: User, address: str) -> None:
    """``user`` has sent mail to ``address`` (a reply, say)."""
    now = timezone.now()
    sent = Message.objects.create(
        sender=user,
        sender_address=user.email,
        subject="Re: hello",
        to=[address],
        message_id=f"<{uuid.uuid4()}@{user.domain.name}>",
        date=now,
        size=10,
        digest="sha-256:0",
        expires_at=now + timedelta(days=30),
    )
    Recipient.objects.create(message=sent, address=address, domain=address.rpartition("@")[2], kind="to")


def opened(users: list[User], remote: RemoteMessage) -> None:
    """These users opened the message (as mailbox.fetching.open_entry records it)."""
    InboxEntry.objects.filter(owner__in=users, remote=remote).update(opened_at=timezone.now(), read=True)
    for user in users:
        record_read(message=remote, reader_id=user.pk)


def entry(user: User, remote: RemoteMessage) -> InboxEntry:
    return InboxEntry.objects.get(owner=user, remote=remote)


def report(users: list[User], remote: RemoteMessage, *, spam: bool = True) -> bool:
    """Each user reports; whether the message stands judged spam after the last one."""
    act = report_spam if spam else report_not_spam
    outcome = None
    for user in users:
        outcome = act(user=user, entry_id=entry(user, remote).pk)
    assert outcome is not None
    return outcome.judged_spam


def in_inbox(users: list[User], remote: RemoteMessage) -> int:
    return InboxEntry.objects.filter(owner__in=users, remote=remote, folder=Folder.INBOX).count()


# --- the three cases the benchmark's "gaming" line checks -----------------------------------------


def test_five_colluding_accounts_cannot_hide_a_sender_fifty_others_read_and_answer(
    local_domain: Domain, peer: FakePeer
) -> None:
    fans = accounts(local_domain, "fan", 50)
    colluders = accounts(local_domain, "troll", 5)
    earlier = receive(peer, fans, sender=NEWS, subject="Issue 41 of the club letter")
    opened(fans, earlier)
    for fan in fans:
        wrote_to(fan, NEWS)

    letter = receive(peer, fans + colluders, sender=NEWS, subject="Meeting notes and the next outing")
    assert report(colluders, letter) is False
    assert not SpamVerdict.objects.exists()
    assert in_inbox(fans, letter) == 50  # everyone else still has it


def test_the_same_five_reports_hide_mail_nobody_answers(local_domain: Domain, peer: FakePeer) -> None:
    """The control: without the fifty readers who answer, five trusted reports are a verdict."""
    readers = accounts(local_domain, "fan", 50)
    reporters = accounts(local_domain, "troll", 5)
    earlier = receive(peer, readers, sender=NEWS, subject="Issue 41 of the club letter")
    opened(readers, earlier)  # they read it, but never answered

    letter = receive(peer, readers + reporters, sender=NEWS, subject="Meeting notes and the next outing")
    assert report(reporters, letter) is True
    assert in_inbox(readers, letter) == 0


def test_a_spammers_accounts_saying_not_spam_do_not_stop_what_trusted_readers_reported(
    local_domain: Domain, peer: FakePeer
) -> None:
    socks = accounts(local_domain, "sock", 5)  # they only ever get this origin's mail, and write to no one
    readers = accounts(local_domain, "reader", 3)
    others = accounts(local_domain, "other", 10)
    run = receive(peer, socks + readers + others, sender="win@peer.test", subject="You won a cruise, claim now")
    assert report(socks, run, spam=False) is False

    assert report(readers, run) is True
    assert in_inbox(others, run) == 0


def test_not_spam_from_readers_with_correspondents_does_count_against_a_verdict(
    local_domain: Domain, peer: FakePeer
) -> None:
    """The control: five established readers with their own correspondents saying "not spam" do count."""
    vouchers = accounts(local_domain, "voucher", 5)
    for voucher in vouchers:
        wrote_to(voucher, "friend@other.test")
    readers = accounts(local_domain, "reader", 3)
    others = accounts(local_domain, "other", 10)
    run = receive(peer, vouchers + readers + others, sender="win@peer.test", subject="You won a cruise, claim now")
    report(vouchers, run, spam=False)

    assert report(readers, run) is False
    assert in_inbox(others, run) == 10


def test_one_trusted_reporter_hides_nothing_and_three_do(local_domain: Domain, peer: FakePeer) -> None:
    readers = accounts(local_domain, "reader", 3)
    others = accounts(local_domain, "other", 10)
    remote = receive(peer, readers + others, subject="Cheap watches for everyone today")
    opened(others[:7], remote)  # read by enough people that two reports are under the ratio

    assert report(readers[:1], remote) is False
    assert in_inbox(others, remote) == 10
    assert report(readers[1:2], remote) is False
    assert in_inbox(others, remote) == 10
    assert report(readers[2:], remote) is True
    assert in_inbox(others, remote) == 7  # the three who had not opened it
    assert SpamVerdict.objects.get().reports == 3


# --- what lowers a reporter's trust -----------------------------------------------------------------


def test_new_accounts_count_less(local_domain: Domain, peer: FakePeer, settings: Any) -> None:
    newcomers = accounts(local_domain, "new", 6, age_days=1)
    others = accounts(local_domain, "other", 4)
    remote = receive(peer, newcomers + others, subject="Cheap watches for everyone today")

    assert report(newcomers[:3], remote) is False  # three reports at a quarter each
    assert in_inbox(others, remote) == 4
    settings.PUSHMAIL_SPAM_TRUSTED_AFTER_DAYS = 0.5  # the same accounts, now old enough
    assert report(newcomers[3:4], remote) is True


def test_a_reporter_whose_report_was_overturned_counts_half(local_domain: Domain, peer: FakePeer) -> None:
    readers = accounts(local_domain, "reader", 4)
    others = accounts(local_domain, "other", 6)
    first = receive(peer, readers + others, sender="shop@peer.test", subject="Your order has shipped today")
    assert report(readers[:3], first) is True
    overturn_verdict(verdict_id=SpamVerdict.objects.get().pk, by=None)  # an admin says it was fine

    later = receive(peer, readers + others, sender="deals@other-shop.test", subject="Spring sale on garden tools")
    assert report(readers[:3], later) is False  # each of the three counts half now
    assert in_inbox(others, later) == 6
    assert report(readers[3:], later) is True  # a fourth reporter with a clean record tips it


def test_a_reporter_contradicted_by_answering_readers_counts_half(local_domain: Domain, peer: FakePeer) -> None:
    fans = accounts(local_domain, "fan", 5)
    reporters = accounts(local_domain, "reader", 3)
    others = accounts(local_domain, "other", 10)
    liked = receive(peer, fans + reporters, sender=NEWS, subject="Meeting notes and the next outing")
    opened(fans, liked)
    for fan in fans:
        wrote_to(fan, NEWS)
    report(reporters[:1], liked)  # reported a sender five others read and answer

    spam = receive(peer, reporters + others, sender="win@peer.test", subject="You won a cruise, claim now")
    opened(others, spam)  # read by enough people that only the threshold of 3 judges it
    tally = trust.tally(campaign_id=campaign_id_of(spam), origin="peer.test")
    assert tally.spam_weight == 0
    assert report(reporters, spam) is False  # 0.5 + 1 + 1
    assert trust.tally(campaign_id=campaign_id_of(spam), origin="peer.test").spam_weight == 2.5


def test_weighing_costs_the_same_few_queries_whatever_the_reporters_history(
    local_domain: Domain, peer: FakePeer, django_assert_max_num_queries: Any
) -> None:
    reporters = accounts(local_domain, "reader", 3)
    vouchers = accounts(local_domain, "voucher", 3)
    for n in range(20):  # a long history of reports on other campaigns
        past = receive(peer, reporters, sender=f"s{n}@peer.test", subject=f"Offer number {n} of many kinds")
        report(reporters, past)
    remote = receive(peer, reporters + vouchers, subject="Cheap watches for everyone today")
    report(reporters[:2], remote)
    report(vouchers, remote, spam=False)
    campaign_id = campaign_id_of(remote)
    with django_assert_max_num_queries(6):
        tally = trust.tally(campaign_id=campaign_id, origin="peer.test")
    assert tally.spam_reporters == 2 and tally.readers == 5


def test_mail_hundreds_read_without_complaint_is_not_hidden_by_the_few_who_report_it(
    local_domain: Domain, peer: FakePeer
) -> None:
    """A newsletter nobody here answers: 200 readers open it and say nothing; 5 trusted readers report it."""
    readers = accounts(local_domain, "reader", 200)
    reporters = accounts(local_domain, "reporter", 5)
    unread = accounts(local_domain, "later", 20)
    letter = receive(peer, readers + reporters + unread, sender=NEWS, subject="This month at the library")
    opened(readers + reporters, letter)

    assert report(reporters, letter) is False

    assert not SpamVerdict.objects.exists()
    assert in_inbox(unread, letter) == 20


def test_the_same_reports_judge_mail_few_have_opened(local_domain: Domain, peer: FakePeer) -> None:
    """The share of silent readers is what spares the newsletter: 5 reports among 20 readers judge it."""
    readers = accounts(local_domain, "reader", 15)
    reporters = accounts(local_domain, "reporter", 5)
    unread = accounts(local_domain, "later", 20)
    letter = receive(peer, readers + reporters + unread, sender=NEWS, subject="This month at the library")
    opened(readers + reporters, letter)

    assert report(reporters, letter) is True

    assert in_inbox(unread, letter) == 0


def test_correspondents_who_never_opened_the_senders_mail_vouch_for_nothing(
    local_domain: Domain, peer: FakePeer
) -> None:
    """Having written to an address is not a "not spam": only a correspondent who opened the sender's
    mail here (and did not report it) speaks for it. Their own copies stay in their Inbox all the same."""
    correspondents = accounts(local_domain, "asked", 20)
    readers = accounts(local_domain, "reader", 10)
    for user in correspondents:
        wrote_to(user, "offers@peer.test")
    run = receive(peer, correspondents + readers, sender="offers@peer.test", subject="Your account will be closed")
    opened(readers[:3], run)

    assert report(readers[:3], run) is True, "three trusted reports, whatever the twenty who wrote to it"
    assert in_inbox(correspondents, run) == 20
    assert in_inbox(readers[3:], run) == 0
