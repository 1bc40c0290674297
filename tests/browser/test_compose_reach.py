"""Compose knows, in real Chromium: a recipient at a legacy domain is marked while typing.

alpha.localhost and beta.localhost are two running instances (see conftest). A user
on alpha types recipients into To: one at beta (a Pushmail domain), one at alpha
itself and one at a domain with no Pushmail instance. Only the last is marked "will go
by ordinary email (SMTP)", and typing does not send a check per keystroke.
"""

from __future__ import annotations

import secrets
from typing import Any

from playwright.sync_api import expect

from tests.browser.harness import create_mailboxes, login
from tools.cluster import Instance

LEGACY = "legacy.invalid"  # resolves nowhere: no Pushmail instance there


def test_compose_marks_a_legacy_recipient_and_leaves_pushmail_and_local_ones_unmarked(
    page: Any, alpha: Instance
) -> None:
    [ann] = create_mailboxes(alpha, [f"reach-{secrets.token_hex(4)}@alpha.localhost"]).values()
    checks: list[str] = []
    page.on("request", lambda request: checks.append(request.url) if "/compose/reach/" in request.url else None)
    login(page, ann)
    page.goto(f"{ann.origin}/compose/")
    to = page.get_by_label("To", exact=True)
    marks = page.get_by_test_id("reach-to").get_by_test_id("recipient-reach")

    typed = f"bob@beta.localhost, amy@alpha.localhost, joe@{LEGACY}"
    to.press_sequentially(typed, delay=20)
    expect(marks).to_have_count(1)
    expect(marks).to_have_attribute("data-domain", LEGACY)
    expect(marks).to_have_text(
        f"joe@{LEGACY}: will go by ordinary email (SMTP): stored at the recipient's, cannot be withdrawn"
    )
    expect(page.locator("#autosave-status")).not_to_contain_text("ordinary email")
    # One check after a pause in typing (and one when the page loaded), not one per keystroke.
    assert len([url for url in checks if "to=" in url]) < len(typed) // 4, checks

    # Taking the legacy recipient out takes the mark away; the others never had one.
    to.fill("bob@beta.localhost, amy@alpha.localhost")
    to.dispatch_event("change")
    expect(marks).to_have_count(0)
    expect(page.get_by_test_id("recipient-reach")).to_have_count(0)

    # Cc is checked on its own.
    cc = page.get_by_label("Cc", exact=True)
    cc.press_sequentially(f"kim@{LEGACY}", delay=20)
    expect(page.get_by_test_id("reach-cc").get_by_test_id("recipient-reach")).to_have_attribute("data-reach", "smtp")
