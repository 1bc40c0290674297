"""Two real instances: beta.test's readers report a message from alpha.test as spam through the user API.

Their reports add up across beta's recipients of the message: once enough of them
report it, every copy nobody opened leaves the Inbox for Spam, unread, and its body
is never fetched for it (alpha's served-body log says so); the Spam folder says
why. A reader who has written to the sender keeps it, with a warning. Bad reports
get a clear answer and change no verdict. A domain admin overturns a verdict in the
admin and every hidden copy comes back.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
import requests

from tools.cluster import Instance

from .conftest import PASSWORD, Api, Cluster, mailboxes, shell_json, sql, start_cluster, unique, wait_for

REASON = re.compile(r"\d+ people at beta\.test reported this")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = start_cluster(
        tmp_path_factory.mktemp("spam-reports"),
        {"it_spam_alpha": ["alpha.test"], "it_spam_beta": ["beta.test"]},
        # Every test here has alpha.test's mail judged spam; the origin's falling score would file the
        # next test's mail to Spam on arrival (that is test_origin_reputation's subject, not this one's).
        env={"it_spam_beta": {"PUSHMAIL_REPUTATION_MIN_REPORTS": "100000"}},
    )
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def alpha(cluster: Cluster) -> Instance:
    return cluster["it_spam_alpha"]


@pytest.fixture(scope="module")
def beta(cluster: Cluster) -> Instance:
    return cluster["it_spam_beta"]


def report(reader: Api, entry_id: int, what: str = "spam") -> requests.Response:
    return reader.session.post(reader.url(f"inbox/{entry_id}/{what}/"), timeout=30)


def folder_of(reader: Api, entry_id: int) -> str:
    response = reader.session.get(reader.url(f"inbox/{entry_id}/"), timeout=30)
    assert response.status_code in (200, 202), response.text
    return str(response.json()["folder"])


def in_folder(reader: Api, folder: str) -> list[dict]:
    response = reader.session.get(reader.url("inbox/"), params={"folder": folder}, timeout=30)
    assert response.status_code == 200, response.text
    return list(response.json()["results"])


def served_bodies(alpha: Instance, subject: str) -> int:
    """How many times alpha served the body of its message with this subject (its served-body log)."""
    [(count,)] = sql(
        alpha,
        "SELECT count(*) FROM outbox_bodyfetch f JOIN outbox_message m ON m.id = f.message_id "
        f"WHERE m.subject = '{subject}'",
    )
    return int(count)


def reports_on(beta: Instance, subject: str) -> int:
    [(count,)] = sql(
        beta,
        "SELECT count(*) FROM reputation_spamreport s JOIN mailbox_remotemessage r ON r.id = s.message_id "
        f"WHERE r.subject = '{subject}' AND s.spam",
    )
    return int(count)


def verdict_on(beta: Instance, subject: str) -> str:
    [(verdict,)] = sql(beta, f"SELECT spam_verdict FROM mailbox_remotemessage WHERE subject = '{subject}'")
    return str(verdict)


def receive(alpha: Instance, beta: Instance, readers: list[Api], subject: str) -> tuple[Api, dict[str, int]]:
    """alpha's sender sends one message to these beta readers; their entry ids once it arrived."""
    [sender] = mailboxes(alpha, 1, prefix="sender")
    sender.send(to=[r.address for r in readers], subject=subject, text="Cheap watches, today only.")
    return sender, {r.address: int(r.entry_with_subject(subject)["id"]) for r in readers}


def web_login(inst: Instance, address: str) -> requests.Session:
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


