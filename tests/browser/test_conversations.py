"""Conversations in a real browser, across two real instances: one row per conversation,
opening it pulls every unread message at once, and `e` archives all of it.

Carl on beta writes to Cora on alpha and follows up three times (each a reply to the first,
as a mail client sends it); Cora reads on alpha, which pulls each body from beta.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.harness import Mailbox, create_mailboxes, login
from tests.browser.test_webmail_flows import token, wait_until
from tools.cluster import Instance


@pytest.fixture(scope="module")
def people(alpha: Instance, beta: Instance) -> dict[str, Mailbox]:
    with ThreadPoolExecutor(2) as pool:
        on_alpha = pool.submit(create_mailboxes, alpha, [f"{n}@alpha.localhost" for n in ("cora", "cleo")])
        on_beta = pool.submit(create_mailboxes, beta, [f"{n}@beta.localhost" for n in ("carl", "cass")])
        made = {**on_alpha.result(), **on_beta.result()}
    return {address.split("@")[0]: mailbox for address, mailbox in made.items()}


def send(sender: Mailbox, to: Mailbox, subject: str, text: str, in_reply_to: str = "") -> dict:
    response = sender.api(
        "POST", "messages/", json={"to": [to.address], "subject": subject, "text": text, "in_reply_to": in_reply_to}
    )
    assert response.status_code == 201, response.text
    return response.json()


def conversation_of(sender: Mailbox, to: Mailbox, subject: str, texts: list[str]) -> None:
    """A first message and replies to it, all announced to ``to`` before this returns."""
    first = send(sender, to, subject, texts[0])
    for text in texts[1:]:
        send(sender, to, f"Re: {subject}", text, in_reply_to=first["message_id"])

    def arrived() -> bool:
        response = to.api("GET", "inbox/")
        assert response.status_code == 200, response.text
        return sum(subject in entry["subject"] for entry in response.json()["results"]) == len(texts)

    wait_until(f"{len(texts)} messages of {subject!r} in {to.address}'s inbox", arrived)


def rows_of(page: Any, subject: str) -> Any:
    return page.get_by_test_id("message-row").filter(has_text=subject)


def test_a_conversation_is_one_row_and_opens_with_every_unread_message(page: Any, people: dict[str, Mailbox]) -> None:
    carl, cora = people["carl"], people["cora"]
    subject = f"Harbour trip {token()}"
    texts = [f"Are you in for the harbour trip? {token()}"] + [f"Follow-up {i}: {token()}" for i in range(3)]
    conversation_of(carl, cora, subject, texts)

    login(page, cora)
    page.goto(f"{cora.origin}/mail/inbox/")
    row = rows_of(page, subject)
    expect(row).to_have_count(1)
    expect(row.get_by_test_id("thread-count")).to_have_text("4")
    expect(row).to_have_class(re.compile(r"\bunread\b"))
    expect(row).to_contain_text("at sender's")

    row.get_by_role("link").first.click(force=True)
    # Every unread message is expanded and its body pulled from beta: all four show, no extra click.
    bodies = page.get_by_test_id("message-body")
    expect(bodies).to_have_count(4, timeout=40_000)
    for text in texts:
        expect(page.locator("main")).to_contain_text(text)
    expect(page.locator('[data-testid="thread-message"][open]')).to_have_count(4)

    page.goto(f"{cora.origin}/mail/inbox/")
    row = rows_of(page, subject)
    expect(row).to_have_count(1)
    expect(row).not_to_have_class(re.compile(r"\bunread\b"))
    expect(row).not_to_contain_text("at sender's")


def test_e_archives_the_whole_conversation(page: Any, people: dict[str, Mailbox]) -> None:
    cass, cleo = people["cass"], people["cleo"]
    subject = f"Budget draft {token()}"
    texts = [f"Draft attached {token()}", f"Second thoughts {token()}", f"Final {token()}"]
    conversation_of(cass, cleo, subject, texts)

    login(page, cleo)
    page.goto(f"{cleo.origin}/mail/inbox/")
    expect(rows_of(page, subject)).to_have_count(1)
    page.keyboard.press("j")  # select the newest row: this conversation
    expect(rows_of(page, subject)).to_have_class(re.compile(r"\bselected\b"))
    page.keyboard.press("e")

    expect(page.get_by_test_id("undo-notice")).to_contain_text("3 messages archived")
    expect(rows_of(page, subject)).to_have_count(0)
    in_inbox = [e for e in cleo.api("GET", "inbox/?folder=inbox").json()["results"] if subject in e["subject"]]
    assert in_inbox == []
    page.goto(f"{cleo.origin}/mail/archive/")
    archived = rows_of(page, subject)
    expect(archived).to_have_count(1)
    expect(archived.get_by_test_id("thread-count")).to_have_text("3")
