"""No dead ends, in a real browser across two real instances: Send goes back where the person
was, with Undo; archive and label changes can be undone; a withdrawal changes an open inbox
live; one size per message that both sides agree on; compose checks files, an empty
subject and empty drafts before anything is stored or sent; labels on an open message."""

from __future__ import annotations

import base64
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.harness import Mailbox, create_mailboxes, login
from tests.browser.test_webmail_flows import inbox_row, listed_entry, open_row, send, token, wait_until
from tools.cluster import Instance

ALPHA_USERS = ["dora", "dan", "dee", "dot"]
BETA_USERS = ["bern", "bix", "bay", "bud", "bel"]
SIZE = re.compile(r"\d+(\.\d)?\s(bytes|byte|KiB|MiB|GiB)")


@pytest.fixture(scope="module")
def people(alpha: Instance, beta: Instance) -> dict[str, Mailbox]:
    with ThreadPoolExecutor(2) as pool:
        on_alpha = pool.submit(create_mailboxes, alpha, [f"{n}@alpha.localhost" for n in ALPHA_USERS])
        on_beta = pool.submit(create_mailboxes, beta, [f"{n}@beta.localhost" for n in BETA_USERS])
        made = {**on_alpha.result(), **on_beta.result()}
    return {address.split("@")[0]: mailbox for address, mailbox in made.items()}


def test_send_goes_back_to_the_conversation_and_undo_reopens_the_draft(page: Any, people: dict[str, Mailbox]) -> None:
    dora, bern = people["dora"], people["bern"]
    subject = f"Dinner plans {token()}"
    send(dora, bern, subject, "Thai or pizza?")

    login(page, bern)
    open_row(inbox_row(page, bern, subject))
    conversation = page.url
    page.get_by_role("button", name="Reply", exact=True).click()
    page.get_by_label("Message", exact=True).fill(f"Thai, please. {token()}")
    page.get_by_role("button", name="Send", exact=True).click()

    # Back in the conversation at once, with the undo window counting down.
    expect(page).to_have_url(conversation)
    notice = page.get_by_test_id("undo-send")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("Sending in")
    notice.get_by_role("button", name="Undo").click()

    # Undo reopens the draft as it was; sending again goes back to the conversation.
    expect(page).to_have_url(re.compile(r"/compose/\d+/"))
    expect(page.get_by_label("Message", exact=True)).to_have_value(re.compile(r"^Thai, please\."))
    page.get_by_role("button", name="Send", exact=True).click()
    expect(page).to_have_url(conversation)
    sent = page.get_by_test_id("sent-notice")
    expect(sent).to_contain_text("Sent.", timeout=20_000)
    expect(sent.get_by_role("link", name="View it in Sent")).to_be_visible()
    listed_entry(dora, f"Re: {subject}")


def test_archive_and_label_changes_can_be_undone(page: Any, people: dict[str, Mailbox]) -> None:
    dan, bix = people["dan"], people["bix"]
    subject = f"Quarterly report {token()}"
    label = f"Work {token()}"
    send(dan, bix, subject, "Numbers attached soon.")

    login(page, bix)
    page.goto(f"{bix.origin}/mail/labels/")
    page.get_by_label("New label").fill(label)
    page.get_by_role("button", name="Create").click()

    row = inbox_row(page, bix, subject)
    row.get_by_role("checkbox").check()
    page.get_by_role("toolbar", name="Actions on selected messages").get_by_role("button", name="Archive").click()
    notice = page.get_by_test_id("undo-notice")
    expect(notice).to_contain_text("1 message archived.")
    expect(page.get_by_test_id("message-row").filter(has_text=subject)).to_have_count(0)
    notice.get_by_role("button", name="Undo").click()
    expect(page.get_by_test_id("message-row").filter(has_text=subject)).to_have_count(1)

    # A label applied from the open message shows on it; Undo takes it off again.
    open_row(page.get_by_test_id("message-row").filter(has_text=subject))
    labels = page.get_by_test_id("message-labels")
    labels.get_by_label("Label", exact=True).select_option(label=label)
    labels.get_by_role("button", name="Apply label").click()
    expect(page.get_by_test_id("message-label")).to_have_text([label + "×"])
    page.get_by_test_id("undo-notice").get_by_role("button", name="Undo").click()
    expect(page.get_by_test_id("message-label")).to_have_count(0)


def test_a_withdrawal_changes_an_open_inbox_live(page: Any, people: dict[str, Mailbox]) -> None:
    dee, bay = people["dee"], people["bay"]
    subject = f"Wrong numbers {token()}"
    login(page, bay)
    page.goto(f"{bay.origin}/mail/inbox/")
    sent = send(dee, bay, subject, "Please disregard.")
    row = page.get_by_test_id("message-row").filter(has_text=subject)
    expect(row).to_have_count(1, timeout=40_000)
    expect(row).to_have_class(re.compile(r"\bunread\b"))
    expect(page).to_have_title("(1) Inbox — Pushmail", timeout=20_000)
    page.evaluate("window.__marker = 1")

    assert dee.api("POST", f"messages/{sent['id']}/withdraw/").status_code in (200, 202)

    # Without a reload: marked withdrawn, no longer bold, no longer counted.
    expect(row).to_have_attribute("data-state", "withdrawn", timeout=40_000)
    expect(row).not_to_have_class(re.compile(r"\bunread\b"))
    expect(page).to_have_title("Inbox — Pushmail")
    assert page.evaluate("window.__marker") == 1, "the inbox was reloaded instead of updated in place"

    # Opened, it offers no reply or forward of what is gone.
    open_row(row)
    expect(page.locator("main")).to_contain_text("Withdrawn by the sender")
    expect(page.get_by_role("button", name="Reply", exact=True)).to_have_count(0)
    expect(page.get_by_role("button", name="Forward", exact=True)).to_have_count(0)


