"""A spam run disappears from an open inbox after its first readers report it, in a real browser.

alpha.localhost sends one message to five people at beta.localhost. The fifth has her
inbox open and sees the row. The first three report it through the user API (two of
them opened it first, so beta fetched its body from alpha once). Within a few seconds,
without a reload, the row is gone from her open inbox and the unread count in the title
and the sidebar drops; her Spam folder shows it with the reason. alpha served the body
once, for the readers who opened it, and not again when she opens it in Spam.
"""

from __future__ import annotations

import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.harness import Mailbox, create_mailboxes, login, shell_json
from tests.browser.test_webmail_flows import fetch_through_api, listed_entry
from tools.cluster import Instance


@pytest.fixture(scope="module")
def people(alpha: Instance, beta: Instance) -> dict[str, Mailbox]:
    tag = secrets.token_hex(3)
    with ThreadPoolExecutor(2) as pool:
        on_alpha = pool.submit(create_mailboxes, alpha, [f"deals-{tag}@alpha.localhost"])
        on_beta = pool.submit(create_mailboxes, beta, [f"reader{n}-{tag}@beta.localhost" for n in range(1, 6)])
        made = {**on_alpha.result(), **on_beta.result()}
    return {address.split("-")[0]: mailbox for address, mailbox in made.items()}


def served_bodies(alpha: Instance, subject: str) -> int:
    """Bodies of the message alpha served, from its served-body log."""
    return int(
        shell_json(
            alpha,
            "import json\nfrom outbox.models import BodyFetch\n"
            f"print(json.dumps(BodyFetch.objects.filter(message__subject={subject!r}).count()))\n",
        )
    )


def test_a_spam_run_disappears_from_an_open_inbox_after_the_first_reports(
    page: Any, alpha: Instance, people: dict[str, Mailbox]
) -> None:
    spammer = people["deals"]
    readers = [people[f"reader{n}"] for n in range(1, 6)]
    watcher = readers[4]
    subject = f"You have won a cruise {secrets.token_hex(4)}"
    response = spammer.api(
        "POST", "messages/", json={"bcc": [r.address for r in readers], "subject": subject, "text": "Claim it now."}
    )
    assert response.status_code == 201, response.text
    entries = {r.address: listed_entry(r, subject)["id"] for r in readers}

    # The fifth reader has her inbox open: the row is there, unread, and counted in the title.
    login(page, watcher)
    page.goto(f"{watcher.origin}/mail/inbox/")
    row = page.get_by_test_id("message-row").filter(has_text=subject)
    expect(row).to_have_count(1)
    expect(page).to_have_title(re.compile(r"^\(1\) "))
    expect(page.locator('[data-unread-count="inbox"]')).to_contain_text("1")
    page.evaluate("window.__marker = 1")

    # Readers 1 and 2 open it (beta fetches the body from alpha once); readers 1 to 3 report it.
    for reader in readers[:2]:
        fetch_through_api(reader, entries[reader.address])
    reports = 0
    judged_at = 0
    for reader in readers[:3]:
        answer = reader.api("POST", f"inbox/{entries[reader.address]}/spam/")
        assert answer.status_code == 200, answer.text
        reports += 1
        if answer.json()["judged_spam"] and not judged_at:
            judged_at = reports
    assert judged_at, "three reports did not make a verdict"
    reported = time.monotonic()

    # Without a reload, the row leaves her open inbox and the count drops.
    expect(row).to_have_count(0, timeout=15_000)
    gone_after = time.monotonic() - reported
    assert gone_after < 15, gone_after
    expect(page).not_to_have_title(re.compile(r"^\(\d"))
    expect(page.locator('[data-unread-count="inbox"]')).to_have_count(0)
    expect(page.get_by_test_id("empty-folder")).to_be_visible()
    assert page.evaluate("window.__marker") == 1, "the inbox was reloaded instead of updated in place"

    # Her Spam folder has it, with why.
    page.goto(f"{watcher.origin}/mail/spam/")
    in_spam = page.get_by_test_id("message-row").filter(has_text=subject)
    expect(in_spam).to_have_count(1)
    expect(in_spam.get_by_test_id("spam-reason")).to_have_text(f"{judged_at} people at beta.localhost reported this")

    # alpha served the body once, for the readers who opened it. Opening her copy in Spam says why
    # it is there and shows none of it (the run stops at the readers it reached before the
    # verdict), although beta has the body; alpha is not asked again.
    assert served_bodies(alpha, subject) == 1
    page.get_by_test_id("message-row").filter(has_text=subject).locator("a.open").click()
    expect(page.get_by_test_id("spam-warning")).to_contain_text("Judged spam here")
    expect(page.locator("main")).not_to_contain_text("Claim it now.")
    time.sleep(2)
    assert served_bodies(alpha, subject) == 1