def test_reports_across_instances_hide_every_unopened_copy_unfetched(alpha: Instance, beta: Instance) -> None:
    readers = mailboxes(beta, 7, prefix="reader")
    subject = unique("Your parcel is waiting ")
    _, entries = receive(alpha, beta, readers, subject)
    opener, second, third, *others = readers

    # One reader opens it: beta fetches the body from alpha once.
    opener.read_until(entries[opener.address], "fetched")
    assert wait_for("alpha to log the fetch", lambda: served_bodies(alpha, subject) == 1)

    # Reports from three readers (the opener and two who never opened it) reach a verdict.
    answers = []
    for reader in (opener, second, third):
        response = report(reader, entries[reader.address])
        assert response.status_code == 200, response.text
        answers.append(response.json())
        assert answers[-1]["folder"] == "spam" and answers[-1]["spam"] is True
    assert answers[-1]["judged_spam"] is True
    assert REASON.fullmatch(verdict_on(beta, subject))

    # Every other copy left the Inbox for Spam, unread. Opening it there shows the body beta
    # already has: alpha is not asked again.
    for reader in others:
        assert [e for e in in_folder(reader, "inbox") if e["subject"] == subject] == []
        [hidden] = [e for e in in_folder(reader, "spam") if e["subject"] == subject]
        assert hidden["read"] is True  # no longer counted as unread
        reader.open(hidden["id"])
    time.sleep(2)  # a fetch queued by those opens would have reached alpha by now
    assert served_bodies(alpha, subject) == 1
    # The Spam folder says why.
    page = web_login(beta, others[0].address).get(f"{beta.base_url}/mail/spam/", timeout=30).text
    assert subject in page and REASON.search(page)


def test_a_run_nobody_opened_is_never_fetched_once_judged(alpha: Instance, beta: Instance) -> None:
    readers = mailboxes(beta, 5, prefix="unread")
    subject = unique("Claim your prize ")
    _, entries = receive(alpha, beta, readers, subject)
    for reader in readers[:3]:  # reported from the list, unopened
        assert report(reader, entries[reader.address]).status_code == 200
    assert REASON.fullmatch(verdict_on(beta, subject))
    for reader in readers[3:]:
        [hidden] = [e for e in in_folder(reader, "spam") if e["subject"] == subject]
        status, data = reader.open(hidden["id"])
        assert data["body"] is None and data["folder"] == "spam"
    time.sleep(3)  # a fetch queued by those opens would have reached alpha by now
    assert served_bodies(alpha, subject) == 0
    [(state,)] = sql(beta, f"SELECT state FROM mailbox_remotemessage WHERE subject = '{subject}'")
    assert state == "notified"


def test_bad_reports_get_clear_answers_and_change_no_verdict(alpha: Instance, beta: Instance) -> None:
    readers = mailboxes(beta, 4, prefix="bad")
    mine, theirs, *rest = readers
    subject = unique("Flood me ")
    sender, entries = receive(alpha, beta, readers, subject)

    # Someone else's message, and one that does not exist: 404, nothing recorded.
    response = report(mine, entries[theirs.address])
    assert response.status_code == 404 and response.json()["error"] == "not_found"
    assert report(mine, 2_000_000_000).status_code == 404
    assert reports_on(beta, subject) == 0

    # Twice, and a flood of the same report: one report is kept, the rest say "repeated".
    first = report(mine, entries[mine.address])
    assert first.status_code == 200 and first.json()["repeated"] is False
    flood = [report(mine, entries[mine.address]) for _ in range(30)]
    assert {r.status_code for r in flood} <= {200, 429}, {r.status_code for r in flood}
    assert all(r.json()["repeated"] for r in flood if r.status_code == 200)
    # Flipping between spam and not spam does not add up either.
    for _ in range(5):
        assert report(mine, entries[mine.address], "not-spam").status_code in (200, 429)
        assert report(mine, entries[mine.address]).status_code in (200, 429)
    assert reports_on(beta, subject) == 1
    assert verdict_on(beta, subject) == ""
    assert all(folder_of(r, entries[r.address]) == "inbox" for r in (theirs, *rest))

    # A notice from beta itself is not mail from a sender: 400 notice.
    notice = shell_json(
        beta,
        "import json\nfrom accounts.models import User\nfrom mailbox.services import post_notice\n"
        f"e = post_notice(owner=User.objects.get(email={mine.address!r}), subject='Quota', text='Nearly full.')\n"
        "print(json.dumps(e.pk))\n",
    )
    response = report(mine, int(notice))
    assert response.status_code == 400 and response.json()["error"] == "notice"

    # Withdrawn mail: 409 withdrawn.
    withdrawn_subject = unique("Withdrawn ")
    sent = sender.send(to=[mine.address], subject=withdrawn_subject, text="Oops.")
    entry_id = int(mine.entry_with_subject(withdrawn_subject)["id"])
    sender.withdraw(sent["id"])
    wait_for("the withdrawal at beta", lambda: mine.listed_state(entry_id) == "withdrawn")
    response = report(mine, entry_id)
    assert response.status_code == 409 and response.json()["error"] == "withdrawn"
    assert reports_on(beta, withdrawn_subject) == 0


