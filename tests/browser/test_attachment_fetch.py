"""A received attachment is fetched in the background while the page says so, in a real browser.

alpha.localhost sends, beta.localhost receives. On beta the reader clicks a file still at
alpha's: the message page shows "Fetching attachment…" in place, keeps asking, and starts the
download by itself once beta's worker has brought the file; a preview shows the same way. When
alpha does not answer, the page says "Unavailable — retrying" and offers Retry now. Nothing
reloads the page.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

from tests.browser.harness import Mailbox, create_mailboxes, login, make_png
from tests.browser.test_webmail_flows import fetch_through_api, listed_entry
from tools.cluster import Instance

FETCHING = re.compile(r"Fetching attachment… \(\d+(\.\d)? (bytes|KiB)\)")


@pytest.fixture(scope="module")
def people(alpha: Instance, beta: Instance) -> dict[str, Mailbox]:
    with ThreadPoolExecutor(2) as pool:
        on_alpha = pool.submit(create_mailboxes, alpha, ["cara@alpha.localhost", "dina@alpha.localhost"])
        on_beta = pool.submit(create_mailboxes, beta, ["ezra@beta.localhost", "finn@beta.localhost"])
        made = {**on_alpha.result(), **on_beta.result()}
    return {address.split("@")[0]: mailbox for address, mailbox in made.items()}


@pytest.fixture
def beta_worker(beta: Instance) -> Iterator[Instance]:
    """beta, whose worker the test may stop: it is running again afterwards."""
    try:
        yield beta
    finally:
        if beta.worker is None:
            beta.start_worker()


@pytest.fixture
def alpha_web(alpha: Instance) -> Iterator[Instance]:
    """alpha, whose web server the test may stop: it is running again afterwards."""
    try:
        yield alpha
    finally:
        if alpha.web is None:
            alpha.start_web()


def send_files(sender: Mailbox, to: Mailbox, subject: str, files: list[tuple[str, str, bytes]]) -> dict:
    payload = {
        "to": [to.address],
        "subject": subject,
        "text": "The files are attached.",
        "attachments": [
            {"name": name, "type": kind, "content": base64.b64encode(content).decode()} for name, kind, content in files
        ],
    }
    response = sender.api("POST", "messages/", json=payload)
    assert response.status_code == 201, response.text
    return response.json()


def received_with_body(reader: Mailbox, subject: str) -> dict:
    entry = listed_entry(reader, subject)
    fetch_through_api(reader, entry["id"])  # the body is here; the files are still at the sender's
    return entry


def test_fetching_shows_then_the_download_and_the_preview_arrive_without_a_reload(
    page: Any, people: dict[str, Mailbox], beta_worker: Instance
) -> None:
    cara, ezra = people["cara"], people["ezra"]
    tag = secrets.token_hex(4)
    report = f"Report {tag}\n".encode() * 200
    picture = make_png(40, 30, tuple(secrets.token_bytes(3)))
    subject = f"Files {tag}"
    send_files(
        cara, ezra, subject, [(f"report-{tag}.txt", "text/plain", report), (f"chart-{tag}.png", "image/png", picture)]
    )
    entry = received_with_body(ezra, subject)
    beta_worker.kill_worker()  # with its sweep: nothing on beta fetches until it is back

    login(page, ezra)
    page.goto(f"{ezra.origin}/mail/entry/{entry['id']}/")
    page.evaluate("window.__marker = 1")
    item = page.locator(".attachment").filter(has_text=f"report-{tag}.txt")

    # No worker runs on beta: the click starts the fetch, and the page says so in place.
    item.get_by_test_id("attachment-link").click()
    expect(item.get_by_test_id("attachment-fetching")).to_contain_text(FETCHING)
    picture_item = page.locator(".attachment").filter(has_text=f"chart-{tag}.png")
    picture_item.get_by_role("button", name="Show preview").click()
    expect(picture_item.get_by_test_id("attachment-fetching")).to_contain_text(FETCHING)
    page.wait_for_timeout(1500)  # the page keeps asking; still nothing to show
    expect(item.get_by_test_id("attachment-fetching")).to_be_visible()

    # The worker comes back: the file is fetched, and the download starts by itself.
    with page.expect_download(timeout=60_000) as started:
        beta_worker.start_worker()
    download = started.value
    assert download.suggested_filename == f"report-{tag}.txt"
    with open(download.path(), "rb") as downloaded:
        assert downloaded.read() == report
    preview = picture_item.get_by_test_id("attachment-preview")
    expect(preview).to_be_visible(timeout=30_000)
    page.wait_for_function("el => el.complete && el.naturalWidth === 40", arg=preview.element_handle())
    expect(page.get_by_test_id("attachment-fetching")).to_have_count(0)
    assert page.evaluate("window.__marker") == 1, "the page was reloaded"


def test_an_unanswered_fetch_says_so_and_retry_now_brings_the_file(
    page: Any, people: dict[str, Mailbox], alpha_web: Instance
) -> None:
    dina, finn = people["dina"], people["finn"]
    tag = secrets.token_hex(4)
    minutes = f"Minutes {tag}\n".encode() * 50
    subject = f"Minutes {tag}"
    send_files(dina, finn, subject, [(f"minutes-{tag}.txt", "text/plain", minutes)])
    entry = received_with_body(finn, subject)
    alpha_web.stop_web()  # from now on alpha does not answer

    login(page, finn)
    page.goto(f"{finn.origin}/mail/entry/{entry['id']}/")
    page.evaluate("window.__marker = 1")
    item = page.locator(".attachment").filter(has_text=f"minutes-{tag}.txt")
    item.get_by_test_id("attachment-link").click()

    unavailable = item.get_by_test_id("attachment-unavailable-retrying")
    expect(unavailable).to_contain_text(
        re.compile(r"Unavailable — retrying \(last try \d\d:\d\d:\d\d\)"), timeout=30_000
    )
    expect(item).to_contain_text("did not answer")
    retry = item.get_by_role("button", name="Retry now")
    expect(retry).to_be_visible()

    with page.expect_download(timeout=60_000) as started:
        alpha_web.start_web()
        try:
            retry.click(timeout=5_000)
        except PlaywrightTimeout:
            pass  # the worker's own retry was quicker: the button is gone
    expect(item.get_by_test_id("attachment-unavailable-retrying")).to_have_count(0)
    with open(started.value.path(), "rb") as downloaded:
        assert downloaded.read() == minutes
    assert page.evaluate("window.__marker") == 1, "the page was reloaded"
