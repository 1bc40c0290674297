"""Reputation of origins across two real instances.

alpha hosts three sending domains: fresh.test (the new-origin rate), spammy.test (reported until
refused, then lifted) and alpha.test (goes down while beta's users hold its unopened mail). beta
receives, with a low new-origin rate, two reports enough for a decision, "gone" after a few
seconds, and its reputation sweeps every two seconds.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tools.cluster import Instance

from .conftest import Api, Cluster, mailboxes, shell_json, sql, start_cluster, unique, wait_for
from .test_federation import notification_bytes, notifications_url, send_and_wait, signed_post

NEW_ORIGIN_RATE = 5
STANDING_TTL = 10  # reputation.scores.STANDING_TTL: how long a web process may act on a cached standing
GONE_AFTER_HOURS = 0.002  # about seven seconds


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = start_cluster(
        tmp_path_factory.mktemp("reputation"),
        {"it_rep_alpha": ["alpha.test", "spammy.test", "fresh.test"], "it_rep_beta": ["beta.test"]},
        env={
            "it_rep_beta": {
                "PUSHMAIL_NEW_ORIGIN_RATE_PER_MINUTE": str(NEW_ORIGIN_RATE),
                "PUSHMAIL_REPUTATION_MIN_REPORTS": "2",
                "PUSHMAIL_ORIGIN_GONE_AFTER_HOURS": str(GONE_AFTER_HOURS),
                "PUSHMAIL_REPUTATION_SWEEP_SECONDS": "2",
                "PUSHMAIL_REACHABILITY_SWEEP_SECONDS": "2",
            }
        },
    )
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def alpha(cluster: Cluster) -> Instance:
    return cluster["it_rep_alpha"]


@pytest.fixture(scope="module")
def beta(cluster: Cluster) -> Instance:
    return cluster["it_rep_beta"]


def key_of(inst: Instance, domain: str) -> tuple[str, Ed25519PrivateKey]:
    key_id, seed = shell_json(
        inst,
        "import json\nfrom federation.keys import b64, current_key, private_key_of, raw_seed\n"
        f"k = current_key({domain!r})\nprint(json.dumps([k.key_id, b64(raw_seed(private_key_of(k)))]))",
    )
    return key_id, Ed25519PrivateKey.from_private_bytes(base64.b64decode(seed))


def notify(beta: Instance, key: tuple[str, Ed25519PrivateKey], *, sender: str, to: list[str]) -> requests.Response:
    """A signed notification straight to beta, as the sender's domain would send it."""
    body = notification_bytes(sender=sender, recipients=to, subject=unique("direct-"))
    url = notifications_url(beta)
    return requests.post(url, data=body, headers=signed_post(url, body, key), timeout=30)


def origin_row(beta: Instance, domain: str) -> dict:
    return shell_json(
        beta,
        "import json\nfrom reputation.models import OriginReputation, ReputationDecision\n"
        f"r = OriginReputation.objects.filter(domain={domain!r}).first()\n"
        "own = [] if r is None else r.decisions.filter(sender=None)\n"  # the origin's, not its senders'
        "d = [[x.kind, x.reason, x.ended_at is not None] for x in own]\n"
        "print(json.dumps(None if r is None else {'score': r.score, 'refused': r.refused, 'gone': r.gone,"
        " 'outages': r.outages, 'users_notified': r.users_notified, 'spam_filed': r.spam_filed,"
        " 'unreachable': r.unreachable_since is not None, 'decisions': d}))",
    )


def report_spam(api: Api, entry_id: int) -> None:
    response = api.session.post(api.url(f"inbox/{entry_id}/spam/"), timeout=30)
    assert response.status_code == 200, response.text


def test_a_new_origin_is_held_to_the_new_origin_rate(alpha: Instance, beta: Instance) -> None:
    (b,) = mailboxes(beta, 1)
    key = key_of(alpha, "fresh.test")
    # beta counts per calendar minute: start early enough in one that every request lands in it.
    if time.time() % 60 > 40:
        time.sleep(61 - time.time() % 60)
    answers = [notify(beta, key, sender="news@fresh.test", to=[b.address]) for _ in range(NEW_ORIGIN_RATE + 2)]
    statuses = [a.status_code for a in answers]
    assert statuses == [200] * NEW_ORIGIN_RATE + [429, 429], statuses
    over = answers[-1]
    assert over.json()["error"] == "rate_limited"
    assert f"limit of {NEW_ORIGIN_RATE} notifications per minute" in over.json()["detail"]
    assert 1 <= int(over.headers["Retry-After"]) <= 61
    assert len(b.inbox()) == NEW_ORIGIN_RATE, "nothing of a refused notification is stored"


