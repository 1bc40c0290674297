"""What one notification alone costs the receiving instance: its SQL statements, and the flag that spares
the filters question (docs/benchmarks.md, "Where one notification's milliseconds go")."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from accounts.models import User
from mailbox.models import Folder, InboxEntry
from mailsettings import services, vacation
from mailsettings.filters import FilterInput
from mailsettings.models import VacationReply
from reputation.models import CampaignMessage, SenderReputation
from tests.conftest import FakePeer, FederationClient
from tests.factories import PeerMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]


def _statements(federation: FederationClient, peer: FakePeer, **kwargs: Any) -> list[str]:
    """The SQL of one accepted notification to alice. Savepoints aside (in production they are its
    transaction's BEGIN and COMMIT, which every request has), and the shared cache's (nonce, rate) when
    the tests keep it in the database rather than in Redis."""
    with CaptureQueriesContext(connection) as queries:
        response = federation.notify(peer, PeerMessageFactory(**kwargs).payload())
    assert response.status_code == 200, response.content
    assert [r["status"] for r in response.json()["results"]] == ["accepted"]
    return [
        q["sql"]
        for q in queries.captured_queries
        if "SAVEPOINT" not in q["sql"].upper() and "pushmail_cache" not in q["sql"]
    ]


def _entry(global_id: object) -> InboxEntry:
    return InboxEntry.objects.get(remote__global_id=global_id)


def test_a_single_notification_runs_five_statements(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    _statements(federation, peer)  # warm the per-process caches (hosted domains, origin policy); opens the campaign

    statements = _statements(federation, peer)

    # The mailbox lookup, the message, its campaign (and, read back by the same statement, the
    # campaign's verdict and the sender's reputation), the entry, the kept evidence. Nothing for
    # the filters and vacation reply: alice has none, and her row said so.
    shown = "\n".join(s[:120] for s in statements)
    assert len(statements) == 5, shown
    assert sum(1 for s in statements if s.startswith("INSERT")) == 4, shown
    assert CampaignMessage.objects.count() == 2 and CampaignMessage.objects.values("campaign").distinct().count() == 1


def test_the_sender_reputation_read_with_the_campaign_still_files_a_reported_sender_to_spam(
    federation: FederationClient, peer: FakePeer, alice: User
) -> None:
    _statements(federation, peer)  # opens the campaign: the next one joins it
    SenderReputation.objects.create(address="carol@peer.test", domain="peer.test", spam_filed=True)
    message = PeerMessageFactory()
    assert federation.notify(peer, message.payload()).status_code == 200
    entry = _entry(message.global_id)
    assert entry.folder == Folder.SPAM
    assert entry.remote.spam_verdict == "mail from carol@peer.test is often reported here"

    SenderReputation.objects.filter(address="carol@peer.test").update(allowed=True)
    message = PeerMessageFactory()
    assert federation.notify(peer, message.payload()).status_code == 200
    assert _entry(message.global_id).folder == Folder.INBOX


def test_filters_and_the_vacation_reply_act_from_the_first_notification_after_they_change(
    federation: FederationClient, peer: FakePeer, alice: User
) -> None:
    def notified(**kwargs: Any) -> InboxEntry:
        message = PeerMessageFactory(**kwargs)
        assert federation.notify(peer, message.payload()).status_code == 200
        return _entry(message.global_id)

    assert notified(subject="Before any filter").folder == Folder.INBOX
    rule = services.create_filter(user=alice, data=FilterInput(subject_contains="invoice", move_to="archive"))
    assert notified(subject="Invoice 1").folder == Folder.ARCHIVE

    services.delete_filter(user=alice, filter_id=rule.pk)
    statements = _statements(federation, peer, subject="Invoice 2")
    assert len(statements) == 5  # no filters left, no vacation: no question asked
    assert InboxEntry.objects.get(subject="Invoice 2").folder == Folder.INBOX

    vacation.save_vacation(user=alice, enabled=True, subject="", text="Away.", starts_on=None, ends_on=None)
    notified(sender="dave@peer.test", subject="Lunch")
    assert list(VacationReply.objects.values_list("correspondent", flat=True)) == ["dave@peer.test"]

    vacation.save_vacation(user=alice, enabled=False, subject="", text="Away.", starts_on=None, ends_on=None)
    notified(sender="erin@peer.test", subject="Lunch")
    assert VacationReply.objects.count() == 1
    alice.refresh_from_db()
    assert not alice.has_mail_rules


def test_a_peer_gets_the_same_security_headers_and_json_errors_without_the_browser_middleware(
    federation: FederationClient, peer: FakePeer, alice: User, client: Client
) -> None:
    answer = federation.notify(peer, PeerMessageFactory().payload())
    assert answer.status_code == 200
    refused = client.get("/federation/v1/notifications")  # a GET: the JSON 405
    page = client.get("/accounts/login/")  # a browser page, through every middleware
    for response in (answer, refused, page):
        assert response["X-Frame-Options"] == "DENY"
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["Referrer-Policy"] == "same-origin"
        assert "frame-ancestors 'none'" in response["Content-Security-Policy"]
    assert refused.status_code == 405 and refused.json()["error"] == "method_not_allowed"
    assert refused["Content-Length"] == str(len(refused.content))
    missing = client.post("/federation/v1/nothing", b"{}", content_type="application/json")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    # The sign-in page still gets its CSRF cookie and session: the browser middleware runs there.
    assert "csrftoken" in page.cookies
    # A peer's request never gets one.
    assert "csrftoken" not in answer.cookies and "sessionid" not in answer.cookies
