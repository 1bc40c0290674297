"""Reputation of senders and origins: the formula, the rate a new origin starts at and earns, the
refusal of a much-reported origin and its lift, where new mail goes, and an origin that stops
answering while it holds mail for users here."""

from __future__ import annotations

import itertools
import types
from typing import Any

import pytest
from django.test import Client

from accounts.models import Domain, User
from accounts.services import create_mailbox
from federation.inbound import OriginRefused, PoorReputation
from mailbox.models import Folder, InboxEntry, RemoteMessage
from mailbox.services import accept_notification, fetch_body, open_entry
from reputation import reachability, scores, services
from reputation.models import DecisionKind, OriginPolicy, OriginReputation, ReputationDecision, SenderReputation
from reputation.scores import Counters
from reputation.services import report_not_spam, report_spam
from tests.conftest import FakePeer, FederationClient, ago
from tests.factories import MailboxFactory, PeerMessage, PeerMessageFactory, SentMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]


@pytest.fixture
def people(local_domain: Domain) -> list[User]:
    """Established readers: a report of theirs counts whole (a new account's weighs a quarter)."""
    made = [MailboxFactory(domain=local_domain, local_part=f"reader{n}") for n in range(12)]
    User.objects.filter(pk__in=[u.pk for u in made]).update(date_joined=ago(days=30))
    return made


