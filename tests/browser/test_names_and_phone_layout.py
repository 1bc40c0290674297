"""Display names and layouts that fit, in real Chromium across two real instances.

Nadia on alpha sets her display name in Settings and writes to Noah on beta: Noah's inbox,
the conversation and his address suggestions show her name with her address beside it.
At 1366×768 and on a 390 px phone, compose keeps Send and Add files in view; on the phone
the inbox toolbar is a row of icons whose bulk actions appear once a message is selected,
Compose floats, and neither the inbox, search nor a sent message's delivery table is wider
than the screen. Search results give the subject the width the page has.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.harness import Mailbox, create_mailboxes, login
from tests.browser.test_webmail_flows import token, wait_until
from tools.cluster import Instance

NAME = "Nadia <i>Ölund</i>"  # non-ASCII, and HTML that must show as typed
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}


@pytest.fixture(scope="module")
def people(alpha: Instance, beta: Instance) -> dict[str, Mailbox]:
    with ThreadPoolExecutor(2) as pool:
        on_alpha = pool.submit(create_mailboxes, alpha, [f"nadia-{token()}@alpha.localhost"])
        on_beta = pool.submit(create_mailboxes, beta, [f"noah-{token()}@beta.localhost"])
        (nadia,), (noah,) = on_alpha.result().values(), on_beta.result().values()
    return {"nadia": nadia, "noah": noah}


@pytest.fixture(scope="module")
def mail(people: dict[str, Mailbox], browser: Any) -> dict[str, Any]:
    """Nadia names herself in Settings (in the browser), then sends Noah a message."""
    nadia, noah = people["nadia"], people["noah"]
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = ctx.new_page()
        login(page, nadia)
        page.goto(f"{nadia.origin}/settings/")
        page.get_by_label("Display name").fill(NAME)
        page.get_by_role("button", name="Save settings").click()
        expect(page.get_by_text("Settings saved.")).to_be_visible()
    finally:
        ctx.close()
    subject = f"Ferry times for the long weekend {token()}"
    response = nadia.api("POST", "messages/", json={"to": [noah.address], "subject": subject, "text": "See you."})
    assert response.status_code == 201, response.text

    def listed() -> Any:
        entries = noah.api("GET", "inbox/").json()["results"]
        return next((e for e in entries if e["subject"] == subject), None)

    return {"subject": subject, "entry": wait_until(f"{subject!r} for Noah", listed), "sent": response.json()}


@pytest.fixture
def phone(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(**PHONE)
    ctx.set_default_timeout(15_000)
    try:
        yield ctx.new_page()
    finally:
        ctx.close()


def overflow(page: Any) -> int:
    """How far the page is wider than the window (0 when nothing runs off the side)."""
    return int(page.evaluate("document.documentElement.scrollWidth - window.innerWidth"))


def in_view(page: Any, locator: Any) -> bool:
    box = locator.bounding_box()
    size = page.viewport_size
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= size["height"] and box["width"] > 0


# --- names ---------------------------------------------------------------------------------------


def test_the_name_set_in_settings_shows_beside_the_address_at_the_recipients(
    page: Any, people: dict[str, Mailbox], mail: dict[str, Any]
) -> None:
    nadia, noah = people["nadia"], people["noah"]
    login(page, noah)
    page.goto(f"{noah.origin}/mail/inbox/")
    row = page.get_by_test_id("message-row").filter(has_text=mail["subject"])
    # Before anything is fetched: the name came in the notification, the address beside it.
    expect(row.locator("td.sender")).to_have_text(f"{NAME} {nadia.address}")
    expect(row.locator(".person-name")).to_have_text(NAME)  # the tags shown as typed, not applied
    expect(row.locator("i")).to_have_count(0)
    expect(row).to_have_attribute("data-state", "notified")

    row.locator("td.subject").click()
    header = page.locator("dd.from").first
    expect(header).to_have_text(f"{NAME} <{nadia.address}>")

    # Replying, Noah finds her by her name.
    page.goto(f"{noah.origin}/compose/")
    page.get_by_label("To", exact=True).press_sequentially("ölund", delay=30)
    option = page.locator("datalist option").first
    expect(option).to_have_attribute("value", nadia.address)
    expect(option).to_have_attribute("label", f"{NAME} <{nadia.address}>")


# --- compose keeps Send in view --------------------------------------------------------------------


@pytest.mark.parametrize("size", [{"width": 1366, "height": 768}, PHONE["viewport"]], ids=["1366x768", "phone"])
def test_compose_keeps_send_and_add_files_in_view(
    browser: Any, people: dict[str, Mailbox], size: dict[str, int]
) -> None:
    noah = people["noah"]
    ctx = browser.new_context(**(PHONE if size["width"] == 390 else {"viewport": size}))
    try:
        page = ctx.new_page()
        login(page, noah)
        page.goto(f"{noah.origin}/compose/")
        send, add = page.get_by_test_id("send"), page.get_by_role("button", name="Add files")
        assert in_view(page, send) and in_view(page, add)
        # Still there with a long message typed, scrolled to the top or the middle.
        page.get_by_label("Message", exact=True).fill("\n".join(f"Line {n}" for n in range(80)))
        for y in (0, 400):
            page.evaluate(f"window.scrollTo(0, {y})")
            assert in_view(page, send) and in_view(page, add), y
        assert overflow(page) <= 0
        with page.expect_file_chooser() as chooser:
            add.click()
        assert chooser.value.is_multiple()
    finally:
        ctx.close()


# --- phone width -------------------------------------------------------------------------------------


def test_phone_inbox_toolbar_is_icons_with_bulk_actions_once_selected(
    phone: Any, people: dict[str, Mailbox], mail: dict[str, Any]
) -> None:
    noah = people["noah"]
    login(phone, noah)
    phone.goto(f"{noah.origin}/mail/inbox/")
    toolbar = phone.get_by_role("toolbar", name="Actions on selected messages")
    archive = toolbar.get_by_role("button", name="Archive")
    expect(archive).to_be_hidden()
    assert toolbar.bounding_box()["height"] < 60  # one short row, not 40% of the screen
    assert overflow(phone) <= 0

    phone.get_by_test_id("message-row").filter(has_text=mail["subject"]).get_by_role("checkbox").check()
    expect(archive).to_be_visible()  # named for screen readers, drawn as an icon
    box = toolbar.bounding_box()
    assert box["height"] < 60 and box["x"] + box["width"] <= 390
    expect(archive.locator(".action-label")).to_have_css("width", "1px")
    assert overflow(phone) <= 0

    fab = phone.get_by_role("link", name="Compose")
    expect(fab).to_be_visible()
    assert in_view(phone, fab)
    fab.click()
    expect(phone.get_by_test_id("compose-form")).to_be_visible()


def test_phone_sent_delivery_table_and_search_fit_the_screen(
    phone: Any, people: dict[str, Mailbox], mail: dict[str, Any]
) -> None:
    nadia, noah = people["nadia"], people["noah"]
    login(phone, nadia)
    phone.goto(f"{nadia.origin}/mail/sent/{mail['sent']['id']}/")
    status = phone.get_by_test_id("domain-status").first
    expect(status).to_have_css("display", "block")  # a list: one block per domain...
    headings = status.locator("td").evaluate_all("cells => cells.map(c => getComputedStyle(c, '::before').content)")
    assert headings == ['"Recipients: "', '"Notification: "', '"Fetched: "', '"Withdrawal: "']  # ...each cell named
    assert overflow(phone) <= 0
    box = phone.get_by_test_id("delivery-status").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390

    login(phone, noah)
    phone.goto(f"{noah.origin}/search/?q=ferry")
    expect(phone.get_by_test_id("search-results")).to_be_visible()
    assert overflow(phone) <= 0


def test_search_results_give_sender_and_subject_the_width(
    page: Any, people: dict[str, Mailbox], mail: dict[str, Any]
) -> None:
    noah = people["noah"]
    login(page, noah)
    page.goto(f"{noah.origin}/search/?q=ferry")
    row = page.get_by_test_id("search-results").get_by_test_id("message-row").first
    subject, table = row.locator("td.subject"), page.get_by_test_id("search-results")
    expect(subject).to_contain_text(mail["subject"])
    # The subject is shown whole (the window has room for it), not cut off beside empty columns.
    assert subject.evaluate("td => td.scrollWidth <= td.clientWidth")
    assert subject.bounding_box()["width"] > 0.35 * table.bounding_box()["width"]