def test_a_known_correspondent_keeps_it_with_a_warning(alpha: Instance, beta: Instance) -> None:
    [sender] = mailboxes(alpha, 1, prefix="known")
    friend, *readers = mailboxes(beta, 5, prefix="corr")
    # The friend wrote to the sender before (through beta, to alpha).
    friend.send(to=[sender.address], subject=unique("Hello "), text="Long time no see.")
    wait_for("friend's message at alpha", lambda: any(e["sender"] == friend.address for e in sender.inbox()))
    subject = unique("Newsletter ")
    sender.send(to=[friend.address, *(r.address for r in readers)], subject=subject, text="News.")
    entries = {r.address: int(r.entry_with_subject(subject)["id"]) for r in (friend, *readers)}
    for reader in readers[:3]:
        assert report(reader, entries[reader.address]).status_code == 200
    assert REASON.fullmatch(verdict_on(beta, subject))
    assert folder_of(readers[3], entries[readers[3].address]) == "spam"
    # The friend keeps it in the Inbox, and the message page warns.
    assert folder_of(friend, entries[friend.address]) == "inbox"
    page = (
        web_login(beta, friend.address).get(f"{beta.base_url}/mail/entry/{entries[friend.address]}/", timeout=30).text
    )
    warning = re.search(r'data-testid="spam-warning">([^<]+)<', page)
    assert warning and "written to this sender" in warning.group(1)


def test_a_domain_admin_overturns_a_verdict_in_the_admin(alpha: Instance, beta: Instance) -> None:
    readers = mailboxes(beta, 5, prefix="over")
    subject = unique("Not really spam ")
    _, entries = receive(alpha, beta, readers, subject)
    for reader in readers[:3]:
        assert report(reader, entries[reader.address]).status_code == 200
    untouched = readers[3:]
    assert all(folder_of(r, entries[r.address]) == "spam" for r in untouched)

    admin = f"admin-{unique()}@beta.test"
    shell_json(
        beta,
        "import json\nfrom accounts.services import create_mailbox\n"
        f"create_mailbox(address={admin!r}, password={PASSWORD!r}, is_staff=True)\nprint(json.dumps(1))\n",
    )
    session = web_login(beta, admin)
    changelist = f"{beta.base_url}/admin/reputation/spamverdict/"
    page = session.get(changelist, timeout=30)
    assert page.status_code == 200 and REASON.search(page.text)
    [(verdict_id,)] = sql(
        beta,
        "SELECT v.id FROM reputation_spamverdict v JOIN mailbox_remotemessage r ON r.id = v.message_id "
        f"WHERE r.subject = '{subject}'",
    )
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token
    response = session.post(
        changelist,
        data={"csrfmiddlewaretoken": token.group(1), "action": "overturn", "_selected_action": [verdict_id]},
        headers={"Referer": changelist},
        timeout=30,
    )
    assert response.status_code == 200 and "hidden copies are back" in response.text
    for reader in untouched:
        [back] = [e for e in in_folder(reader, "inbox") if e["subject"] == subject]
        assert back["read"] is False
    assert verdict_on(beta, subject) == ""
    # The reporters' own copies stay where they put them.
    assert folder_of(readers[0], entries[readers[0].address]) == "spam"
