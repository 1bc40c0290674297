"""Filters and the vacation reply across two real instances: a filter files and forwards mail
notified by another instance as it arrives (with its attachments), and the vacation reply reaches
the sender once."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator

import pytest

from tools.cluster import Instance

from .conftest import Cluster, mailboxes, sql, start_cluster, unique, wait_for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = start_cluster(
        tmp_path_factory.mktemp("mail-settings"), {"it_set_alpha": ["alpha.test"], "it_set_beta": ["beta.test"]}
    )
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def alpha(cluster: Cluster) -> Instance:
    return cluster["it_set_alpha"]


@pytest.fixture(scope="module")
def beta(cluster: Cluster) -> Instance:
    return cluster["it_set_beta"]


def _folders(inst: Instance, owner: str, subject: str) -> list[tuple]:
    return sql(
        inst,
        "SELECT e.folder, e.read FROM mailbox_inboxentry e JOIN accounts_user u ON u.id = e.owner_id "
        f"WHERE u.email = '{owner}' AND e.subject = '{subject}'",
    )


def test_a_filter_files_and_forwards_mail_from_another_instance(alpha: Instance, beta: Instance) -> None:
    [ann] = mailboxes(alpha, 1, prefix="ann")
    bob, bea = mailboxes(beta, 2, prefix="bob")
    beta.shell(
        "from accounts.models import User\n"
        "from mailsettings.services import FilterInput, create_filter\n"
        f"user = User.objects.get(email={bob.address!r})\n"
        f"create_filter(user=user, data=FilterInput(from_contains={ann.address!r}, move_to='archive', "
        f"mark_read=True, forward_to={bea.address!r}))\n"
    )
    subject = f"Minutes {unique()}"
    ann.send(to=[bob.address], subject=subject, text="Decisions: ship on Friday.")

    assert wait_for("the message filed in bob's Archive", lambda: _folders(beta, bob.address, subject)) == [
        ("archive", True)
    ]
    # The forward needed the body: it was pulled from alpha, then sent on to bea, marked as forwarded.
    forwarded = bea.entry_with_subject(f"Fwd: {subject}")
    opened = bea.read_until(forwarded["id"], "fetched")
    assert "Decisions: ship on Friday." in opened["body"]["text"]
    assert sql(beta, f"SELECT auto_submitted FROM outbox_message WHERE subject = 'Fwd: {subject}'") == [
        ("auto-forwarded",)
    ]


def test_a_forward_carries_the_attachment_fetched_from_the_sender_across_instances(
    alpha: Instance, beta: Instance
) -> None:
    ann, cid = mailboxes(alpha, 2, prefix="ann")
    [bob] = mailboxes(beta, 1, prefix="bob")
    beta.shell(
        "from accounts.models import User\n"
        "from mailsettings.services import FilterInput, create_filter\n"
        f"user = User.objects.get(email={bob.address!r})\n"
        f"create_filter(user=user, data=FilterInput(from_contains={ann.address!r}, forward_to={cid.address!r}))\n"
    )
    plan = b"%PDF-1.7\n" + os.urandom(50_000)
    subject = f"Plan {unique()}"
    sent = ann.session.post(
        ann.url("messages/"),
        json={
            "to": [bob.address],
            "subject": subject,
            "text": "The plan is attached.",
            "attachments": [
                {"name": "plan.pdf", "type": "application/pdf", "content": base64.b64encode(plan).decode()}
            ],
        },
        timeout=60,
    )
    assert sent.status_code == 201, sent.text

    # Nobody opened it on beta: the forward pulled the body and the file from alpha, then sent both
    # back to cid on alpha, who fetches them from beta like any message.
    forwarded = cid.entry_with_subject(f"Fwd: {subject}", timeout=60)
    opened = cid.read_until(forwarded["id"], "fetched")
    assert "The plan is attached." in opened["body"]["text"]
    assert "Not attached" not in opened["body"]["text"]
    assert [(a["name"], a["size"]) for a in opened["attachments"]] == [("plan.pdf", len(plan))]

    def downloaded() -> bytes | None:
        response = cid.session.get(cid.url(f"inbox/{forwarded['id']}/attachments/0/"), timeout=60)
        return response.content if response.status_code == 200 else None

    assert wait_for("cid's download of the forwarded file", downloaded, timeout=60) == plan


def test_the_vacation_reply_reaches_the_sender_on_another_instance_once(alpha: Instance, beta: Instance) -> None:
    [ann] = mailboxes(alpha, 1, prefix="ann")
    [bob] = mailboxes(beta, 1, prefix="bob")
    beta.shell(
        "from accounts.models import User\n"
        "from mailsettings.services import save_vacation\n"
        f"user = User.objects.get(email={bob.address!r})\n"
        "save_vacation(user=user, enabled=True, subject='Away', text='Back on Monday.', starts_on=None, ends_on=None)\n"
    )
    first, second = f"Question {unique()}", f"Follow-up {unique()}"
    ann.send(to=[bob.address], subject=first, text="Can you check this?")
    reply = ann.entry_with_subject("Away")
    assert reply["sender"] == bob.address
    assert "Back on Monday." in ann.read_until(reply["id"], "fetched")["body"]["text"]

    ann.send(to=[bob.address], subject=second, text="Any news?")
    bob.entry_with_subject(second)
    # Whatever bob's instance owed for the second message has been settled by now: no second reply.
    wait_for(
        "bob's owed replies to be settled",
        lambda: sql(beta, "SELECT count(*) FROM mailsettings_vacationreply WHERE state = 'waiting'") == [(0,)],
    )
    assert [e["subject"] for e in ann.inbox()].count("Away") == 1
    assert sql(beta, "SELECT auto_submitted FROM outbox_message WHERE subject = 'Away'") == [("auto-replied",)]
