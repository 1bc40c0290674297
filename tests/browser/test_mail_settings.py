"""Settings people expect, in a real browser across two real instances: a filter files mail from
another instance as it arrives, the vacation reply reaches a sender once, contacts are named
and suggested in compose, and an mbox file is imported into the Archive."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.harness import Mailbox, create_mailboxes, login
from tests.browser.test_webmail_flows import inbox_row, listed_entry, send, token, wait_until
from tools.cluster import Instance

ALPHA_USERS = ["fay", "fin", "fox"]
BETA_USERS = ["gil", "gus", "gwen"]


@pytest.fixture(scope="module")
def people(alpha: Instance, beta: Instance) -> dict[str, Mailbox]:
    with ThreadPoolExecutor(2) as pool:
        on_alpha = pool.submit(create_mailboxes, alpha, [f"{n}@alpha.localhost" for n in ALPHA_USERS])
        on_beta = pool.submit(create_mailboxes, beta, [f"{n}@beta.localhost" for n in BETA_USERS])
        made = {**on_alpha.result(), **on_beta.result()}
    return {address.split("@")[0]: mailbox for address, mailbox in made.items()}


def _rows(page: Any, user: Mailbox, folder: str, subject: str) -> Any:
    page.goto(f"{user.origin}/mail/{folder}/")
    return page.get_by_test_id("message-row").filter(has_text=subject)


def test_a_filter_made_in_settings_files_mail_from_another_instance(page: Any, people: dict[str, Mailbox]) -> None:
    fay, gil = people["fay"], people["gil"]
    login(page, gil)
    page.goto(f"{gil.origin}/settings/")
    page.get_by_role("navigation", name="Settings").get_by_role("link", name="Filters").click()

    # A rule without a condition is refused, saying why.
    page.get_by_label("Move to").select_option("archive")
    page.get_by_role("button", name="Add filter").click()
    expect(page.get_by_role("alert")).to_contain_text("Give at least one condition")
    # Forwarding to oneself is refused too.
    page.get_by_label("From contains").fill("fay@alpha")
    page.get_by_label("Forward to").fill(gil.address)
    page.get_by_role("button", name="Add filter").click()
    expect(page.locator("body")).to_contain_text("That is your own address")

    page.get_by_label("Forward to").fill("")
    page.get_by_label("Move to").select_option("archive")
    page.get_by_label("Star it").check()
    page.get_by_role("button", name="Add filter").click()
    expect(page.get_by_test_id("filter-list")).to_contain_text("from contains “fay@alpha”")
    expect(page.get_by_test_id("filter-list")).to_contain_text("move to Archive")

    subject = f"Quarterly figures {token()}"
    send(fay, gil, subject, "Numbers attached in spirit.")
    # Filed as it arrived: it shows up in the Archive, starred, and never in the Inbox.
    wait_until(f"{subject!r} in gil's Archive", lambda: _rows(page, gil, "archive", subject).count() == 1, interval=1.0)
    expect(_rows(page, gil, "inbox", subject)).to_have_count(0)
    expect(_rows(page, gil, "starred", subject)).to_have_count(1)


def test_the_vacation_reply_reaches_the_sender_once(page: Any, people: dict[str, Mailbox]) -> None:
    fox, gus = people["fox"], people["gus"]
    login(page, gus)
    page.goto(f"{gus.origin}/settings/vacation/")
    page.get_by_label("Send a vacation reply").check()
    page.get_by_role("button", name="Save").click()
    expect(page.locator("body")).to_contain_text("Write the reply people get while you are away.")

    page.get_by_label("Send a vacation reply").check()
    page.get_by_label("Subject").fill("Away this week")
    page.get_by_label("Message").fill("I am hiking until Monday; I will answer then.")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_test_id("vacation-status")).to_contain_text("On")

    first, second = f"Lunch {token()}", f"Lunch again {token()}"
    send(fox, gus, first, "Are you free?")
    send(fox, gus, second, "Still free?")
    listed_entry(gus, second)
    reply = listed_entry(fox, "Away this week")
    assert reply["sender"] == gus.address

    def replies() -> list[dict]:
        results = fox.api("GET", "inbox/").json()["results"]
        return [e for e in results if e["subject"] == "Away this week"]

    # The second message gets no second reply: both were answered (or not) by the time both arrived.
    wait_until("the second message at gus's", lambda: listed_entry(gus, second))
    assert len(replies()) == 1
    login(page, fox)
    row = inbox_row(page, fox, "Away this week")
    expect(row).to_have_count(1)


def test_contacts_are_named_and_suggested_when_writing(page: Any, people: dict[str, Mailbox]) -> None:
    fin, gwen = people["fin"], people["gwen"]
    send(fin, gwen, f"Hello {token()}", "Hi Gwen.")
    login(page, fin)
    page.goto(f"{fin.origin}/settings/contacts/")
    row = page.get_by_test_id("contact-list").locator(f'tr[data-address="{gwen.address}"]')
    expect(row).to_be_visible()
    row.get_by_label(f"Name of {gwen.address}", exact=True).fill("Gwendolyn Gray")
    row.get_by_role("button", name=f"Save the name of {gwen.address}").click()
    expect(page.get_by_test_id("contact-list")).to_contain_text(gwen.address)
    expect(page.get_by_label(f"Name of {gwen.address}", exact=True)).to_have_value("Gwendolyn Gray")

    # A bad address gets a form error.
    form = page.get_by_test_id("contact-form")
    form.get_by_label("Address").fill("not an address")
    form.get_by_role("button", name="Add contact").click()
    expect(page.locator("body")).to_contain_text("is not an email address")

    page.goto(f"{fin.origin}/compose/")
    page.get_by_label("To", exact=True).press_sequentially("Gwendo", delay=60)
    option = page.locator("#compose-to-suggestions option")
    expect(option.first).to_have_attribute("value", gwen.address, timeout=10_000)
    expect(option.first).to_have_attribute("label", re.compile("Gwendolyn Gray"))


MBOX = (
    "From ann@example.org Mon Jan  1 10:00:00 2024\n"
    "From: Ann <ann@example.org>\nTo: fay@alpha.localhost\nSubject: Old news {tag}\n"
    "Message-ID: <one-{tag}@example.org>\nDate: Mon, 01 Jan 2024 10:00:00 +0000\n\n"
    "The first message from the old server.\n>From here on, a quoted line.\n\n"
    "From bob@example.org Tue Jan  2 10:00:00 2024\n"
    "From: bob@example.org\nTo: fay@alpha.localhost\nSubject: Older news {tag}\n"
    "Message-ID: <two-{tag}@example.org>\nDate: Tue, 02 Jan 2024 10:00:00 +0000\n\n"
    "The second message.\n"
)


def test_an_mbox_file_is_imported_into_the_archive(page: Any, people: dict[str, Mailbox]) -> None:
    fay = people["fay"]
    tag = token()
    login(page, fay)
    page.goto(f"{fay.origin}/settings/import/")

    page.get_by_label("Mail file").set_input_files({"name": "photo.png", "mimeType": "image/png", "buffer": b"\x89PNG"})
    page.get_by_role("button", name="Import").click()
    expect(page.get_by_role("alert")).to_contain_text("is not an mbox or .eml file")

    page.get_by_label("Mail file").set_input_files(
        {"name": "old.mbox", "mimeType": "application/mbox", "buffer": MBOX.format(tag=tag).encode()}
    )
    page.get_by_role("button", name="Import").click()
    expect(page.locator("body")).to_contain_text("Imported 2 messages from old.mbox into the Archive.")

    row = _rows(page, fay, "archive", f"Old news {tag}")
    expect(row).to_have_count(1)
    expect(_rows(page, fay, "inbox", f"Old news {tag}")).to_have_count(0)
    row = _rows(page, fay, "archive", f"Old news {tag}")
    row.get_by_role("link").first.click(force=True)
    expect(page.locator("body")).to_contain_text("The first message from the old server.")
    expect(page.locator("body")).to_contain_text("From here on, a quoted line.")