def test_an_origin_reported_past_the_threshold_is_refused_until_an_admin_lifts_it(
    alpha: Instance, beta: Instance
) -> None:
    spammer, other_sender = mailboxes(alpha, 2, prefix="offers", domain="spammy.test")
    readers = mailboxes(beta, 4, prefix="target")
    _message, _subject, entries = send_and_wait(spammer, readers, text="You have won. Click here.")
    for reader, entry in zip(readers, entries, strict=True):
        report_spam(reader, entry["id"])
    row = wait_for("beta to refuse spammy.test", lambda: (r := origin_row(beta, "spammy.test")) and r["refused"] and r)
    assert row["score"] < 0.2
    refusal = next(d for d in row["decisions"] if d[0] == "refused")
    assert "4 spam reports" in refusal[1] and not refusal[2]

    time.sleep(STANDING_TTL + 1)  # every web process of beta has read the refusal by now
    answer = notify(beta, key_of(alpha, "spammy.test"), sender=spammer.address, to=[readers[0].address])
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"] == "poor_reputation"
    assert "often reported as spam" in answer.json()["detail"]

    # Through alpha: the delivery fails for good, with beta's reason.
    refused = spammer.send(to=[readers[1].address], subject=unique("again-"), text="Last chance!")
    delivery = wait_for(
        "alpha to give up on the refused delivery",
        lambda: (d := spammer.delivery(refused["id"], "beta.test"))["state"] == "failed" and d,
    )
    assert "often reported as spam" in delivery["last_error"]

    # beta's admin lifts it: spammy.test's mail gets through again, to the Inbox.
    assert (
        shell_json(
            beta,
            "import json\nfrom reputation import scores\nfrom reputation.models import OriginReputation\n"
            "r = OriginReputation.objects.get(domain='spammy.test')\n"
            "print(json.dumps(scores.lift_origin(origin_id=r.pk, by=None)))",
        )
        is True
    )
    time.sleep(STANDING_TTL + 1)
    _message, subject, (entry,) = send_and_wait(other_sender, [readers[2]], text="Your order has shipped.")
    ((folder,),) = sql(beta, f"SELECT folder FROM mailbox_inboxentry WHERE id = {int(entry['id'])}")
    assert folder == "inbox"
    row = origin_row(beta, "spammy.test")
    assert not row["refused"] and not row["spam_filed"]
    assert all(ended for _kind, _reason, ended in row["decisions"])


def test_an_origin_that_goes_down_holding_unread_mail_loses_score_and_is_flagged_gone(
    alpha: Instance, beta: Instance
) -> None:
    (a,) = mailboxes(alpha, 1, prefix="shop")
    readers = mailboxes(beta, 3, prefix="customer")
    _message, _subject, entries = send_and_wait(a, readers, text="Your invoice is attached to this message.")
    before = origin_row(beta, "alpha.test")
    before_score = before["score"] if before else 0.5

    alpha.stop_web()
    try:
        status, _data = readers[0].open(entries[0]["id"])  # the fetch fails: alpha does not answer
        assert status == 202
        row = wait_for(
            "beta to note alpha.test unreachable",
            lambda: (r := origin_row(beta, "alpha.test")) and r["unreachable"] and r,
        )
        assert row["outages"] == 1
        row = wait_for(
            "beta's periodic check to flag alpha.test gone",
            lambda: (r := origin_row(beta, "alpha.test")) and r["gone"] and r,
            timeout=60,
        )
        assert row["score"] < before_score
        assert row["users_notified"] == 3
        gone = next(d for d in row["decisions"] if d[0] == "gone")
        assert "for 3 local users" in gone[1] and not gone[2]
        # While down, nothing here waits on alpha: beta's inbox answers at once.
        started = time.monotonic()
        readers[1].inbox()
        assert time.monotonic() - started < 5
    finally:
        alpha.start_web()

    row = wait_for(
        "alpha.test to be reached again and the flag to clear",
        lambda: (r := origin_row(beta, "alpha.test")) and not r["gone"] and not r["unreachable"] and r,
        timeout=60,
    )
    assert row["outages"] == 1
    assert all(ended for kind, _reason, ended in row["decisions"] if kind == "gone")