def test_sent_and_the_recipient_show_one_size_and_agree(context: Any, page: Any, people: dict[str, Mailbox]) -> None:
    dot, bud = people["dot"], people["bud"]
    subject = f"Floor plan {token()}"
    payload = {
        "to": [bud.address],
        "subject": subject,
        "text": "The plan, as promised.",
        "attachments": [{"name": "plan.txt", "type": "text/plain", "content": base64.b64encode(b"p" * 5000).decode()}],
    }
    response = dot.api("POST", "messages/", json=payload)
    assert response.status_code == 201, response.text

    login(page, dot)
    page.goto(f"{dot.origin}/mail/sent/")
    sent_row = page.get_by_test_id("sent-row").filter(has_text=subject)
    sent_size = sent_row.locator("td.size").inner_text().replace("\xa0", " ")

    bud_page = context.new_page()
    login(bud_page, bud)
    row = inbox_row(bud_page, bud, subject)
    expect(row).to_contain_text("at sender's")
    assert SIZE.findall(row.inner_text()) and len(SIZE.findall(row.inner_text())) == 1, row.inner_text()
    assert row.locator("td.size").inner_text().replace("\xa0", " ") == sent_size
    assert re.fullmatch(r"[\d.]+\sKiB", sent_size), sent_size


def test_compose_checks_files_and_subject_before_sending_and_keeps_no_empty_draft(
    context: Any, people: dict[str, Mailbox]
) -> None:
    bel, dora = people["bel"], people["dora"]
    page = context.new_page()
    dialogs: list[str] = []
    answer = {"accept": False}

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        if answer["accept"]:
            dialog.accept()
        else:
            dialog.dismiss()

    page.on("dialog", on_dialog)
    uploads: list[str] = []
    page.on("request", lambda request: uploads.append(request.url) if request.method == "POST" else None)
    login(page, bel)

    # Opened and tabbed through, then left: no draft.
    page.goto(f"{bel.origin}/compose/")
    page.get_by_label("To", exact=True).focus()
    for _ in range(5):
        page.keyboard.press("Tab")
    page.wait_for_timeout(2500)  # past the autosave delay
    page.goto(f"{bel.origin}/drafts/")
    expect(page.get_by_test_id("draft-row")).to_have_count(0)

    # Written in, then erased: the draft the first change made is gone again.
    page.goto(f"{bel.origin}/compose/")
    subject_box = page.get_by_label("Subject", exact=True)
    subject_box.fill("Maybe")
    subject_box.press("Tab")  # a change: autosave
    expect(page.locator("#autosave-status")).to_contain_text("Saved", timeout=10_000)
    subject_box.fill("")
    subject_box.press("Tab")
    wait_until(
        "the emptied draft to be discarded",
        lambda: "No drafts." in page.evaluate("async (u) => (await fetch(u)).text()", f"{bel.origin}/drafts/"),
        timeout=15,
    )

    # A file over the limit is refused at once, in the server's words, and nothing is uploaded.
    page.goto(f"{bel.origin}/compose/")
    page.get_by_label("To", exact=True).fill(dora.address)
    page.get_by_label("Message", exact=True).fill("Here is the video.")
    page.get_by_label("Subject", exact=True).fill("Video")
    big = 21 * 1024 * 1024
    page.get_by_label("Attach files").set_input_files(
        files=[{"name": "holiday.mp4", "mimeType": "video/mp4", "buffer": b"\0" * big}]
    )
    error = page.get_by_test_id("files-error")
    expect(error).to_contain_text("holiday.mp4 is larger than the 20 MiB limit for one attachment (21 MiB).")
    uploads.clear()
    page.get_by_role("button", name="Send", exact=True).click()
    page.wait_for_timeout(500)
    assert not [url for url in uploads if url.endswith(("/send/", "/attach/"))], uploads
    expect(page).to_have_url(re.compile(r"/compose/"))
    page.get_by_label("Attach files").set_input_files(files=[])

    # An empty subject asks first: No keeps the form, Yes sends and goes back to the inbox.
    page.get_by_label("Subject", exact=True).fill("")
    page.get_by_role("button", name="Send", exact=True).click()
    page.wait_for_timeout(500)
    assert dialogs == ["Send this message without a subject?"]
    expect(page).to_have_url(re.compile(r"/compose/"))
    answer["accept"] = True
    page.get_by_role("button", name="Send", exact=True).click()
    expect(page).to_have_url(re.compile(r"/mail/inbox/$"))
    expect(page.get_by_test_id("undo-send")).to_be_visible()
    assert len(dialogs) == 2
