"""Accounts across two real instances: the password reset link travels as pull-on-read mail to a
recovery address on another instance, and "fetch as soon as notified" pulls the body unopened."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import requests

from tools.cluster import Instance

from .conftest import PASSWORD, Cluster, mailboxes, shell_json, sql, start_cluster, unique, wait_for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = start_cluster(
        tmp_path_factory.mktemp("accounts"), {"it_acc_alpha": ["alpha.test"], "it_acc_beta": ["beta.test"]}
    )
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def alpha(cluster: Cluster) -> Instance:
    return cluster["it_acc_alpha"]


@pytest.fixture(scope="module")
def beta(cluster: Cluster) -> Instance:
    return cluster["it_acc_beta"]


def _csrf(session: requests.Session, url: str) -> str:
    page = session.get(url, timeout=30)
    assert page.status_code == 200, page.text[:500]
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert match, page.text[:2000]
    return match.group(1)


def _post_form(session: requests.Session, url: str, data: dict[str, str]) -> requests.Response:
    token = _csrf(session, url)
    return session.post(url, data={"csrfmiddlewaretoken": token, **data}, headers={"Referer": url}, timeout=30)


def _signs_in(inst: Instance, address: str, password: str) -> bool:
    session = requests.Session()
    response = _post_form(session, f"{inst.base_url}/accounts/login/", {"login": address, "password": password})
    return response.status_code == 200 and response.url.rstrip("/").endswith("/mail/inbox")


def test_reset_link_reaches_a_recovery_address_on_another_instance(alpha: Instance, beta: Instance) -> None:
    [ann] = mailboxes(alpha, 1, prefix="ann")
    [rescue] = mailboxes(beta, 1, prefix="rescue")
    alpha.shell(
        "from accounts.models import User\n"
        f"User.objects.filter(email={ann.address!r}).update(recovery_address={rescue.address!r})\n"
    )

    browser = requests.Session()
    response = _post_form(browser, f"{alpha.base_url}/accounts/password/reset/", {"email": ann.address})
    assert response.url.endswith("/accounts/password/reset/done/"), response.url

    # On beta: a notification from alpha's postmaster, its body still at alpha until opened.
    entry = rescue.entry_with_subject(f"Password reset for {ann.address}", timeout=60)
    assert entry["sender"] == "postmaster@alpha.test"
    assert entry["state"] == "notified"
    body = rescue.read_until(entry["id"], "fetched")
    link = re.search(r"(http://\S+/accounts/password/reset/key/\S+)", body["body"]["text"]).group(1)  # type: ignore[union-attr]

    page = browser.get(link, timeout=30)  # redirects to the set-password form
    new = f"reset via beta {unique()}"
    done = browser.post(
        page.url,
        data={"csrfmiddlewaretoken": _csrf(browser, page.url), "password1": new, "password2": new},
        headers={"Referer": page.url},
        timeout=30,
    )
    assert done.url.endswith("/accounts/password/reset/key/done/"), done.url
    assert _signs_in(alpha, ann.address, new)
    assert not _signs_in(alpha, ann.address, PASSWORD)


def test_fetch_as_soon_as_notified_pulls_the_body_before_anyone_opens_it(alpha: Instance, beta: Instance) -> None:
    [sender] = mailboxes(alpha, 1, prefix="snd")
    eager, lazy = mailboxes(beta, 2, prefix="rcv")
    beta.shell(
        "from accounts.models import User\n"
        f"User.objects.filter(email={eager.address!r}).update(fetch_policy='on_notify')\n"
    )
    subject = f"Eager {unique()}"
    sender.send(to=[lazy.address], subject=subject, text="fetched when I open")
    entry = lazy.entry_with_subject(subject)
    assert lazy.listed_state(entry["id"]) == "notified"

    subject = f"Eager {unique()}"
    sender.send(to=[eager.address, lazy.address], subject=subject, text="fetched at once")
    entry = eager.entry_with_subject(subject)
    wait_for("the body to be pulled unopened", lambda: eager.listed_state(entry["id"]) == "fetched", timeout=30)
    other = lazy.entry_with_subject(subject)
    assert lazy.listed_state(other["id"]) == "fetched"  # one fetch for the domain serves both
    [(fetches,)] = sql(
        alpha,
        "SELECT count(*) FROM outbox_bodyfetch f JOIN outbox_message m ON m.id = f.message_id "
        f"WHERE m.subject = '{subject}'",
    )
    assert fetches == 1
    opened = shell_json(
        beta,
        "import json\nfrom mailbox.models import InboxEntry\n"
        f"print(json.dumps(list(InboxEntry.objects.filter(subject={subject!r}).values_list('opened_at', flat=True))))",
    )
    assert opened == [None, None]  # nobody opened it: the sender learnt nothing about reading