@pytest.fixture
def one_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every check_origin call falls in the same clock minute (no flaky window boundary)."""
    monkeypatch.setattr(services, "time", types.SimpleNamespace(time=lambda: 1_800_000_010.0))


def _receive(peer: FakePeer, recipients: list[User], **fields: Any) -> RemoteMessage:
    message: PeerMessage = PeerMessageFactory(**fields)
    peer.bodies[str(message.global_id)] = message.content()
    accept_notification(origin=peer.domain, notification=message.notification([u.email for u in recipients]))
    return RemoteMessage.objects.get(global_id=message.global_id)


def _entry(user: User, remote: RemoteMessage) -> InboxEntry:
    return InboxEntry.objects.select_related("remote").get(owner=user, remote=remote)


def _origin(domain: str = "peer.test") -> OriginReputation:
    return OriginReputation.objects.get(domain=domain)


def _admits(domain: str) -> bool:
    try:
        services.check_origin(domain=domain)
    except OriginRefused:
        return False
    return True


def _admitted_in_a_minute(domain: str, *, tries: int) -> int:
    admitted = 0
    for _ in range(tries):
        admitted += _admits(domain)
    return admitted


_TOPICS = itertools.cycle(
    "apples bridges candles dolphins engines forests glaciers harbours islands jungles kettles lanterns meadows "
    "novels orchards pebbles quarries rivers saddles tunnels".split()
)


def _reported_by_each(peer: FakePeer, reporters: list[User], *, sender: str = "carol@peer.test") -> None:
    """Each reporter gets their own message from ``sender`` and reports it (no shared verdict: each
    message has a subject of its own, so that no two of them make a campaign)."""
    for user in reporters:
        remote = _receive(peer, [user], sender=sender, subject=f"About {next(_TOPICS)}")
        report_spam(user=user, entry_id=_entry(user, remote).pk)


# --- The formula ------------------------------------------------------------------------------


def test_no_history_scores_a_half_and_reads_raise_it_while_reports_lower_it() -> None:
    assert Counters().score == 0.5
    read = Counters(reads=100)
    answered = Counters(reads=100, replies=20)
    reported_by_a_fifth = Counters(reads=100, spam_reports=20)
    reported_by_half = Counters(reads=100, spam_reports=50)
    bulk = Counters(reads=5000, spam_reports=10)
    assert answered.score > read.score > 0.95
    assert bulk.score > 0.9, "legitimate bulk mail that one reader in a thousand reports stays well reputed"
    assert 0.35 < reported_by_a_fifth.score < 0.37
    assert reported_by_half.score < 0.2
    down = Counters(reads=10, outages=1, downtime_hours=24)
    assert down.score < Counters(reads=10).score
    assert (
        Counters(reads=10, outages=1, downtime_hours=1000).score
        == Counters(reads=10, outages=1, downtime_hours=72).score
    ), "downtime counts at most 72 hours"


def test_the_rate_grows_with_good_mail_up_to_the_instance_limit(settings: Any) -> None:
    settings.PUSHMAIL_NEW_ORIGIN_RATE_PER_MINUTE = 60
    settings.PUSHMAIL_ORIGIN_RATE_PER_MINUTE = 6000
    assert scores.rate_for(Counters()) == 60
    assert scores.rate_for(Counters(reads=10)) == 120
    assert scores.rate_for(Counters(reads=10, spam_reports=5)) == 60, "reported mail earns nothing"
    assert scores.rate_for(Counters(reads=100_000)) == 6000


# --- The rate limit a notification meets ---------------------------------------------------------


@pytest.mark.usefixtures("one_minute")
def test_a_new_origin_is_held_to_the_new_origin_rate_which_grows_as_its_mail_is_read(
    settings: Any, peer: FakePeer, people: list[User]
) -> None:
    settings.PUSHMAIL_NEW_ORIGIN_RATE_PER_MINUTE = 4
    settings.PUSHMAIL_ORIGIN_RATE_PER_MINUTE = 1000
    assert _admitted_in_a_minute("fresh.test", tries=10) == 4
    with pytest.raises(OriginRefused) as refused:
        services.check_origin(domain="fresh.test")
    assert refused.value.retry_after is not None and "limit of 4" in refused.value.detail

    # peer.test's mail is read by ten people: each first open counts, and the sweep rescores.
    remote = _receive(peer, people[:10])
    open_entry(entry=_entry(people[0], remote))
    fetch_body(remote.pk)
    for user in people[:10]:
        open_entry(entry=_entry(user, remote))
        open_entry(entry=_entry(user, remote))  # a second look is not a second reader
    assert _origin().reads == 10
    scores.refresh_scores()
    assert scores.origin_standing("peer.test").rate == 8  # 4 × (1 + 10 / 10)
    assert _admitted_in_a_minute("peer.test", tries=20) == 8


@pytest.mark.usefixtures("one_minute")
def test_an_admins_rate_for_a_peer_overrides_the_earned_one(settings: Any) -> None:
    settings.PUSHMAIL_NEW_ORIGIN_RATE_PER_MINUTE = 2
    OriginPolicy.objects.create(domain="partner.test", rate_per_minute=7)
    assert _admitted_in_a_minute("partner.test", tries=10) == 7


# --- Refusal and its lift ------------------------------------------------------------------


def test_an_origin_reported_past_the_threshold_is_refused_with_its_own_code_until_an_admin_lifts_it(
    settings: Any, peer: FakePeer, people: list[User], federation: FederationClient, alice: User
) -> None:
    settings.PUSHMAIL_REPUTATION_MIN_REPORTS = 2
    for n, user in enumerate(people[:3]):  # a sender each: only the origin's reputation adds up
        _reported_by_each(peer, [user], sender=f"run{n}@peer.test")
    rep = _origin()
    assert rep.spam_reports == 3 and rep.spam_filed and not rep.refused, "spam filing comes before refusal"
    assert _admits("peer.test")

    _reported_by_each(peer, people[3:4], sender="run3@peer.test")
    rep = _origin()
    assert rep.refused and rep.score < settings.PUSHMAIL_REPUTATION_REFUSE_BELOW
    refusal = ReputationDecision.objects.get(origin=rep, kind=DecisionKind.REFUSED, ended_at__isnull=True)
    assert "4 spam reports" in refusal.reason and "until an admin lifts it" in refusal.reason

    with pytest.raises(PoorReputation):
        services.check_origin(domain="peer.test")
    answer = federation.notify(peer, PeerMessageFactory(to=[alice.email]).payload())
    assert answer.status_code == 403, answer.content
    assert answer.json()["error"] == "poor_reputation"
    assert "often reported as spam" in answer.json()["detail"]
    assert not InboxEntry.objects.filter(owner=alice).exists(), "nothing of a refused notification is stored"

    assert scores.lift_origin(origin_id=rep.pk, by=None)
    assert federation.notify(peer, PeerMessageFactory(to=[alice.email]).payload()).status_code == 200
    assert InboxEntry.objects.get(owner=alice).folder == Folder.INBOX, "the lift ends the Spam filing too"
    lifted = ReputationDecision.objects.filter(origin=rep, ended_at__isnull=False)
    assert {d.kind for d in lifted} == {DecisionKind.REFUSED, DecisionKind.SPAM, DecisionKind.RATE}

    # One more report is not enough evidence to refuse again: only new reports count after a lift.
    _reported_by_each(peer, people[4:5], sender="run4@peer.test")
    assert not _origin().refused


def test_not_spam_taken_back_moves_the_count(peer: FakePeer, people: list[User]) -> None:
    remote = _receive(peer, people[:1])
    entry = _entry(people[0], remote)
    report_spam(user=people[0], entry_id=entry.pk)
    report_not_spam(user=people[0], entry_id=entry.pk)
    rep = _origin()
    assert (rep.spam_reports, rep.not_spam) == (0, 1)
    sender = SenderReputation.objects.get(address="carol@peer.test")
    assert (sender.spam_reports, sender.not_spam) == (0, 1)
    # The weights move with the counts; a reader who only ever gets peer.test's mail counts a tenth.
    assert (sender.spam_weight, sender.not_spam_weight) == (0, pytest.approx(0.1))


def test_reports_weigh_their_reporters_trust_so_new_accounts_cannot_sink_a_senders_score(
    settings: Any, peer: FakePeer, people: list[User], local_domain: Domain
) -> None:
    settings.PUSHMAIL_REPUTATION_MIN_REPORTS = 3
    newcomers = [MailboxFactory(domain=local_domain, local_part=f"new{n}") for n in range(5)]  # joined today
    for sender in ("club@peer.test", "pills@peer.test"):
        for _ in range(10):  # both read by ten people here
            scores.note_read(origin="peer.test", sender=sender)

    _reported_by_each(peer, newcomers, sender="club@peer.test")
    club = SenderReputation.objects.get(address="club@peer.test")
    assert club.spam_reports == 5 and club.spam_weight == pytest.approx(1.25), "a quarter each"
    assert club.score > settings.PUSHMAIL_REPUTATION_SPAM_BELOW and not club.spam_filed
    assert _entry(people[0], _receive(peer, people[:1], sender="club@peer.test")).folder == Folder.INBOX

    # The same five reports from established readers do sink a sender.
    _reported_by_each(peer, people[1:6], sender="pills@peer.test")
    pills = SenderReputation.objects.get(address="pills@peer.test")
    assert pills.spam_weight == pytest.approx(5) and pills.spam_filed
    assert _entry(people[0], _receive(peer, people[:1], sender="pills@peer.test")).folder == Folder.SPAM


# --- Where new mail goes ---------------------------------------------------------------------------


def test_a_poorly_reputed_sender_goes_to_spam_on_arrival_except_for_known_correspondents(
    settings: Any, peer: FakePeer, people: list[User]
) -> None:
    settings.PUSHMAIL_REPUTATION_MIN_REPORTS = 3
    for _ in range(40):  # the origin's other mail is widely read
        scores.note_read(origin="peer.test", sender="carol@peer.test")
    _reported_by_each(peer, people[:3], sender="pills@peer.test")
    assert SenderReputation.objects.get(address="pills@peer.test").spam_filed
    assert not _origin().spam_filed, "one bad sender does not sink an origin whose mail is read"
    decision = ReputationDecision.objects.get(sender__address="pills@peer.test", kind=DecisionKind.SPAM)
    assert "pills@peer.test goes to Spam" in decision.reason

    friend, stranger = people[10], people[11]
    SentMessageFactory(sender=friend, to=["pills@peer.test"])
    remote = _receive(peer, [friend, stranger], sender="pills@peer.test")
    assert remote.spam_verdict == "mail from pills@peer.test is often reported here"
    assert _entry(stranger, remote).folder == Folder.SPAM
    assert _entry(friend, remote).folder == Folder.INBOX
    other = _receive(peer, [stranger], sender="carol@peer.test")
    assert _entry(stranger, other).folder == Folder.INBOX, "other senders at the origin are not affected"

    scores.allow_sender(sender_id=SenderReputation.objects.get(address="pills@peer.test").pk, allowed=True, by=None)
    allowed = _receive(peer, [stranger], sender="pills@peer.test")
    assert not allowed.spam_verdict and _entry(stranger, allowed).folder == Folder.INBOX


def test_a_poorly_reputed_origin_sends_every_sender_to_spam_and_its_rate_is_lowered(
    settings: Any, peer: FakePeer, people: list[User]
) -> None:
    settings.PUSHMAIL_REPUTATION_MIN_REPORTS = 3
    settings.PUSHMAIL_NEW_ORIGIN_RATE_PER_MINUTE = 60
    for n, user in enumerate(people[:3]):
        _reported_by_each(peer, [user], sender=f"run{n}@peer.test")
    rep = _origin()
    assert rep.spam_filed and not any(s.spam_filed for s in SenderReputation.objects.all())
    assert scores.origin_standing("peer.test").rate == 15
    kinds = set(ReputationDecision.objects.filter(origin=rep, ended_at__isnull=True).values_list("kind", flat=True))
    assert kinds == {DecisionKind.SPAM, DecisionKind.RATE}

    remote = _receive(peer, [people[5]], sender="brand-new@peer.test")
    assert remote.spam_verdict == "mail from peer.test is often reported here"
    assert _entry(people[5], remote).folder == Folder.SPAM


def test_reads_and_replies_recover_a_reputation_and_end_the_decision(
    settings: Any, peer: FakePeer, people: list[User]
) -> None:
    settings.PUSHMAIL_REPUTATION_MIN_REPORTS = 3
    _reported_by_each(peer, people[:3], sender="news@peer.test")
    assert SenderReputation.objects.get(address="news@peer.test").spam_filed
    for user in people[3:12]:
        SentMessageFactory(sender=user, to=["news@peer.test"])
    scores.refresh_scores()
    sender = SenderReputation.objects.get(address="news@peer.test")
    assert sender.replies == 9 and _origin().replies == 9
    assert not sender.spam_filed, sender.score
    decision = ReputationDecision.objects.get(sender=sender)
    assert decision.ended_at is not None and decision.reversed_by is None


# --- The sender must stay online ---------------------------------------------------------------


def test_an_origin_that_stops_answering_a_fetch_loses_reputation_and_recovers_its_standing_when_back(
    peer: FakePeer, people: list[User], django_capture_on_commit_callbacks: Any
) -> None:
    remote = _receive(peer, people[:2])
    before = Counters().score
    peer.go_down()
    with django_capture_on_commit_callbacks(execute=True):
        open_entry(entry=_entry(people[0], remote))
        fetch_body(remote.pk)
    rep = _origin()
    assert rep.outages == 1 and rep.unreachable_since is not None
    assert rep.score < before

    OriginReputation.objects.filter(pk=rep.pk).update(unreachable_since=ago(hours=3))
    peer.come_back()
    RemoteMessage.objects.filter(pk=remote.pk).update(next_attempt_at=ago(seconds=1))
    with django_capture_on_commit_callbacks(execute=True):
        fetch_body(remote.pk)
    rep = _origin()
    assert rep.unreachable_since is None and rep.last_reached_at is not None
    assert 3 * 3600 <= rep.downtime_seconds < 3 * 3600 + 60
    assert rep.outages == 1


def test_the_periodic_check_flags_an_origin_gone_with_the_users_it_notified(
    settings: Any, peer: FakePeer, other_peer: FakePeer, people: list[User]
) -> None:
    settings.PUSHMAIL_ORIGIN_GONE_AFTER_HOURS = 24
    _receive(peer, people[:3])
    _receive(peer, people[2:5])  # five distinct users hold unopened mail from peer.test
    _receive(other_peer, people[:1], sender="dan@other.test")
    peer.go_down()

    result = reachability.check_reachability()
    assert result["asked"] == 2 and result["unreachable"] == 1 and result["flagged"] == 0
    rep = _origin()
    assert rep.outages == 1 and not rep.gone and rep.users_notified == 5
    assert _origin("other.test").unreachable_since is None and _origin("other.test").last_reached_at

    OriginReputation.objects.filter(pk=rep.pk).update(unreachable_since=ago(hours=25))
    reachability.check_reachability()
    rep = _origin()
    assert rep.gone and rep.outages == 1, "one outage, however long"
    assert rep.score < 0.1
    gone = ReputationDecision.objects.get(origin=rep, kind=DecisionKind.GONE)
    assert "for 5 local users" in gone.reason
    assert not _origin("other.test").gone

    peer.come_back()
    reachability.check_reachability()
    rep = _origin()
    assert not rep.gone and rep.unreachable_since is None
    assert ReputationDecision.objects.get(pk=gone.pk).ended_at is not None


def test_origins_without_unopened_mail_are_not_asked(peer: FakePeer, people: list[User]) -> None:
    remote = _receive(peer, people[:1])
    open_entry(entry=_entry(people[0], remote))
    fetch_body(remote.pk)
    open_entry(entry=_entry(people[0], remote))
    before = peer.discovery_calls
    assert reachability.check_reachability()["asked"] == 0
    assert peer.discovery_calls == before


# --- The admin ---------------------------------------------------------------------------------------


@pytest.fixture
def domain_admin(local_domain: Domain) -> Client:
    user = create_mailbox(address=f"postmaster@{local_domain.name}", password="admin passphrase 123", is_staff=True)
    client = Client()
    client.force_login(user)
    return client


def test_a_domain_admin_sees_the_decisions_and_lifts_a_refusal_but_cannot_block(
    settings: Any, peer: FakePeer, people: list[User], domain_admin: Client
) -> None:
    settings.PUSHMAIL_REPUTATION_MIN_REPORTS = 1
    _reported_by_each(peer, people[:2])
    rep = _origin()
    assert rep.refused

    listing = domain_admin.get("/admin/reputation/originreputation/")
    assert listing.status_code == 200
    page = listing.content.decode()
    assert "peer.test" in page and "refused" in page
    assert 'value="block"' not in page, "blocking is for superusers"
    change = domain_admin.get(f"/admin/reputation/originreputation/{rep.pk}/change/").content.decode()
    assert "notifications refused (403 poor_reputation)" in change
    decisions = domain_admin.get("/admin/reputation/reputationdecision/").content.decode()
    assert "Notifications refused" in decisions

    done = domain_admin.post(
        "/admin/reputation/originreputation/", {"action": "lift", "_selected_action": [str(rep.pk)]}
    )
    assert done.status_code == 302
    assert not _origin().refused and _admits("peer.test")
    reversed_ = ReputationDecision.objects.get(origin=rep, kind=DecisionKind.REFUSED)
    assert reversed_.reversed_by is not None and reversed_.reversed_by.email.startswith("postmaster@")

    domain_admin.post("/admin/reputation/originreputation/", {"action": "block", "_selected_action": [str(rep.pk)]})
    assert not OriginPolicy.objects.filter(domain="peer.test", blocked=True).exists()


def test_an_admin_pins_a_score_and_the_decision_follows(
    settings: Any, peer: FakePeer, people: list[User], local_domain: Domain
) -> None:
    settings.PUSHMAIL_REPUTATION_MIN_REPORTS = 1
    _reported_by_each(peer, people[:2])
    rep = _origin()
    root = create_mailbox(address=f"root@{local_domain.name}", password="admin passphrase 123", is_staff=True)
    User.objects.filter(pk=root.pk).update(is_superuser=True)
    client = Client()
    client.force_login(User.objects.get(pk=root.pk))
    decisions = list(ReputationDecision.objects.filter(origin=rep).values_list("pk", flat=True))
    form = {"pinned_score": "0.9", "decisions-TOTAL_FORMS": len(decisions), "decisions-INITIAL_FORMS": len(decisions)}
    for n, pk in enumerate(decisions):
        form.update({f"decisions-{n}-id": pk, f"decisions-{n}-origin": rep.pk})
    response = client.post(f"/admin/reputation/originreputation/{rep.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    rep = _origin()
    assert rep.pinned_score == 0.9 and not rep.refused and not rep.spam_filed
    assert _admits("peer.test")
