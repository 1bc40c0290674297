"""Abuse reports across two real instances: alpha sends, beta's users report spam, beta's admin exports
an ARF report, and the signatures in it verify with the key alpha publishes, using only `cryptography`
(the verifier in tests/unit/test_abuse_report.py, written from docs/protocol.md Appendix C)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
import requests

from tests.unit.test_abuse_report import parse_report, verify_report
from tools.cluster import Instance

from .conftest import PASSWORD, Api, Cluster, mailboxes, shell_json, sql, start_cluster, unique, wait_for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = start_cluster(
        tmp_path_factory.mktemp("abuse"),
        {"arf_alpha": ["alpha.test"], "arf_beta": ["beta.test"]},
        env={"arf_beta": {"PUSHMAIL_SPAM_REPORTS": "2"}},
    )
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def alpha(cluster: Cluster) -> Instance:
    return cluster["arf_alpha"]


@pytest.fixture(scope="module")
def beta(cluster: Cluster) -> Instance:
    return cluster["arf_beta"]


def published_keys(inst: Instance) -> dict[str, str]:
    """Key id -> public key, from the instance's discovery document, as any outsider reads it."""
    document = requests.get(f"{inst.base_url}/.well-known/pushmail", timeout=30).json()
    return {key["id"]: key["public_key"] for key in document["keys"]}


def admin_session(inst: Instance) -> requests.Session:
    """A superuser of the instance signed in, as a browser."""
    address = f"root-{unique()}@{inst.domains[0]}"
    shell_json(
        inst,
        "from accounts.models import User\nfrom accounts.services import create_mailbox\n"
        f"u = create_mailbox(address={address!r}, password={PASSWORD!r}, is_staff=True)\n"
        "User.objects.filter(pk=u.pk).update(is_superuser=True)\nprint('{}')\n",
    )
    session = requests.Session()
    page = session.get(f"{inst.base_url}/accounts/login/", timeout=30)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token, page.text[:500]
    response = session.post(
        f"{inst.base_url}/accounts/login/",
        data={"csrfmiddlewaretoken": token.group(1), "login": address, "password": PASSWORD},
        headers={"Referer": f"{inst.base_url}/accounts/login/"},
        timeout=30,
    )
    assert response.status_code == 200 and "/accounts/login/" not in response.url, response.text[:500]
    return session


def admin_action(session: requests.Session, inst: Instance, changelist: str, action: str, pk: int) -> bytes:
    url = f"{inst.base_url}/admin/{changelist}/"
    page = session.get(url, timeout=30)
    assert page.status_code == 200, page.text[:500]
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token
    response = session.post(
        url,
        data={"csrfmiddlewaretoken": token.group(1), "action": action, "_selected_action": [str(pk)]},
        headers={"Referer": url},
        timeout=60,
    )
    assert response.status_code == 200, response.text[:1000]
    assert response.headers["Content-Type"] == "message/rfc822"
    assert response.headers["Content-Disposition"].startswith('attachment; filename="abuse-report-alpha.test')
    return response.content


def send(sender: Api, to: list[str], subject: str) -> dict:
    message = sender.send(to=to, subject=subject, text=f"Buy now! {subject}")
    wait_for(f"{subject} notified", lambda: sender.delivery(message["id"], "beta.test")["state"] == "notified")
    return message


def kept(beta: Instance, subject_token: str) -> list[tuple]:
    # The kept body holds the subject: count the signed requests whose body names it.
    return [
        row
        for row in sql(beta, "SELECT kind, body FROM federation_signedrequest")
        if subject_token.encode() in bytes(row[1])
    ]


def test_beta_exports_an_arf_report_that_verifies_with_alphas_published_key(alpha: Instance, beta: Instance) -> None:
    ann, dan = mailboxes(alpha, 2, prefix="spammer")
    bob, cat = mailboxes(beta, 2, prefix="reader")
    spam_subject, other_subject, nobody_subject = unique("pills-"), unique("loans-"), unique("lost-")

    spam = send(ann, [bob.address, cat.address], spam_subject)
    send(dan, [bob.address], other_subject)
    nobody = ann.send(to=[f"nobody-{unique()}@beta.test"], subject=nobody_subject, text="no reader")
    wait_for("the answer to it", lambda: ann.delivery(nobody["id"], "beta.test")["state"] == "notified")

    # Beta kept the two notifications that reached its users, and not the one it refused.
    wait_for("beta keeps the notifications", lambda: kept(beta, spam_subject) and kept(beta, other_subject))
    assert kept(beta, nobody_subject) == []

    # Two readers report the first message: beta judges it spam; ann then withdraws it.
    for reader in (bob, cat):
        entry = reader.entry_with_subject(spam_subject)
        reported = reader.session.post(reader.url(f"inbox/{entry['id']}/spam/"), timeout=30)
        assert reported.status_code in (200, 201), reported.text
    [(verdict_id,)] = wait_for(
        "the spam verdict",
        lambda: sql(
            beta,
            "SELECT v.id FROM reputation_spamverdict v JOIN mailbox_remotemessage m ON m.id = v.message_id "
            f"WHERE m.subject = '{spam_subject}'",
        ),
    )
    ann.withdraw(spam["id"])
    wait_for("beta keeps the withdrawal", lambda: len(kept(beta, spam["id"])) == 2)

    admin = admin_session(beta)
    published = published_keys(alpha)

    # The verdict's report: its notification and its withdrawal, signed by alpha.
    verdict_report = admin_action(admin, beta, "reputation/spamverdict", "export_verdict_abuse_report", verdict_id)
    report, feedback, original = parse_report(verdict_report)
    assert feedback["Feedback-Type"] == "abuse" and feedback["Version"] == "1"
    assert feedback.get_all("Reported-Domain") == ["alpha.test"]
    assert feedback["Original-Mail-From"] == f"<{ann.address}>"
    assert feedback["Source-IP"] == "127.0.0.1" and feedback["Arrival-Date"]
    assert original["Subject"] == spam_subject and original["From"] == ann.address
    seen = verify_report(verdict_report, published)
    assert sorted(s.target for s in seen) == ["/federation/v1/notifications", "/federation/v1/withdrawals"]
    notification = next(json.loads(s.body) for s in seen if s.target.endswith("notifications"))
    assert notification["id"] == spam["id"] and notification["subject"] == spam_subject

    # The origin's report: every kept notification of alpha.test, both senders.
    [(any_row,)] = sql(beta, "SELECT min(id) FROM federation_signedrequest WHERE origin_domain = 'alpha.test'")
    origin_report = admin_action(admin, beta, "federation/signedrequest", "export_origins", any_row)
    seen = verify_report(origin_report, published)
    subjects = {json.loads(s.body).get("subject") for s in seen}
    assert {spam_subject, other_subject} <= subjects and nobody_subject not in subjects
    assert {json.loads(s.body)["sender"] for s in seen} >= {ann.address, dan.address}
    assert "signatures verify with those keys" in report.get_body(("plain",)).get_content()
