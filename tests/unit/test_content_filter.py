"""The content filter against a real rspamd (deploy/rspamd/run): a fetched body is checked by a
durable job, GTUBE is judged spam and hidden from the unopened copies, a verdict teaches rspamd's
fuzzy storage so a near-copy scores at once, reports teach its Bayes, and a down rspamd loses nothing.

rspamd is found at PUSHMAIL_TEST_RSPAMD (or RSPAMD_URL, or the default port when it answers there);
without it these tests skip, except under CI, where an unreachable rspamd is a failure.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
import requests
from django.test import Client
from django.utils import timezone

from accounts.models import Domain, User
from accounts.services import create_mailbox
from mailbox.models import Folder, InboxEntry, RemoteMessage
from mailbox.services import accept_notification, fetch_body, open_entry
from reputation import content_filter
from reputation.models import (
    ContentCheck,
    ContentJobKind,
    ContentJobState,
    FeedbackReport,
    FeedbackVerdict,
    SpamVerdict,
)
from reputation.spam import overturn_verdict
from tests.conftest import FakePeer, Queued, api_as, broker_lost
from tests.factories import MailboxFactory, PeerMessage, PeerMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
DEFAULT_RSPAMD = "http://127.0.0.1:11333"


def _is_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _answers(url: str) -> str | None:
    try:
        response = requests.get(f"{url}/ping", timeout=3)
    except requests.RequestException as exc:
        return str(exc)
    return None if response.ok and "pong" in response.text else f"HTTP {response.status_code}"


@pytest.fixture(scope="module")
def rspamd_url() -> str:
    url = (os.environ.get("PUSHMAIL_TEST_RSPAMD") or os.environ.get("RSPAMD_URL") or DEFAULT_RSPAMD).rstrip("/")
    problem = _answers(url)
    if problem is not None:
        message = f"rspamd at {url} (PUSHMAIL_TEST_RSPAMD) does not answer /ping: {problem}; start deploy/rspamd/run"
        if _is_ci():
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture
def rspamd(rspamd_url: str, settings: Any) -> str:
    """The content filter on, talking to the real rspamd."""
    settings.RSPAMD_URL = rspamd_url
    settings.RSPAMD_CONTROLLER_URL = os.environ.get("PUSHMAIL_TEST_RSPAMD_CONTROLLER", "")
    settings.RSPAMD_PASSWORD = os.environ.get("PUSHMAIL_TEST_RSPAMD_PASSWORD", "pushmail")
    settings.RSPAMD_SPAM_SCORE = None
    return rspamd_url


@pytest.fixture
def people(local_domain: Domain) -> list[User]:
    people = [MailboxFactory(domain=local_domain, local_part=f"reader{n}") for n in range(8)]
    # Established accounts, whose reports count whole (reputation.trust).
    User.objects.filter(pk__in=[u.pk for u in people]).update(date_joined=timezone.now() - timedelta(days=30))
    return people


def _receive(peer: FakePeer, message: PeerMessage, recipients: list[User]) -> RemoteMessage:
    peer.bodies[str(message.global_id)] = message.content()
    accept_notification(origin=peer.domain, notification=message.notification([u.email for u in recipients]))
    return RemoteMessage.objects.get(global_id=message.global_id)


def _entry(user: User, remote: RemoteMessage) -> InboxEntry:
    return InboxEntry.objects.select_related("remote").get(owner=user, remote=remote)


def _open_and_fetch(user: User, remote: RemoteMessage, capture: Any) -> None:
    """The first reader opens the message: its body is fetched (and body_fetched sent, after commit)."""
    with capture(execute=True):
        open_entry(entry=_entry(user, remote))
        fetch_body(remote.pk)
    open_entry(entry=_entry(user, remote))


def _job(remote: RemoteMessage, kind: str = ContentJobKind.CHECK) -> ContentCheck:
    return ContentCheck.objects.get(message=remote, kind=kind)


def _run_queued(queued: list[Queued]) -> list[int]:
    """Run the content jobs handed to the broker (as a worker would), in order; returns their ids."""
    jobs = [q for q in queued if q.name == "reputation.run_content_job"]
    queued[:] = [q for q in queued if q not in jobs]
    for job in jobs:
        content_filter.run_content_job(job.args[0])
    return [job.args[0] for job in jobs]


def _words(seed: str, count: int = 260) -> list[str]:
    """Text of its own for each run: rspamd's storage (in Redis) outlives the test database."""
    rnd = random.Random(seed)  # noqa: S311 - test text, not a secret
    stems = "invoice prize winner claim offer account verify bonus transfer cheap urgent lottery".split()
    return [f"{rnd.choice(stems)}{rnd.randint(100, 999)}" for _ in range(count)]


