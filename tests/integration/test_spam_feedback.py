"""Spam feedback across two real instances (docs/protocol.md §5.8).

alpha.test sends to beta.test users; beta.test's readers report it; beta.test's verdict reaches
alpha.test as a signed report; alpha.test records the complaint and, past its threshold, pauses the
sender until a domain admin lifts the pause; an overturn on beta.test takes the complaint back.

beta.test judges by the count of reports only (three), and alpha.test pauses a sender at four
complaints a day, so the first reported message is recorded without a pause and the second pauses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests

from .conftest import Api, Cluster, mailboxes, shell_json, sql, start_cluster, unique, wait_for

ALPHA, BETA = "alpha.test", "beta.test"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = start_cluster(
        tmp_path_factory.mktemp("feedback"),
        {"fb_alpha": [ALPHA], "fb_beta": [BETA]},
        env={"fb_alpha": {"PUSHMAIL_COMPLAINTS_PER_DAY": "4"}, "fb_beta": {"PUSHMAIL_SPAM_RATIO": "2"}},
    )
    yield cluster
    cluster.stop()


def _send(sender: Api, to: list[Api], subject: str) -> str:
    return sender.send(to=[r.address for r in to], subject=subject, text="Buy now")["id"]


def _accepted_at_beta(sender: Api, message_id: str) -> None:
    wait_for(
        f"beta.test to accept {message_id}",
        lambda: sender.delivery(message_id, BETA)["state"] == "notified",
    )


def _report_spam(readers: list[Api], subject: str) -> None:
    for reader in readers:
        entry = reader.entry_with_subject(subject)
        response = reader.session.post(reader.url(f"inbox/{entry['id']}/spam/"), timeout=30)
        assert response.status_code == 200, response.text


def _complaint(cluster: Cluster, message_id: str) -> tuple[int, bool] | None:
    """(weight, retracted) of beta.test's complaint about the message, as alpha.test recorded it."""
    rows = sql(
        cluster["fb_alpha"],
        "SELECT weight, retracted_at IS NOT NULL FROM outbox_complaint "
        f"WHERE domain = 'beta.test' AND REPLACE(CAST(message_id AS TEXT), '-', '') = '{message_id.replace('-', '')}'",
    )
    return (rows[0][0], bool(rows[0][1])) if rows else None


def _try_send(sender: Api, to: Api, subject: str) -> requests.Response:
    return sender.session.post(
        sender.url("messages/"), json={"to": [to.address], "subject": subject, "text": "hello"}, timeout=30
    )


def test_beta_reports_its_verdicts_and_alpha_pauses_the_sender_until_an_admin_lifts_it(cluster: Cluster) -> None:
    alpha, beta = cluster["fb_alpha"], cluster["fb_beta"]
    [ann] = mailboxes(alpha, 1, prefix="ann")
    readers = mailboxes(beta, 3, prefix="reader")

    # The first run: reported by all three readers, judged spam at beta, one complaint at alpha.
    first = unique("Offer ")
    first_id = _send(ann, readers, first)
    _accepted_at_beta(ann, first_id)
    _report_spam(readers, first)
    assert wait_for("alpha to record beta's complaint", lambda: _complaint(cluster, first_id)) == (3, False)
    sent = "SELECT verdict, state, answer FROM reputation_feedbackreport"
    assert wait_for("beta to mark its report sent", lambda: sql(beta, sent)) == [("spam", "sent", "recorded")]
    assert _try_send(ann, readers[0], unique("Still allowed ")).status_code == 201  # 3 complaints: under 4 a day

    # The second run passes the threshold: ann is paused, and told why.
    second = unique("Offer ")
    second_id = _send(ann, readers, second)
    _accepted_at_beta(ann, second_id)
    _report_spam(readers, second)
    assert wait_for("alpha to record the second complaint", lambda: _complaint(cluster, second_id)) == (3, False)

    refused = _try_send(ann, readers[0], "Again")  # the complaint that paused ann is recorded by now
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"] == "sending_paused"
    assert "6 spam complaints about your mail in the last 24 hours" in refused.json()["detail"]
    assert ann.entry_with_subject("Sending from your address is paused")["state"] == "notice"

    # alpha's domain admin lifts the pause (the admin action's service): ann may send again.
    lifted = shell_json(
        alpha,
        "import json\n"
        "from accounts.models import User\n"
        "from accounts.services import create_mailbox\n"
        "from outbox.complaints import lift_pause\n"
        f"admin = create_mailbox(address='admin-{unique()}@alpha.test', password='x-correct-horse', is_staff=True)\n"
        f"print(json.dumps(lift_pause(user=User.objects.get(email='{ann.address}'), by=admin)))\n",
    )
    assert lifted is True
    assert _try_send(ann, readers[0], unique("After the lift ")).status_code == 201

    # beta's admin overturns the second verdict: alpha takes that complaint back.
    overturned = shell_json(
        beta,
        "import json\n"
        "from reputation.models import SpamVerdict\n"
        "from reputation.spam import overturn_verdict\n"
        f"verdict = SpamVerdict.objects.get(message__global_id='{second_id}')\n"
        "overturn_verdict(verdict_id=verdict.pk, by=None)\n"
        "verdict.refresh_from_db()\n"
        "print(json.dumps(verdict.overturned_at is not None))\n",
    )
    assert overturned is True
    assert wait_for("alpha to retract the complaint", lambda: _complaint(cluster, second_id) == (3, True))
    assert _complaint(cluster, first_id) == (3, False)


def test_the_report_endpoint_refuses_unsigned_replayed_and_non_recipient_reports(cluster: Cluster) -> None:
    alpha, beta = cluster["fb_alpha"], cluster["fb_beta"]
    [sender, local_reader] = mailboxes(alpha, 2, prefix="s")
    [reader] = mailboxes(beta, 1, prefix="r")
    url = f"{alpha.base_url}/federation/v1/reports"
    local_only = sender.send(to=[local_reader.address], subject=unique("Local "), text="hi")["id"]
    to_beta = _send(sender, [reader], unique("Remote "))
    _accepted_at_beta(sender, to_beta)

    def signed_by_beta(message_id: str) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(
            {
                "type": "report",
                "version": 1,
                "id": message_id,
                "verdict": "spam",
                "reports": 1,
                "reported_at": "2026-01-01T00:00:00Z",
            }
        ).encode()
        headers = shell_json(
            beta,
            "import json\n"
            "from federation.signatures import sign_as\n"
            f"print(json.dumps(sign_as('beta.test', method='POST', url={url!r}, "
            f"headers={{'Accept': 'application/json', 'Content-Type': 'application/json'}}, body={body!r})))\n",
        )
        return body, headers

    unsigned = requests.post(url, data=b"{}", headers={"Content-Type": "application/json"}, timeout=30)
    assert (unsigned.status_code, unsigned.json()["error"]) == (401, "signature_missing")

    body, headers = signed_by_beta(local_only)
    never = requests.post(url, data=body, headers=headers, timeout=30)
    assert (never.status_code, never.json()["error"]) == (403, "not_a_recipient")

    body, headers = signed_by_beta(to_beta)
    first = requests.post(url, data=body, headers=headers, timeout=30)
    replay = requests.post(url, data=body, headers=headers, timeout=30)
    assert first.status_code == 200 and first.json()["status"] == "recorded"
    assert (replay.status_code, replay.json()["error"]) == (401, "replayed")
    body, headers = signed_by_beta(to_beta)  # the same report, signed anew
    again = requests.post(url, data=body, headers=headers, timeout=30)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert _complaint(cluster, local_only) is None
    assert _complaint(cluster, to_beta) == (1, False)
