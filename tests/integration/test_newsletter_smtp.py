"""A list's readers at an ordinary mail domain, end to end: a real instance (web and worker) mails
the confirmation link and each issue by SMTP to Debian's Postfix, which stores them in Maildirs.

The reader subscribes on the list's public page, follows the link of the mail Postfix stored,
receives an issue with List-Id, List-Unsubscribe and List-Unsubscribe-Post under a DKIM signature
that dkimpy verifies against the record ``manage.py dnsrecords`` prints, and leaves by POSTing the
List-Unsubscribe link as a mail program does (RFC 8058): no cookie, no sign-in. Postfix and the
DNS server are set up as in test_smtp_outbound.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import shutil
from collections.abc import Iterator
from email.message import EmailMessage
from urllib.parse import unquote

import pytest
import requests

from tests.integration.conftest import mailboxes, shell_json, sql, unique, wait_for
from tests.integration.test_smtp_outbound import (
    HOSTED,
    LEGACY,
    Setup,
    _dkim_verifies,
    legacy_domain_and_instance,
)
from tools.cluster import Instance

pytestmark = pytest.mark.skipif(
    os.environ.get("CI", "").lower() not in {"1", "true", "yes"} and shutil.which("postfix") is None,
    reason="Debian's postfix is not installed (apt-get install postfix)",
)

READERS = ["ann", "bob", "carol"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with legacy_domain_and_instance(tmp_path_factory, name="list_alpha", mailboxes=READERS) as running:
        yield running


def new_list(inst: Instance) -> tuple[str, str]:
    """A fresh list on the instance, owned by a fresh mailbox: its address and slug."""
    (owner,) = mailboxes(inst, 1, prefix="owner")
    tag = unique()
    slug, address = f"news-{tag}", f"news-{tag}@{HOSTED}"
    shell_json(
        inst,
        "import json\n"
        "from accounts.models import User\n"
        "from newsletters import services\n"
        f"services.create_newsletter(owner=User.objects.get(email={owner.address!r}), address={address!r},"
        f" name='Alpha Weekly', slug={slug!r})\n"
        "print(json.dumps(True))\n",
    )
    return address, slug


def subscriber_state(inst: Instance, list_address: str, reader: str) -> str | None:
    rows = sql(
        inst,
        "SELECT s.state FROM newsletters_subscriber s JOIN newsletters_newsletter n ON n.id = s.newsletter_id"
        f" WHERE n.address = '{list_address}' AND s.address = '{reader}'",
    )
    return rows[0][0] if rows else None


def subscribe_on_the_page(inst: Instance, slug: str, reader: str) -> requests.Response:
    """What a browser does on the public page: GET it (the form's CSRF token), POST the address."""
    session = requests.Session()
    page = session.get(f"{inst.base_url}/n/{slug}/", timeout=30)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert page.status_code == 200 and token, page.text[:500]
    return session.post(
        f"{inst.base_url}/n/{slug}/",
        data={"csrfmiddlewaretoken": token[1], "address": reader},
        headers={"Referer": f"{inst.base_url}/n/{slug}/"},
        timeout=30,
    )


def parse(raw: bytes) -> EmailMessage:
    mail = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(mail, EmailMessage)
    return mail


def confirmed_reader(setup: Setup, list_address: str, slug: str, name: str) -> str:
    """Subscribe ``name``@legacy.test on the page and confirm by the mailed link; returns the address."""
    reader = f"{name}@{LEGACY}"
    answer = subscribe_on_the_page(setup.inst, slug, reader)
    assert answer.status_code == 200 and "Check your mail" in answer.text, answer.text[:500]
    assert subscriber_state(setup.inst, list_address, reader) == "confirming"
    raw = setup.maildir_message(name, "Confirm your subscription to Alpha Weekly")
    mail = parse(raw)
    assert mail["From"].addresses[0].addr_spec == list_address
    assert _dkim_verifies(raw, setup.resolver)
    text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    (link,) = re.findall(r"https?://\S+/confirm/\S+/", text)
    assert link.startswith(setup.inst.base_url)
    shown = requests.get(link, timeout=30)  # what a link checker would do: subscribes nobody
    assert shown.status_code == 200 and "Confirm" in shown.text
    assert subscriber_state(setup.inst, list_address, reader) == "confirming"
    done = requests.post(link, timeout=30)
    assert done.status_code == 200 and "Subscribed" in done.text
    assert subscriber_state(setup.inst, list_address, reader) == "active"
    # A forged link is refused with a page that says so; nothing changes.
    forged = requests.post(link[:-6] + "AAAAA/", timeout=30)
    assert forged.status_code == 400 and "not valid" in forged.text
    return reader


def publish(inst: Instance, list_address: str, subject: str) -> str:
    return shell_json(
        inst,
        "import json\n"
        "from newsletters import services\n"
        "from newsletters.models import Newsletter\n"
        f"issue = services.publish_issue(newsletter=Newsletter.objects.get(address={list_address!r}),"
        f" subject={subject!r}, text='Hello, readers by mail.')\n"
        "print(json.dumps(str(issue.message_id)))\n",
    )


def legacy_delivery(inst: Instance, message_id: str) -> list[tuple]:
    return sql(
        inst,
        "SELECT transport, state, delivered FROM outbox_delivery"
        f" WHERE CAST(message_id AS TEXT) = '{message_id}' AND domain = '{LEGACY}'",
    )


def test_a_reader_by_mail_confirms_receives_a_signed_issue_and_leaves_in_one_click(setup: Setup) -> None:
    list_address, slug = new_list(setup.inst)
    ann = confirmed_reader(setup, list_address, slug, "ann")
    bob = confirmed_reader(setup, list_address, slug, "bob")

    subject = unique("Issue ")
    message_id = publish(setup.inst, list_address, subject)
    raw = setup.maildir_message("ann", subject)
    other = setup.maildir_message("bob", subject)
    mail = parse(raw)

    assert mail["From"].addresses[0].addr_spec == list_address and mail["To"] == list_address
    assert mail["List-Id"] == f'"Alpha Weekly" <{list_address.replace("@", ".")}>'
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url, mailto = re.findall(r"<([^>]+)>", str(mail["List-Unsubscribe"]))
    assert url.startswith(f"{setup.inst.base_url}/n/{slug}/unsubscribe/")
    assert mailto.startswith(f"mailto:{list_address.replace('@', '+unsubscribe@')}?subject=unsubscribe%20")
    token = url.rstrip("/").rsplit("/", 1)[1]
    assert unquote(mailto.split("subject=")[1]) == f"unsubscribe {token}"
    # Each reader's copy has their own link; nothing else in it differs.
    other_url = re.findall(r"<([^>]+)>", str(parse(other)["List-Unsubscribe"]))[0]
    assert other_url != url
    assert "Hello, readers by mail." in mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    # DKIM (dkimpy, the key of dnsrecords' record) covers the list headers, as RFC 8058 requires.
    assert _dkim_verifies(raw, setup.resolver) and _dkim_verifies(other, setup.resolver)
    signature = re.sub(r"\s+", "", str(mail["DKIM-Signature"]))
    covered = re.search(r";h=([^;]+)", signature)
    assert covered and {"list-id", "list-unsubscribe", "list-unsubscribe-post"} <= set(covered[1].lower().split(":"))
    assert not _dkim_verifies(raw.replace(token.encode(), token[::-1].encode(), 1), setup.resolver)
    wait_for("the delivery to be settled", lambda: legacy_delivery(setup.inst, message_id) == [("smtp", "notified", 2)])

    # A GET (a link checker, a preview) shows a button and unsubscribes nobody.
    shown = requests.get(url, timeout=30)
    assert shown.status_code == 200 and "Unsubscribe" in shown.text
    assert subscriber_state(setup.inst, list_address, ann) == "active"
    # The one-click POST, as a mail program sends it: no cookie, no CSRF token, no sign-in.
    left = requests.post(
        url,
        data="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=30,
    )
    assert left.status_code == 200 and "is unsubscribed" in left.text
    assert subscriber_state(setup.inst, list_address, ann) == "unsubscribed"
    assert subscriber_state(setup.inst, list_address, bob) == "active"
    # Counted against the list, as a spam report is.
    counted = f"SELECT unsubscribes FROM reputation_senderreputation WHERE address = '{list_address}'"
    assert sql(setup.inst, counted) == [(1,)]

    # The next issue goes to bob only.
    again = unique("Issue ")
    second = publish(setup.inst, list_address, again)
    setup.maildir_message("bob", again)
    wait_for("the second delivery", lambda: legacy_delivery(setup.inst, second) == [("smtp", "notified", 1)])
    assert not any(again.encode() in p.read_bytes() for p in (setup.postfix.dir / "mail" / "ann" / "new").glob("*"))
    assert requests.post(url.replace(token, "x" * len(token)), timeout=30).status_code == 404


def test_a_confirmation_link_past_its_age_is_refused(setup: Setup) -> None:
    list_address, slug = new_list(setup.inst)
    assert subscribe_on_the_page(setup.inst, slug, f"carol@{LEGACY}").status_code == 200
    raw = setup.maildir_message("carol", "Confirm your subscription to Alpha Weekly")
    text = parse(raw).get_body(("plain",)).get_content()  # type: ignore[union-attr]
    (link,) = re.findall(r"https?://\S+/confirm/\S+/", text)
    # The link as the instance would have signed it four days ago (its age is checked from the signature).
    path = link.split(setup.inst.base_url, 1)[1]
    old = shell_json(
        setup.inst,
        "import json, time\n"
        "from unittest import mock\n"
        "from newsletters import legacy\n"
        "from newsletters.models import Subscriber\n"
        f"subscriber = Subscriber.objects.get(address='carol@{LEGACY}', newsletter__slug={slug!r})\n"
        "with mock.patch('time.time', return_value=time.time() - 4 * 86400):\n"
        "    token = legacy.confirm_token(subscriber)\n"
        "print(json.dumps(token))\n",
    )
    expired = requests.post(f"{setup.inst.base_url}{path.rsplit('/', 2)[0]}/{old}/", timeout=30)
    assert expired.status_code == 410 and "expired" in expired.text
    assert subscriber_state(setup.inst, list_address, f"carol@{LEGACY}") == "confirming"