def test_a_fetched_gtube_body_is_judged_spam_and_hidden_from_unopened_copies(
    rspamd: str, people: list[User], peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    remote = _receive(peer, PeerMessageFactory(subject="Cheap offer", text=f"Buy now!\n{GTUBE}\n"), people[:4])
    _open_and_fetch(people[0], remote, django_capture_on_commit_callbacks)

    # The fetch queued one check, as a row the worker claims.
    job = _job(remote)
    assert job.state == ContentJobState.PENDING
    with django_capture_on_commit_callbacks(execute=True):
        assert _run_queued(queued) == [job.pk]

    job.refresh_from_db()
    assert job.state == ContentJobState.DONE and job.attempts == 1
    assert job.action == "reject" and job.score is not None and job.score >= job.required_score
    assert "GTUBE" in job.symbols
    reason = f"the content filter scored this {job.score:g} (spam)"
    assert job.decision == reason

    # Judged spam like a verdict: the Spam folder says why, unopened copies are hidden, unfetched.
    remote.refresh_from_db()
    assert remote.spam_verdict == reason
    verdict = SpamVerdict.objects.get(message=remote)
    assert verdict.reason == reason and verdict.hidden == 3
    assert _entry(people[0], remote).folder == Folder.INBOX  # opened before the check: the reader's own
    for reader in people[1:4]:
        entry = _entry(reader, remote)
        assert entry.folder == Folder.SPAM and entry.hidden_from == Folder.INBOX and entry.read

    # GTUBE is rejected on its pattern alone: nothing for the fuzzy storage to learn (see the near-copy test).
    assert not ContentCheck.objects.filter(message=remote, kind=ContentJobKind.FUZZY_ADD).exists()

    # A domain admin's overturn puts every hidden copy back, as for any verdict.
    assert overturn_verdict(verdict_id=verdict.pk, by=None) == 3
    assert {_entry(reader, remote).folder for reader in people[1:4]} == {Folder.INBOX}


def test_a_message_judged_spam_is_recognized_in_a_near_copy_and_reports_teach_rspamd(
    rspamd: str, people: list[User], peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    words = _words(uuid.uuid4().hex)
    original = " ".join(words)
    words[7], words[120], words[200] = "changed", "words", "here"
    near_copy = " ".join(words)

    first = _receive(peer, PeerMessageFactory(subject="Your account", text=original), people)
    _open_and_fetch(people[0], first, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        _run_queued(queued)
    before = _job(first)
    assert before.state == ContentJobState.DONE and "PUSHMAIL_FUZZY_SPAM" not in before.symbols

    # Another sender and subject: not one campaign with the first before a fetch (reputation.campaigns),
    # so its copies are not hidden by the readers' verdict on the first and it is fetched and checked.
    second_message = PeerMessageFactory(sender="dave@peer.test", subject="Statement of June", text=near_copy)
    second = _receive(peer, second_message, people)
    baseline = _check_before_fetch(second, second_message)
    assert "PUSHMAIL_FUZZY_SPAM" not in baseline.symbols

    # Three readers report the first message: a verdict. Each report teaches Bayes (once per
    # message), and the verdict adds the body to the fuzzy storage.
    for reader in people[:3]:
        with django_capture_on_commit_callbacks(execute=True):
            assert api_as(reader).post(f"/api/v1/inbox/{_entry(reader, first).pk}/spam/").status_code == 200
    assert SpamVerdict.objects.filter(message=first).exists()
    with django_capture_on_commit_callbacks(execute=True):
        _run_queued(queued)
    assert _job(first, ContentJobKind.LEARN_SPAM).state == ContentJobState.DONE
    fuzzy = _job(first, ContentJobKind.FUZZY_ADD)
    assert fuzzy.state == ContentJobState.DONE, fuzzy.last_error

    # The fuzzy storage writes its additions every second.
    deadline = time.monotonic() + 10
    while "PUSHMAIL_FUZZY_SPAM" not in _check_before_fetch(second, second_message).symbols:
        assert time.monotonic() < deadline, "the near-copy never matched the fuzzy storage"
        time.sleep(0.3)

    # The near-copy, fetched here, is recognized by its own check job: the fuzzy rule and a higher score.
    _open_and_fetch(people[0], second, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        _run_queued(queued)
    check = _job(second)
    assert "PUSHMAIL_FUZZY_SPAM" in check.symbols
    assert check.score is not None and check.score >= baseline.score + 6
    assert check.action in content_filter.SUSPECT_ACTIONS | content_filter.SPAM_ACTIONS

    # Suspect ("add header") counts as half a report: 2 reports of 8 readers are under 30% alone
    # (see test_spam_reports), and with it they are a verdict.
    if check.action in content_filter.SUSPECT_ACTIONS:
        assert not SpamVerdict.objects.filter(message=second).exists()
        for reader in people[1:8]:
            open_entry(entry=_entry(reader, second))
        for reader in people[:2]:
            api_as(reader).post(f"/api/v1/inbox/{_entry(reader, second).pk}/spam/")
        verdict = SpamVerdict.objects.get(message=second)
        assert verdict.reason == (
            f"2 people at alpha.test reported this, and the content filter scored it {check.score:g} (add header)"
        )

    # "Not spam" teaches ham, once.
    with django_capture_on_commit_callbacks(execute=True):
        api_as(people[5]).post(f"/api/v1/inbox/{_entry(people[5], first).pk}/not-spam/")
    _run_queued(queued)
    assert _job(first, ContentJobKind.LEARN_HAM).state == ContentJobState.DONE

    # A domain admin overturns the first verdict: its hashes leave the fuzzy storage, and the
    # near-copy no longer matches.
    with django_capture_on_commit_callbacks(execute=True):
        overturn_verdict(verdict_id=SpamVerdict.objects.get(message=first).pk, by=None)
    _run_queued(queued)
    assert _job(first, ContentJobKind.FUZZY_DEL).state == ContentJobState.DONE
    deadline = time.monotonic() + 10
    while "PUSHMAIL_FUZZY_SPAM" in _check_before_fetch(second, second_message).symbols:
        assert time.monotonic() < deadline, "the overturned message stayed in the fuzzy storage"
        time.sleep(0.3)


def _check_before_fetch(remote: RemoteMessage, message: PeerMessage) -> content_filter.CheckResult:
    """What the project's client gets from rspamd for this message's body, without fetching it here."""
    as_fetched = RemoteMessage.objects.get(pk=remote.pk)
    as_fetched.content = message.content()
    return content_filter.check(content_filter.render(as_fetched), envelope=content_filter.envelope(as_fetched))


def test_a_down_rspamd_leaves_the_check_retrying_and_nothing_is_lost(
    rspamd: str,
    people: list[User],
    peer: FakePeer,
    queued: list[Queued],
    settings: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    remote = _receive(peer, PeerMessageFactory(text=f"Act now\n{GTUBE}\n"), people[:3])
    settings.RSPAMD_URL = "http://127.0.0.1:9"  # nothing listens there: rspamd is down
    _open_and_fetch(people[0], remote, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        _run_queued(queued)

    job = _job(remote)
    assert job.state == ContentJobState.RETRYING and job.attempts == 1
    assert "did not answer" in job.last_error
    assert job.next_attempt_at is not None
    # The next attempt is queued with the backoff as countdown, after commit.
    wakes = [q for q in queued if q.name == "reputation.run_content_job"]
    assert [(q.args, q.countdown is not None and q.countdown > 0) for q in wakes] == [((job.pk,), True)]
    broker_lost(queued)
    assert _entry(people[1], remote).folder == Folder.INBOX  # nothing decided on no answer

    # rspamd is back; the broker lost the wake-up. The sweep finds the overdue row.
    settings.RSPAMD_URL = rspamd
    ContentCheck.objects.filter(pk=job.pk).update(next_attempt_at=content_filter.timezone.now() - _minutes(5))
    with django_capture_on_commit_callbacks(execute=True):
        assert content_filter.requeue_due() == 1
    with django_capture_on_commit_callbacks(execute=True):
        _run_queued(queued)
    job.refresh_from_db()
    assert job.state == ContentJobState.DONE and job.attempts == 2 and job.action == "reject"
    assert _entry(people[1], remote).folder == Folder.SPAM


def test_a_worker_killed_mid_check_leaves_the_row_due_again(
    rspamd: str, people: list[User], peer: FakePeer, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    remote = _receive(peer, PeerMessageFactory(), people[:2])
    _open_and_fetch(people[0], remote, django_capture_on_commit_callbacks)
    job = _job(remote)
    assert content_filter._claim(job.pk) is not None  # a worker took it, then died
    assert content_filter._claim(job.pk) is None  # nobody else takes it while the claim holds
    assert content_filter.requeue_due() == 0
    ContentCheck.objects.filter(pk=job.pk).update(next_attempt_at=content_filter.timezone.now() - _minutes(5))
    broker_lost(queued)  # its task had started (and taken its queued mark) before the worker died
    with django_capture_on_commit_callbacks(execute=True):
        assert content_filter.requeue_due() == 1
    _run_queued(queued)
    job.refresh_from_db()
    assert job.state == ContentJobState.DONE and job.score is not None and not job.decision


def test_without_rspamd_nothing_is_queued_and_reports_still_judge(
    people: list[User], peer: FakePeer, queued: list[Queued], settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.RSPAMD_URL = ""
    remote = _receive(peer, PeerMessageFactory(text=f"{GTUBE}\n"), people[:5])
    _open_and_fetch(people[0], remote, django_capture_on_commit_callbacks)
    for reader in people[:2]:
        with django_capture_on_commit_callbacks(execute=True):
            response = api_as(reader).post(f"/api/v1/inbox/{_entry(reader, remote).pk}/spam/")
        assert response.status_code == 200
    assert not ContentCheck.objects.exists()
    # No content check or lesson is queued (the verdict's signed report to the origin is, as always).
    assert not [q for q in queued if q.name.startswith("reputation.") and "content" in q.name]
    assert content_filter.requeue_due() == 0
    # Two reports of the two local users who read or reported it: the readers' verdict, as without rspamd.
    assert SpamVerdict.objects.get(message=remote).reason == "2 people at alpha.test reported this"
    assert _entry(people[4], remote).folder == Folder.SPAM


def test_the_admin_lists_and_filters_content_checks(
    local_domain: Domain, people: list[User], peer: FakePeer, queued: list[Queued]
) -> None:
    remote = _receive(peer, PeerMessageFactory(subject="Lottery"), people[:1])
    ContentCheck.objects.create(
        message=remote,
        state=ContentJobState.DONE,
        score=16.5,
        required_score=15.0,
        action="reject",
        symbols={"GTUBE": 0.0, "PUSHMAIL_FUZZY_SPAM": 12.0, "MIME_GOOD": -0.1},
        decision="the content filter scored this 16.5 (spam)",
    )
    create_mailbox(address=f"admin@{local_domain.name}", password="admin passphrase 123", is_staff=True)  # noqa: S106
    client = Client()
    client.force_login(User.objects.get(email=f"admin@{local_domain.name}"))
    page = client.get("/admin/reputation/contentcheck/", {"kind__exact": "check", "action__exact": "reject"})
    assert page.status_code == 200
    html = page.content.decode()
    assert "16.5" in html and "PUSHMAIL_FUZZY_SPAM +12" in html and "the content filter scored this 16.5" in html
    elsewhere = client.get("/admin/reputation/contentcheck/", {"kind__exact": "learn_ham"}).content.decode()
    assert "16.5" not in elsewhere


def _minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


def test_a_suspect_score_and_the_readers_reports_reach_the_same_verdict_as_any_other(
    people: list[User], peer: FakePeer, settings: Any
) -> None:
    """The content filter's verdicts are taken by the one verdict service (reputation.verdicts): the
    counts, the hidden copies, and the signed report to the origin, as for the readers' own verdict.
    No rspamd needed: its answer is the row a check leaves."""
    away = [MailboxFactory(domain=people[0].domain, local_part=f"away{n}") for n in range(3)]
    remote = _receive(peer, PeerMessageFactory(), people + away)
    open_entry(entry=_entry(people[0], remote))
    fetch_body(remote.pk)
    for reader in people:
        open_entry(entry=_entry(reader, remote))
    for reader in people[:2]:  # 2 of 8 readers: under the ratio, no verdict of their own
        assert api_as(reader).post(f"/api/v1/inbox/{_entry(reader, remote).pk}/spam/").json()["judged_spam"] is False
    ContentCheck.objects.create(
        message=remote, kind=ContentJobKind.CHECK, state=ContentJobState.DONE, score=6.5, action="add header"
    )

    reason = content_filter.reconsider(remote_id=remote.pk)

    assert reason == "2 people at alpha.test reported this, and the content filter scored it 6.5 (add header)"
    verdict = SpamVerdict.objects.get(message=remote)
    assert (verdict.reports, verdict.readers, verdict.hidden) == (2, 8, 3)
    assert verdict.weight == pytest.approx(2 + settings.RSPAMD_SUSPECT_WEIGHT)
    assert {_entry(reader, remote).folder for reader in away} == {Folder.SPAM}
    # The origin is told, as of every verdict.
    feedback = FeedbackReport.objects.get(message=remote)
    assert (feedback.verdict, feedback.reports) == (FeedbackVerdict.SPAM, 2)
