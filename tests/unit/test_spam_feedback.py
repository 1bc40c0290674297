"""Spam feedback to the origin (docs/protocol.md §5.8) and senders paused by complaints.

Origin side: ``POST /federation/v1/reports`` records one complaint per (message, reporting
domain), refuses what it must with a clear 4xx and stores nothing then, never counts a report
twice, and pauses a sender past the thresholds until a domain admin lifts it.

Recipient side: a verdict here (or its overturn) becomes a durable, signed report to the origin,
retried like a withdrawal, that never names who reported.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings as django_settings
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import Domain, User
from federation import payloads
from mailbox.models import EntryState, InboxEntry, RemoteMessage
from mailbox.services import accept_notification
from outbox import complaints
from outbox.draft_sending import send_draft
from outbox.models import Complaint, Draft, DraftState, Message, Recipient, RecipientStatus, SendingPause
from pushmail_site.states import IllegalTransition, transition
from reputation import feedback
from reputation.models import FeedbackReport, FeedbackState, SpamReport, SpamVerdict
from reputation.spam import overturn_verdict
from reputation.states import FEEDBACK
from tests.conftest import FakePeer, FederationClient, Queued, api_as, broker_lost, json_response
from tests.factories import DomainFactory, MailboxFactory, PeerMessageFactory, SentMessageFactory
from tests.unit.test_protocol_doc import (
    HttpHead,
    _django_request,
    _parse_signature_input,
    b64decode,
    build_signature_base,
    example_blocks,
    field_table,
    flatten,
    golden,
    pinned_clock,  # noqa: F401 - a fixture used below
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]

REPORTS = "/federation/v1/reports"
ROOT = Path(django_settings.BASE_DIR)


# --- helpers ----------------------------------------------------------------------------------------


def sent_to_peer(sender: User, *, recipients: int = 3, domain: str = "peer.test") -> Message:
    """A message from ``sender`` whose recipients at ``domain`` that domain accepted."""
    message = SentMessageFactory(sender=sender, to=[f"r{n}-{uuid.uuid4().hex[:6]}@{domain}" for n in range(recipients)])
    Recipient.objects.filter(message=message, domain=domain).update(status=RecipientStatus.ACCEPTED)
    return message


def report_payload(message_id: object, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "type": "report",
        "version": 1,
        "id": str(message_id),
        "verdict": "spam",
        "reports": 3,
        "reported_at": payloads.format_time(timezone.now()),
    }
    for key, value in overrides.items():
        if value is ...:
            data.pop(key)
        else:
            data[key] = value
    return data


def post_report(
    federation: FederationClient,
    peer: FakePeer | None,
    message_id: object,
    sign: dict[str, Any] | None = None,
    **overrides: Any,
) -> Any:
    return federation.post_json(REPORTS, report_payload(message_id, **overrides), signer=peer, **(sign or {}))


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    data = response.json()
    assert isinstance(data["detail"], str) and data["detail"]
    return data


def nothing_recorded() -> None:
    assert not Complaint.objects.exists()
    assert not SendingPause.objects.exists()


def notices(user: User) -> list[str]:
    return list(InboxEntry.objects.filter(owner=user, state=EntryState.NOTICE).values_list("subject", flat=True))


@pytest.fixture
def admin_of_alpha(local_domain: Domain) -> User:
    return MailboxFactory(domain=local_domain, local_part="postmaster", is_staff=True)


# --- the endpoint: what it records ------------------------------------------------------------------


def test_a_signed_report_records_one_complaint_never_more_than_the_domain_had_readers(
    federation: FederationClient, peer: FakePeer, alice: User
) -> None:
    message = sent_to_peer(alice, recipients=2)

    response = post_report(federation, peer, message.pk, reports=5)

    assert response.status_code == 200, response.content
    assert response.json() == {"id": str(message.pk), "verdict": "spam", "status": "recorded", "complaint": "active"}
    complaint = Complaint.objects.get()
    assert (complaint.message_id, complaint.sender, complaint.domain) == (message.pk, alice, "peer.test")
    assert (complaint.reports, complaint.weight) == (5, 2)  # two accepted recipients there: two complaints at most


def test_the_same_report_sent_again_is_answered_but_never_counts_twice(
    federation: FederationClient, peer: FakePeer, alice: User
) -> None:
    message = sent_to_peer(alice)
    when = payloads.format_time(timezone.now())

    first = post_report(federation, peer, message.pk, reported_at=when)
    again = post_report(federation, peer, message.pk, reported_at=when)  # signed anew: a retry after a lost answer

    assert first.json()["status"] == "recorded"
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert Complaint.objects.count() == 1 and complaints.standing(alice).complaints == 3


def test_a_replayed_request_is_refused_and_counts_nothing(
    federation: FederationClient, peer: FakePeer, alice: User
) -> None:
    message = sent_to_peer(alice)
    body = json.dumps(report_payload(message.pk)).encode()
    headers = peer.sign("POST", REPORTS, body)
    headers.pop("Content-Type")

    first = federation.client.generic("POST", REPORTS, body, content_type="application/json", headers=headers)
    replay = federation.client.generic("POST", REPORTS, body, content_type="application/json", headers=headers)

    assert first.status_code == 200
    assert error_of(replay, 401)["error"] == "replayed"
    assert Complaint.objects.get().weight == 3


def test_an_overturn_retracts_the_complaint_and_an_older_spam_report_arriving_late_is_ignored(
    federation: FederationClient, peer: FakePeer, alice: User
) -> None:
    message = sent_to_peer(alice)
    judged = timezone.now() - timedelta(minutes=5)

    post_report(federation, peer, message.pk, reported_at=payloads.format_time(judged))
    overturned = post_report(federation, peer, message.pk, verdict="overturned")
    late = post_report(federation, peer, message.pk, reported_at=payloads.format_time(judged - timedelta(seconds=1)))

    assert overturned.json()["status"] == "recorded" and overturned.json()["complaint"] == "retracted"
    assert late.json() == {"id": str(message.pk), "verdict": "spam", "status": "superseded", "complaint": "retracted"}
    assert Complaint.objects.get().retracted_at is not None
    assert complaints.standing(alice).complaints == 0


# --- the endpoint: what it refuses, storing nothing ------------------------------------------------


def test_an_unsigned_report_is_401(federation: FederationClient, alice: User) -> None:
    message = sent_to_peer(alice)

    assert error_of(post_report(federation, None, message.pk), 401)["error"] == "signature_missing"
    nothing_recorded()


def test_a_report_signed_with_a_key_the_domain_never_published_is_401(
    federation: FederationClient, peer: FakePeer, alice: User
) -> None:
    message = sent_to_peer(alice)

    response = post_report(federation, peer, message.pk, sign={"private_key": Ed25519PrivateKey.generate()})

    assert error_of(response, 401)["error"] == "signature_invalid"
    nothing_recorded()


def test_a_report_on_a_message_never_sent_from_here_is_404(
    federation: FederationClient, peer: FakePeer, alice: User
) -> None:
    data = error_of(post_report(federation, peer, uuid.uuid4()), 404)

    assert data["error"] == "unknown_message"
    nothing_recorded()


def test_a_report_from_a_domain_with_no_accepted_recipient_is_403(
    federation: FederationClient, peer: FakePeer, other_peer: FakePeer, alice: User
) -> None:
    to_peer = sent_to_peer(alice)
    rejected_at_other = SentMessageFactory(sender=alice, to=["x@other.test"])
    Recipient.objects.filter(message=rejected_at_other).update(
        status=RecipientStatus.REJECTED, reason="unknown mailbox"
    )

    never = error_of(post_report(federation, other_peer, to_peer.pk), 403)
    rejected = error_of(post_report(federation, other_peer, rejected_at_other.pk), 403)

    assert never["error"] == rejected["error"] == "not_a_recipient"
    assert "other.test" in never["detail"]
    nothing_recorded()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"type": "notification"}, "type"),
        ({"version": 2}, "version"),
        ({"id": ...}, "id"),
        ({"id": "not-a-uuid"}, "id"),
        ({"verdict": "ham"}, "verdict"),
        ({"verdict": ...}, "verdict"),
        ({"reports": -1}, "reports"),
        ({"reports": "3"}, "reports"),
        ({"reports": True}, "reports"),
        ({"reported_at": "2026-11-26T10:00:00+01:00"}, "reported_at"),
        ({"reported_at": "2099-01-01T00:00:00Z"}, "reported_at"),
    ],
)
def test_a_malformed_report_is_400_naming_the_field(
    federation: FederationClient, peer: FakePeer, alice: User, overrides: dict[str, Any], field: str
) -> None:
    message = sent_to_peer(alice)

    data = error_of(post_report(federation, peer, message.pk, **overrides), 400)

    assert data["error"] == "invalid_payload" and data["field"] == field
    assert data["detail"].startswith(field)
    nothing_recorded()


def test_a_report_that_is_not_json_is_400(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    data = error_of(federation.send("POST", REPORTS, b'{"type": "report",', signer=peer), 400)

    assert data["error"] == "invalid_payload" and data["field"] == "body"
    nothing_recorded()


# --- pauses ------------------------------------------------------------------------------------------


def test_complaints_past_the_daily_threshold_pause_sending_everywhere_and_tell_sender_and_admin(
    federation: FederationClient,
    peer: FakePeer,
    alice: User,
    admin_of_alpha: User,
    settings: Any,
) -> None:
    settings.PUSHMAIL_COMPLAINTS_PER_DAY = 3
    message = sent_to_peer(alice, recipients=5)
    draft = Draft.objects.create(owner=alice, to="carol@peer.test", subject="Scheduled", text="Later")

    post_report(federation, peer, message.pk, reports=2)
    assert complaints.active_pause(alice) is None  # two complaints: below three a day
    post_report(federation, peer, message.pk, verdict="overturned")
    post_report(federation, peer, message.pk, reports=3)

    pause = complaints.active_pause(alice)
    assert pause is not None and pause.reason == "3 spam complaints about your mail in the last 24 hours"
    assert notices(alice) == ["Sending from your address is paused"]
    assert notices(admin_of_alpha) == ["Sending paused for alice@alpha.test"]

    # The API answers a clear 403 naming why, and nothing is sent.
    before = Message.objects.count()
    response = api_as(alice).post(
        "/api/v1/messages/", {"to": ["bob@peer.test"], "subject": "s", "text": "t"}, format="json"
    )
    assert response.status_code == 403, response.content
    assert response.json()["error"] == "sending_paused"
    assert "paused" in response.json()["detail"] and "spam complaints" in response.json()["detail"]
    assert Message.objects.count() == before

    # The webmail's Send shows it on the form.
    web = Client()
    web.force_login(alice)
    page = web.post(
        reverse("webmail:draft-send", args=[draft.pk]),
        {"to": "bob@peer.test", "cc": "", "bcc": "", "subject": "Hi", "text": "x"},
    )
    assert page.status_code == 400
    assert "is paused since" in page.content.decode()

    # A draft scheduled before the pause is not sent when due: back to Drafts, with a notice.
    Draft.objects.filter(pk=draft.pk).update(state=DraftState.SCHEDULED, send_at=timezone.now() - timedelta(seconds=1))
    assert send_draft(draft.pk) is None
    draft.refresh_from_db()
    assert draft.state == DraftState.DRAFT and Message.objects.count() == before
    assert "Not sent: Hi" in notices(alice)


def test_the_rate_needs_more_than_its_share_of_a_full_window_however_few_the_recipients(
    federation: FederationClient, peer: FakePeer, alice: User, settings: Any
) -> None:
    settings.PUSHMAIL_COMPLAINTS_PER_DAY = 1000  # only the rate rule here
    messages = [sent_to_peer(alice, recipients=1) for _ in range(4)]

    for message in messages[:3]:
        post_report(federation, peer, message.pk, reports=1)
    three = complaints.standing(alice)
    assert (three.complaints, three.recipients) == (3, 4)
    assert complaints.active_pause(alice) is None  # 3 of a window of 1000: 0.3%, not past it

    post_report(federation, peer, messages[3].pk, reports=1)

    pause = complaints.active_pause(alice)
    assert pause is not None and pause.reason.startswith("4 spam complaints over your last 4 recipients")


def test_only_complaints_on_the_last_window_of_recipients_count_for_the_rate(
    federation: FederationClient, peer: FakePeer, alice: User, settings: Any
) -> None:
    settings.PUSHMAIL_COMPLAINTS_PER_DAY = 1000
    settings.PUSHMAIL_COMPLAINT_WINDOW = 10
    settings.PUSHMAIL_COMPLAINT_RATE = 0.15  # two complaints in ten recipients pass it
    old = sent_to_peer(alice, recipients=3)
    Message.objects.filter(pk=old.pk).update(date=timezone.now() - timedelta(days=2))
    post_report(federation, peer, old.pk, reports=1)
    recent = sent_to_peer(alice, recipients=10)

    post_report(federation, peer, recent.pk, reports=1)

    assert complaints.standing(alice).complaints == 1  # the old message is outside the last ten recipients
    assert complaints.active_pause(alice) is None


def test_a_domain_admin_lifts_a_pause_in_the_admin_and_earlier_complaints_are_forgiven(
    federation: FederationClient, peer: FakePeer, alice: User, admin_of_alpha: User, settings: Any
) -> None:
    settings.PUSHMAIL_COMPLAINTS_PER_DAY = 3
    message = sent_to_peer(alice, recipients=5)
    post_report(federation, peer, message.pk, reports=3)
    pause = complaints.active_pause(alice)
    assert pause is not None
    admin = Client()
    admin.force_login(admin_of_alpha)
    changelist = reverse("admin:outbox_sendingpause_changelist")
    assert "alice@alpha.test" in admin.get(changelist + "?state=paused").content.decode()

    response = admin.post(changelist, {"action": "lift_pauses", "_selected_action": [pause.pk]})

    assert response.status_code == 302
    pause.refresh_from_db()
    assert pause.lifted_at is not None and pause.lifted_by == admin_of_alpha
    sent = api_as(alice).post(
        "/api/v1/messages/", {"to": ["bob@peer.test"], "subject": "s", "text": "t"}, format="json"
    )
    assert sent.status_code == 201, sent.content
    # A new complaint after the lift starts the count afresh: one is not three.
    post_report(federation, peer, sent_to_peer(alice).pk, reports=1)
    assert complaints.active_pause(alice) is None


def test_a_domain_admin_sees_and_lifts_only_their_own_domains_pauses(
    alice: User, admin_of_alpha: User, settings: Any
) -> None:
    other = MailboxFactory(local_part="zed")  # another hosted domain
    SendingPause.objects.create(user=alice, reason="test")
    theirs = SendingPause.objects.create(user=other, reason="test")
    admin = Client()
    admin.force_login(admin_of_alpha)
    changelist = reverse("admin:outbox_sendingpause_changelist")

    page = admin.get(changelist).content.decode()
    admin.post(changelist, {"action": "lift_pauses", "_selected_action": [theirs.pk]})

    assert "alice@alpha.test" in page and other.email not in page
    theirs.refresh_from_db()
    assert theirs.lifted_at is None


# --- the recipient side: reports to the origin -------------------------------------------------------


@pytest.fixture
def readers(local_domain: Domain) -> list[User]:
    people = [MailboxFactory(domain=local_domain, local_part=f"reader{n}") for n in range(4)]
    # Established accounts, whose reports count whole (reputation.trust).
    User.objects.filter(pk__in=[u.pk for u in people]).update(date_joined=timezone.now() - timedelta(days=30))
    return people


def judged_spam(peer: FakePeer, readers: list[User]) -> RemoteMessage:
    """A message from peer.test to ``readers``, reported by them one by one until it is judged spam here."""
    message = PeerMessageFactory()
    accept_notification(origin=peer.domain, notification=message.notification([u.email for u in readers]))
    remote = RemoteMessage.objects.get(global_id=message.global_id)
    for user in readers:
        entry = InboxEntry.objects.get(owner=user, remote=remote)
        assert api_as(user).post(f"/api/v1/inbox/{entry.pk}/spam/").status_code == 200
        if SpamVerdict.objects.filter(message=remote).exists():
            return remote
    raise AssertionError("the reports never reached a verdict")


def origin_answers(peer: FakePeer, status: int = 200, data: Any = None) -> None:
    answer = data if data is not None else {"status": "recorded", "complaint": "active"}
    peer.on("POST", REPORTS, lambda call: json_response(status, {"id": call.json()["id"], **answer}))


def test_a_verdict_sends_the_origin_a_signed_report_that_never_names_the_reporters(
    peer: FakePeer, readers: list[User], queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    origin_answers(peer)
    with django_capture_on_commit_callbacks(execute=True):
        remote = judged_spam(peer, readers)
    row = FeedbackReport.objects.get(message=remote)
    reports = SpamReport.objects.filter(message=remote, spam=True).count()
    assert (row.verdict, row.reports, row.state) == ("spam", reports, FeedbackState.PENDING) and reports >= 2
    assert ("reputation.send_feedback", (row.pk,)) in [(q.name, q.args) for q in queued]

    feedback.send_feedback(row.pk)

    [call] = peer.calls_to("POST", REPORTS)
    assert call.json() == {
        "type": "report",
        "version": 1,
        "id": str(remote.global_id),
        "verdict": "spam",
        "reports": reports,
        "reported_at": payloads.format_time(row.reported_at),
    }
    assert re.search(r'keyid="alpha\.test#', call.headers["Signature-Input"])
    assert call.headers["Content-Digest"].startswith("sha-256=:")
    assert not any(user.email.encode() in (call.body or b"") for user in readers)
    row.refresh_from_db()
    assert (row.state, row.answer, row.attempts) == (FeedbackState.SENT, "recorded", 1)
    feedback.send_feedback(row.pk)  # done already: nothing sent again
    assert len(peer.calls_to("POST", REPORTS)) == 1


def test_an_overturn_tells_the_origin_to_take_the_complaint_back_dated_after_the_verdict(
    peer: FakePeer, readers: list[User], admin_of_alpha: User
) -> None:
    origin_answers(peer)
    remote = judged_spam(peer, readers)
    spam = FeedbackReport.objects.get(message=remote)

    overturn_verdict(verdict_id=remote.spam_verdict_row.pk, by=admin_of_alpha)

    overturned = FeedbackReport.objects.get(message=remote, verdict="overturned")
    assert overturned.reported_at > spam.reported_at
    feedback.send_feedback(overturned.pk)
    [call] = peer.calls_to("POST", REPORTS)
    assert call.json()["verdict"] == "overturned"


def test_a_report_is_retried_with_backoff_and_a_permanent_refusal_ends_it(
    peer: FakePeer, readers: list[User], queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    remote = judged_spam(peer, readers)
    row = FeedbackReport.objects.get(message=remote)
    peer.fail("POST", REPORTS, "connection refused")

    with django_capture_on_commit_callbacks(execute=True):
        feedback.send_feedback(row.pk)

    row.refresh_from_db()
    assert row.state == FeedbackState.PENDING and "connection refused" in row.last_error
    assert row.next_attempt_at is not None and row.next_attempt_at > timezone.now()
    assert [q.name for q in queued if q.countdown] == ["reputation.send_feedback"]

    # The sweep finds it once it is overdue, whatever the broker lost.
    FeedbackReport.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now() - timedelta(minutes=1))
    broker_lost(queued)
    with django_capture_on_commit_callbacks(execute=True):
        assert feedback.requeue_due_feedback() == 1
    origin_answers(peer, 404, {"error": "unknown_message", "detail": "no message"})
    feedback.send_feedback(row.pk)

    row.refresh_from_db()
    assert row.state == FeedbackState.FAILED and row.last_error.startswith("HTTP 404")
    assert feedback.requeue_due_feedback() == 0


def test_the_feedback_graph_refuses_undeclared_moves(peer: FakePeer, readers: list[User]) -> None:
    row = FeedbackReport.objects.get(message=judged_spam(peer, readers))
    transition(row, FEEDBACK, FeedbackState.SENT)

    with pytest.raises(IllegalTransition):
        transition(row, FEEDBACK, FeedbackState.FAILED)


def test_the_feedback_graph_is_the_one_in_the_protocol() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text[text.index("### 8.5 ") : text.index("\n---\n", text.index("### 8.5 "))]
    states = re.findall(r"^\| `([a-z_]+)` \|", section, re.M)
    block = re.search(r"```\n(.*?)\n```", section, re.S)
    assert block
    edges = {
        (m["source"], m["target"])
        for m in (
            re.fullmatch(r"(?P<source>[a-z_]+) +--(?P<event>[^-].*?)-*> +(?P<target>[a-z_]+)(?: +\([^()]+\))?", line)
            for line in block.group(1).splitlines()
        )
        if m
    }
    assert states == FEEDBACK.values
    assert len(edges) == len(block.group(1).splitlines())
    assert edges == FEEDBACK.edge_set()


# --- the worked example of §11.7 ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ex() -> dict[str, str]:
    return example_blocks()


def test_the_example_report_is_signed_by_beta_and_verifies_with_raw_ed25519(ex: dict[str, str]) -> None:
    head = HttpHead(ex["report-request"])
    body = ex["report-body"].encode("utf-8")
    assert (head.method, head.path) == ("POST", "/federation/v1/reports")
    assert head.header("Content-Digest") == "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    assert head.header("Content-Length") == str(len(body))
    label, components, _, params = _parse_signature_input(head.header("Signature-Input"))
    assert (label, components) == ("pm", ["@method", "@authority", "@path", "@query", "content-digest"])
    assert params["keyid"] == ex["beta-key-id"] and params["tag"] == "pushmail"
    assert build_signature_base(head) == ex["report-signature-base"]

    signature = b64decode(ex["report-signature"])
    assert head.header("Signature") == f"pm=:{ex['report-signature']}:"
    public = Ed25519PublicKey.from_public_bytes(b64decode(ex["beta-public-key"]))
    public.verify(signature, ex["report-signature-base"].encode("ascii"))
    assert (
        Ed25519PrivateKey.from_private_bytes(b64decode(ex["beta-seed"])).sign(
            ex["report-signature-base"].encode("ascii")
        )
        == signature
    )
    with pytest.raises(InvalidSignature):
        public.verify(signature, ex["report-signature-base"].replace("reports", "reportz").encode("ascii"))


def test_the_example_report_names_the_message_and_the_count_and_nobody(ex: dict[str, str]) -> None:
    report = json.loads(ex["report-body"])
    notification = json.loads(ex["notification-body"])

    assert report["id"] == notification["id"] and report["verdict"] == "spam" and report["reports"] == 3
    assert not any(address in ex["report-body"] for address in notification["recipients"])
    assert golden("report.json") == report
    assert flatten(report) == set(field_table("report"))
    assert flatten(golden("report_response.json")) == set(field_table("report-response"))


def test_the_project_serializes_and_signs_the_example_report_byte_for_byte(ex: dict[str, str]) -> None:
    from federation.signatures import sign

    wire = ex["report-body"].encode()
    parsed = payloads.parse_report(json.loads(wire), latest=timezone.now())
    assert json.dumps(parsed.to_json(), separators=(",", ":")).encode() == wire
    head = HttpHead(ex["report-request"])
    _, _, _, params = _parse_signature_input(head.header("Signature-Input"))
    headers = sign(
        method="POST",
        url=f"https://{head.header('Host')}{head.target}",
        headers={"Accept": "application/json", "Content-Type": "application/json"},
        body=wire,
        key_id=str(params["keyid"]),
        private_key=Ed25519PrivateKey.from_private_bytes(b64decode(ex["beta-seed"])),
        created=datetime.fromtimestamp(int(params["created"]), UTC),
        nonce=str(params["nonce"]),
    )
    assert (headers["Signature-Input"], headers["Signature"]) == (
        head.header("Signature-Input"),
        head.header("Signature"),
    )


def test_the_project_answers_the_example_report_as_documented_and_refuses_its_replay(
    ex: dict[str, str],
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    pinned_clock: Any,  # noqa: F811 - the fixture imported above
) -> None:
    from federation import discovery, views

    settings.ALLOWED_HOSTS = ["mail.alpha.example"]
    notification = json.loads(ex["notification-body"])
    ann = MailboxFactory(domain=DomainFactory(name="alpha.example"), local_part="ann")
    date = datetime(2026, 11, 26, 9, 59, 58, tzinfo=UTC)
    message = Message.objects.create(
        id=uuid.UUID(notification["id"]),
        sender=ann,
        sender_address=ann.email,
        subject=notification["subject"],
        message_id=notification["message_id"],
        date=date,
        size=notification["size"],
        digest=notification["digest"],
        expires_at=date + timedelta(days=30),
    )
    answers = {r["address"]: r for r in golden("notification_response.json")["results"]}
    Recipient.objects.bulk_create(
        Recipient(message=message, address=a, domain="beta.example", kind="to", status=r["status"])
        for a, r in answers.items()
    )
    head = HttpHead(ex["report-request"])
    _, _, _, params = _parse_signature_input(head.header("Signature-Input"))
    beta = discovery.Instance(
        domain="beta.example",
        api_base="https://mail.beta.example/federation/v1/",
        keys={str(params["keyid"]): ex["beta-public-key"]},
    )
    monkeypatch.setattr(discovery, "lookup", lambda domain, refresh=False, budget=0, key_id=None: beta)
    pinned_clock(datetime.fromtimestamp(int(params["created"]), UTC) + timedelta(seconds=30))
    body = ex["report-body"].encode()

    response = views.reports(_django_request(head, body))
    replay = views.reports(_django_request(head, body))

    assert response.status_code == 200, response.content
    assert json.loads(response.content) == golden("report_response.json")
    complaint = Complaint.objects.get()
    assert (complaint.sender, complaint.domain, complaint.reports, complaint.weight) == (ann, "beta.example", 3, 2)
    assert replay.status_code == 401 and json.loads(replay.content)["error"] == "replayed"
    assert Complaint.objects.get().weight == 2
