"""Newsletters in a real browser across two real instances: a reader at beta subscribes from a
list's public page at alpha (confirming on their own instance), reads an issue in Newsletters,
and leaves in one click from the issue itself."""

from __future__ import annotations

import re
import secrets
from typing import Any

from playwright.sync_api import expect

from tests.browser.harness import create_mailboxes, shell_json
from tools.cluster import Instance


def test_subscribe_from_the_public_page_read_an_issue_and_leave_in_one_click(
    page: Any, alpha: Instance, beta: Instance
) -> None:
    tag = secrets.token_hex(4)
    owner = create_mailboxes(alpha, [f"owner-{tag}@alpha.localhost"])[f"owner-{tag}@alpha.localhost"]
    reader = create_mailboxes(beta, [f"reader-{tag}@beta.localhost"])[f"reader-{tag}@beta.localhost"]
    slug = f"news-{tag}"
    shell_json(
        alpha,
        "import json\n"
        "from accounts.models import User\n"
        "from newsletters import services\n"
        f"services.create_newsletter(owner=User.objects.get(email={owner.address!r}),"
        f" address='{slug}@alpha.localhost', name='Alpha Weekly', slug={slug!r})\n"
        "print(json.dumps(True))\n",
    )

    # The public page at alpha: the reader gives their address and is sent to their own instance.
    page.goto(f"{owner.origin}/n/{slug}/")
    expect(page.get_by_role("heading", name="Alpha Weekly")).to_be_visible()
    page.get_by_label("Your address").fill(reader.address)
    page.get_by_role("button", name="Subscribe").click()
    page.wait_for_url(re.compile(r".*/(newsletters/subscribe|accounts/login)/.*"))
    page.wait_for_load_state()
    if "/accounts/login/" in page.url:  # not signed in at beta yet: sign in, then back to the confirm page
        page.locator('input[name="login"]').fill(reader.address)
        page.locator('input[name="password"]').fill(reader.password)
        page.locator('input[name="password"]').press("Enter")
        page.wait_for_load_state()
    expect(page.get_by_role("heading", name=re.compile("Subscribe to Alpha Weekly"))).to_be_visible()
    page.get_by_test_id("confirm-subscribe").click()
    state = page.get_by_test_id("subscription-state")
    expect(state).to_be_visible()
    # Shown done only once alpha acknowledged it.
    for _ in range(60):
        if state.get_attribute("data-state") == "active":
            break
        page.wait_for_timeout(500)
        page.reload()
    expect(state).to_have_text("Subscribed")
    base = page.url.split("/settings/")[0]

    # An issue arrives in Newsletters, not the Inbox.
    subject = f"Issue {tag}"
    shell_json(
        alpha,
        "import json\n"
        "from newsletters import services\n"
        "from newsletters.models import Newsletter\n"
        f"services.publish_issue(newsletter=Newsletter.objects.get(slug={slug!r}), subject={subject!r},"
        " text='Hello from alpha.')\n"
        "print(json.dumps(True))\n",
    )
    row = page.get_by_test_id("message-row").filter(has_text=subject)
    for _ in range(60):
        page.goto(f"{base}/mail/news/")
        if row.count():
            break
        page.wait_for_timeout(500)
    expect(row).to_be_visible()
    page.goto(f"{base}/mail/inbox/")
    expect(page.get_by_test_id("message-row").filter(has_text=subject)).to_have_count(0)

    # Open it; leave in one click from the issue.
    page.goto(f"{base}/mail/news/")
    row.click()
    expect(page.locator("body")).to_contain_text("Hello from alpha.")
    page.get_by_test_id("issue-unsubscribe").click()
    expect(page.get_by_test_id("list-issue")).to_contain_text("Unsubscribing")
    for _ in range(60):
        page.goto(f"{base}/settings/subscriptions/")
        if page.get_by_test_id("subscription-state").get_attribute("data-state") == "unsubscribed":
            break
        page.wait_for_timeout(500)
    expect(page.get_by_test_id("subscription-state")).to_have_text("Unsubscribed")
    assert (
        shell_json(
            alpha,
            "import json\n"
            "from newsletters.models import Subscriber\n"
            f"print(json.dumps(Subscriber.objects.get(address={reader.address!r}).state))\n",
        )
        == "unsubscribed"
    )
