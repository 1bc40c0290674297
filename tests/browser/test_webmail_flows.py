"""What a person does in the webmail, in a real browser, across two real instances.

alpha.localhost and beta.localhost are separate Pushmail instances (own processes, own
database); a message written on alpha is only announced to beta, and its body and
attachments are pulled from alpha when a reader on beta opens them. Each test uses its own
pair of mailboxes, so tests do not see each other's mail.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

from tests.browser.harness import CountingServer, Mailbox, create_mailboxes, login, make_png, shell_json
from tools.cluster import Instance

ALPHA_USERS = ["ann", "ada", "amy", "abe", "ari", "al", "tina", "pat"]
BETA_USERS = ["bob", "bea", "ben", "bev", "bo", "bree", "bia"]


@pytest.fixture(scope="module")
def people(alpha: Instance, beta: Instance) -> dict[str, Mailbox]:
    """Every mailbox these tests use, made in one Django start per instance."""
    with ThreadPoolExecutor(2) as pool:
        on_alpha = pool.submit(create_mailboxes, alpha, [f"{n}@alpha.localhost" for n in ALPHA_USERS])
        on_beta = pool.submit(create_mailboxes, beta, [f"{n}@beta.localhost" for n in BETA_USERS])
        made = {**on_alpha.result(), **on_beta.result()}
    return {address.split("@")[0]: mailbox for address, mailbox in made.items()}


# --- helpers ----------------------------------------------------------------------------------


def wait_until(what: str, probe: Callable[[], Any], timeout: float = 40.0, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")


def send(sender: Mailbox, to: Mailbox, subject: str, text: str, html: str | None = None) -> dict:
    """Send through the user API (what a mail client would do)."""
    payload: dict[str, Any] = {"to": [to.address], "subject": subject, "text": text}
    if html is not None:
        payload["html"] = html
    response = sender.api("POST", "messages/", json=payload)
    assert response.status_code == 201, response.text
    return response.json()


def listed_entry(user: Mailbox, subject: str) -> dict:
    """The user's inbox entry with this subject, from the API's list (listing opens nothing)."""

    def probe() -> dict | None:
        response = user.api("GET", "inbox/")
        assert response.status_code == 200, response.text
        return next((e for e in response.json()["results"] if e["subject"] == subject), None)

    return wait_until(f"{subject!r} in {user.address}'s inbox", probe)


def fetch_through_api(user: Mailbox, entry_id: int) -> None:
    """Open an entry through the API until its body is here (as another mail client would)."""
    wait_until(
        f"entry {entry_id} fetched for {user.address}",
        lambda: user.api("GET", f"inbox/{entry_id}/").status_code == 200,
    )


def inbox_row(page: Any, user: Mailbox, subject: str, timeout: float = 40.0) -> Any:
    """The inbox row for ``subject``, reloading the inbox until it is listed."""
    row = page.get_by_test_id("message-row").filter(has_text=subject)

    def probe() -> bool:
        page.goto(f"{user.origin}/mail/inbox/")
        return row.count() == 1

    wait_until(f"a row {subject!r} in {user.address}'s inbox", probe, timeout=timeout, interval=1.0)
    return row


def open_row(row: Any) -> None:
    """Click the message in the list as a mouse user does (whatever in the row takes the click)."""
    row.get_by_role("link").first.click(force=True)


def totp_now(secret: str, at: float | None = None) -> str:
    """RFC 6238: HMAC-SHA1, 30-second steps, 6 digits (allauth's defaults)."""
    key = base64.b32decode(secret, casefold=True)
    counter = int((time.time() if at is None else at) // 30)
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return f"{value % 1_000_000:06d}"


def enable_totp(user: Mailbox) -> str:
    """Turn on TOTP (and recovery codes) for the user on their instance; return the secret."""
    return shell_json(
        user.inst,
        "import json\n"
        "from accounts.models import User\n"
        "from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret\n"
        "from allauth.mfa.recovery_codes.internal.auth import RecoveryCodes\n"
        f"user = User.objects.get(email={user.address!r})\n"
        "secret = generate_totp_secret()\n"
        "TOTP.activate(user, secret)\n"
        "RecoveryCodes.activate(user)\n"
        "print(json.dumps(secret))\n",
    )


def token() -> str:
    return secrets.token_hex(4)


# --- accounts -----------------------------------------------------------------------------------


def test_login_with_password_and_totp_code(page: Any, people: dict[str, Mailbox]) -> None:
    tina = people["tina"]
    secret = enable_totp(tina)

    login(page, tina)
    # The password alone does not open the mailbox: a second step asks for the code.
    expect(page).to_have_url(re.compile(r"/accounts/2fa/authenticate/"))
    code_field = page.locator('input[name="code"]')
    wrong = f"{(int(totp_now(secret)) + 1) % 1_000_000:06d}"
    code_field.fill(wrong)
    code_field.press("Enter")
    expect(page).to_have_url(re.compile(r"/accounts/2fa/authenticate/"))
    expect(page.locator("body")).to_contain_text(re.compile(r"incorrect|invalid", re.I))

    # A fresh code (a new 30 s step if this one is about to run out) lets the user in.
    if time.time() % 30 > 25:
        time.sleep(30 - time.time() % 30 + 0.5)
    page.locator('input[name="code"]').fill(totp_now(secret))
    page.locator('input[name="code"]').press("Enter")
    expect(page).to_have_url(re.compile(r"/mail/inbox/$"))
    expect(page).to_have_title(re.compile(r"Inbox — Pushmail$"))


def test_passkey_added_then_used_to_sign_in(context: Any, page: Any, people: dict[str, Mailbox]) -> None:
    pat = people["pat"]
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    authenticator = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )["authenticatorId"]

    login(page, pat)
    expect(page).to_have_url(re.compile(r"/mail/inbox/$"))
    page.goto(f"{pat.origin}/accounts/2fa/webauthn/add/?passwordless=1")
    if "/reauthenticate/" in page.url:  # adding a key asks for the password again
        page.locator('input[name="password"]').fill(pat.password)
        page.locator('input[name="password"]').press("Enter")
        page.wait_for_url(re.compile(r"/webauthn/add/"))
    name = page.locator('input[name="name"]')
    if name.count():
        name.fill("Laptop")
    passwordless = page.locator('input[name="passwordless"]')
    if passwordless.count() and not passwordless.is_checked():
        passwordless.check()
    page.locator("#mfa_webauthn_add").click()
    page.wait_for_url(lambda url: "/webauthn/add/" not in url)
    credentials = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]
    assert len(credentials) == 1 and credentials[0]["isResidentCredential"], credentials
    assert credentials[0]["rpId"] == "alpha.localhost"

    # A new visit with no session: the passkey alone signs the user in.
    context.clear_cookies()
    page.goto(f"{pat.origin}/accounts/login/")
    page.locator("#passkey_login").click()
    expect(page).to_have_url(re.compile(r"/mail/inbox/$"))
    expect(page).to_have_title(re.compile(r"Inbox — Pushmail$"))


# --- the pull, made visible -----------------------------------------------------------------------


def test_message_with_attachment_is_pulled_when_opened(context: Any, page: Any, people: dict[str, Mailbox]) -> None:
    ann, bob = people["ann"], people["bob"]
    subject = f"Holiday photos {token()}"
    text = f"Here is the photo from the hike, {token()}."
    picture = make_png(64, 48, tuple(secrets.token_bytes(3)))  # unique bytes: a fresh blob on both sides
    file_name = f"hike-{token()}.png"

    # Ann writes on alpha, with an attachment.
    login(page, ann)
    page.goto(f"{ann.origin}/compose/")
    page.get_by_label("To", exact=True).fill(bob.address)
    page.get_by_label("Subject", exact=True).fill(subject)
    page.get_by_label("Message", exact=True).fill(text)
    page.get_by_label("Attach files").set_input_files(
        files=[{"name": file_name, "mimeType": "image/png", "buffer": picture}]
    )
    page.get_by_role("button", name="Send", exact=True).click()
    undo = page.get_by_test_id("undo-send")
    expect(undo).to_be_visible()
    expect(undo.get_by_role("button", name="Undo")).to_be_visible()

    # Bob on beta: listed, with its size, but the body is still at the sender's.
    beta_page = context.new_page()
    login(beta_page, bob)
    row = inbox_row(beta_page, bob, subject)
    expect(row).to_contain_text("at sender's")
    expect(row).to_contain_text(re.compile(r"\d+(\.\d+)?\s*(bytes|KiB|MiB)\b"))
    assert row.get_attribute("data-state") == "notified"
    expect(beta_page).to_have_title("(1) Inbox — Pushmail")

    # Opening it shows the indicator, then the body replaces it in place (no page reload).
    open_row(row)
    indicator = beta_page.get_by_test_id("fetch-indicator")
    indicator.wait_for()
    beta_page.evaluate("window.__marker = 1")
    expect(indicator).to_contain_text("Fetching from the sender's server")
    body = beta_page.get_by_test_id("message-body")
    expect(body).to_be_visible(timeout=30_000)
    expect(body).to_contain_text(text)
    expect(indicator).to_have_count(0)
    assert beta_page.evaluate("window.__marker") == 1, "the page was reloaded instead of swapping the body in"

    # The attachment comes from alpha only now, checked against its digest, byte for byte.
    link = beta_page.get_by_test_id("attachment-link").filter(has_text=file_name)
    expect(link).to_have_count(1)
    with beta_page.expect_download() as download_info:
        link.click()
    download = download_info.value
    assert download.suggested_filename == file_name
    with open(download.path(), "rb") as downloaded:
        assert downloaded.read() == picture
    headers = beta_page.evaluate(
        """async (url) => {
            const r = await fetch(url);
            return {status: r.status, nosniff: r.headers.get("x-content-type-options"),
                    disposition: r.headers.get("content-disposition") || ""};
        }""",
        link.get_attribute("href"),
    )
    assert headers["status"] == 200
    assert headers["nosniff"] == "nosniff"
    assert headers["disposition"].startswith("attachment"), headers

    # A raster image is previewed in the page (on request while the page still shows it at the sender's).
    show = beta_page.get_by_role("button", name="Show preview")
    if show.count():
        show.first.click()
    preview = beta_page.get_by_test_id("attachment-preview").first
    expect(preview).to_be_visible()
    if preview.evaluate("el => el.tagName") == "IMG":
        beta_page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=preview.element_handle())


def test_reply_from_beta_shows_as_a_thread_on_alpha(context: Any, page: Any, people: dict[str, Mailbox]) -> None:
    ada, bea = people["ada"], people["bea"]
    subject = f"Lunch on Friday {token()}"
    question = f"Shall we meet at noon? {token()}"
    answer = f"Noon works for me. {token()}"
    send(ada, bea, subject, question)

    login(page, bea)
    row = inbox_row(page, bea, subject)
    open_row(row)
    expect(page.get_by_test_id("message-body")).to_contain_text(question, timeout=30_000)
    page.get_by_role("button", name="Reply", exact=True).click()
    expect(page.get_by_label("To", exact=True)).to_have_value(re.compile(re.escape(ada.address)))
    expect(page.get_by_label("Subject", exact=True)).to_have_value(re.compile(r"^Re: " + re.escape(subject)))
    message = page.get_by_label("Message", exact=True)
    expect(message).to_have_value(re.compile(re.escape(question)))  # quoted
    message.fill(answer + "\n\n" + message.input_value())
    page.get_by_role("button", name="Send", exact=True).click()
    expect(page.get_by_test_id("undo-send")).to_be_visible()

    # Ada on alpha: the reply arrives and opens as one conversation with her message.
    alpha_page = context.new_page()
    login(alpha_page, ada)
    reply_row = inbox_row(alpha_page, ada, f"Re: {subject}")
    open_row(reply_row)
    thread = alpha_page.locator("main")
    expect(thread).to_contain_text(answer, timeout=30_000)
    expect(thread).to_contain_text(question)
    expect(thread).to_contain_text(subject)
    expect(thread).to_contain_text(bea.address)
    expect(thread).to_contain_text(ada.address)


def test_search_matches_fetched_bodies_and_subjects_of_the_rest(page: Any, people: dict[str, Mailbox]) -> None:
    amy, ben = people["amy"], people["ben"]
    body_word = f"marmalade{token()}"
    subject_word = f"quince{token()}"
    hidden_word = f"gooseberry{token()}"
    fetched_subject = f"Jam recipe {token()}"
    unfetched_subject = f"About the {subject_word} tree"
    send(amy, ben, fetched_subject, f"You need {body_word} and patience.")
    send(amy, ben, unfetched_subject, f"It still has {hidden_word} next to it.")
    fetch_through_api(ben, listed_entry(ben, fetched_subject)["id"])
    listed_entry(ben, unfetched_subject)

    login(page, ben)
    page.goto(f"{ben.origin}/mail/inbox/")

    def search(query: str) -> Any:
        box = page.get_by_role("searchbox", name="Search mail").first  # the one in the top bar
        box.fill(query)
        box.press("Enter")
        page.wait_for_url(re.compile(r"/search/\?"))
        return page.get_by_test_id("message-row")

    rows = search(body_word)
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(fetched_subject)

    rows = search(subject_word)
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(unfetched_subject)
    expect(rows.first).to_contain_text("at sender's")

    # A word only in a body still at the sender's is not found, and the page says why.
    rows = search(hidden_word)
    expect(rows).to_have_count(0)
    expect(page.locator("body")).to_contain_text(re.compile(r"subject and sender", re.I))


def test_withdrawn_message_shows_as_withdrawn_on_the_other_side(
    context: Any, page: Any, people: dict[str, Mailbox]
) -> None:
    abe, bev = people["abe"], people["bev"]
    subject = f"Wrong attachment {token()}"
    sent = send(abe, bev, subject, "Please ignore this one.")
    entry = listed_entry(bev, subject)

    login(page, abe)
    page.goto(f"{abe.origin}/mail/sent/{sent['id']}/")
    status = page.get_by_test_id("delivery-status")
    expect(status).to_contain_text("beta.localhost")
    expect(status).to_contain_text("notified")
    page.get_by_role("button", name="Withdraw").click()
    # A confirmation step ("Withdraw “…”? This cannot be undone.") is answered yes.
    confirm = page.get_by_role("heading", name=re.compile(r"^Withdraw .*\?"))
    try:
        confirm.wait_for(timeout=5_000)
    except PlaywrightTimeout:
        pass
    else:
        page.get_by_role("main").get_by_role("button", name="Withdraw").click()
    expect(page.locator("main")).to_contain_text(re.compile(r"withdrawn", re.I))

    wait_until(
        "the withdrawal to reach beta",
        lambda: (
            next((e["state"] for e in bev.api("GET", "inbox/").json()["results"] if e["id"] == entry["id"]), None)
            == "withdrawn"
        ),
    )
    beta_page = context.new_page()
    login(beta_page, bev)
    row = inbox_row(beta_page, bev, subject)
    assert row.get_attribute("data-state") == "withdrawn"
    beta_page.goto(f"{bev.origin}/mail/entry/{entry['id']}/")
    expect(beta_page.locator("main")).to_contain_text("Withdrawn by the sender")
    expect(beta_page.locator("main")).not_to_contain_text("Please ignore this one.")


def test_new_mail_appears_in_an_open_inbox_without_a_reload(page: Any, people: dict[str, Mailbox]) -> None:
    ann, bree = people["ann"], people["bree"]
    subject = f"Are you there? {token()}"
    login(page, bree)
    page.goto(f"{bree.origin}/mail/inbox/")
    expect(page.get_by_test_id("message-row")).to_have_count(0)
    page.evaluate("window.__marker = 1")

    send(ann, bree, subject, "Just checking the new inbox.")
    row = page.get_by_test_id("message-row").filter(has_text=subject)
    expect(row).to_have_count(1, timeout=40_000)
    expect(row).to_contain_text("at sender's")
    assert page.evaluate("window.__marker") == 1, "the inbox was reloaded instead of updated in place"


def test_main_pages_work_under_the_strict_content_security_policy(page: Any, people: dict[str, Mailbox]) -> None:
    """No page breaks its own policy (an inline script or style would be refused) or throws a script error."""
    bob = people["bob"]
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.on(
        "console",
        lambda msg: (
            problems.append(f"{msg.type}: {msg.text}")
            if msg.type == "error" and "Content Security Policy" in msg.text
            else None
        ),
    )
    login(page, bob)
    for path in ("/mail/inbox/", "/mail/sent/", "/drafts/", "/compose/", "/search/?q=hello", "/settings/"):
        response = page.goto(f"{bob.origin}{path}")
        assert response is not None and response.status == 200, f"{path}: {response and response.status}"
        assert response.headers.get("content-security-policy"), f"{path} has no Content-Security-Policy"
        page.wait_for_load_state("load")
    page.wait_for_timeout(500)
    assert problems == []


# --- HTML mail, safely --------------------------------------------------------------------------------


def test_hostile_html_mail_runs_nothing_and_loads_nothing_until_images_are_allowed(
    page: Any, people: dict[str, Mailbox], image_server: CountingServer
) -> None:
    ari, bo = people["ari"], people["bo"]
    mark = token()
    pixel = image_server.url(f"/pixel-{mark}.png")
    html = f"""<!doctype html><html><head>
<style>@import url("{image_server.url(f"/import-{mark}.css")}"); p {{ color: green; }}</style>
<script>window.top.__xss = "script"; alert("script");</script>
</head><body>
<p>Quarterly newsletter {mark}</p>
<img src="{pixel}" alt="logo">
<img src="x" onerror="window.top.__xss='onerror';alert('onerror')">
<svg xmlns="http://www.w3.org/2000/svg"><script>window.top.__xss='svg';alert('svg')</script>
<animate onbegin="alert('animate')" attributeName="x" dur="1s"/>
<image href="{image_server.url(f"/svg-{mark}.png")}" onload="alert('svgimage')"/>
<use href="data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9ImFsZXJ0KDEpIi8+#x"/></svg>
<a href="javascript:alert('link')">read more</a>
<div style="background:url({image_server.url(f"/bg-{mark}.png")})">styled</div>
</body></html>"""
    send(ari, bo, f"Newsletter {mark}", f"Quarterly newsletter {mark} (plain text)", html=html)

    login(page, bo)
    row = inbox_row(page, bo, f"Newsletter {mark}")
    open_row(row)
    frame_element = page.get_by_test_id("message-html")
    expect(frame_element).to_be_visible(timeout=30_000)
    assert frame_element.get_attribute("sandbox") is not None
    assert "allow-scripts" not in (frame_element.get_attribute("sandbox") or "")
    assert "allow-same-origin" not in (frame_element.get_attribute("sandbox") or "")
    frame = frame_element.element_handle().content_frame()
    frame.wait_for_load_state()
    expect(frame.locator("body")).to_contain_text(f"Quarterly newsletter {mark}")
    banner = page.get_by_test_id("remote-content-banner")
    expect(banner).to_be_visible()
    page.wait_for_timeout(1500)  # give any payload time to fire

    assert page.dialogs == [], f"a payload opened a dialog: {page.dialogs}"
    assert page.evaluate("window.__xss") is None
    assert [p for p in image_server.requests if mark in p] == [], "remote content loaded before it was allowed"

    # Allowing images for this message loads them through the instance's proxy, never from the browser.
    banner.get_by_role("button", name="Show images").click()
    wait_until(
        "the proxy to fetch the remote image",
        lambda: any(p.startswith(f"/pixel-{mark}.png") for p in image_server.requests),
        timeout=20,
    )
    shown = page.get_by_test_id("message-html").element_handle().content_frame().locator('img[alt="logo"]')
    expect(shown).to_have_js_property("naturalWidth", 1)  # the 1x1 image, through the proxy
    page.wait_for_timeout(1000)
    assert page.dialogs == [], f"a payload opened a dialog: {page.dialogs}"
    assert page.evaluate("window.__xss") is None
    assert not [p for p in image_server.requests if f"/import-{mark}" in p], "a CSS @import was followed"
    browser_hits = [(p, ua) for p, ua in image_server.hits if mark in p and "Chrome" in ua]
    assert browser_hits == [], "the reader's browser contacted the remote host directly"


# --- the sender's server away (last: it stops alpha's web server for a while) -------------------------


def test_unavailable_while_the_senders_server_is_down_then_the_body_arrives(
    page: Any, people: dict[str, Mailbox], alpha: Instance
) -> None:
    al, bia = people["al"], people["bia"]
    subject = f"Train times {token()}"
    text = f"The 8:15 is cancelled tomorrow. {token()}"
    send(al, bia, subject, text)
    listed_entry(bia, subject)

    login(page, bia)
    row = inbox_row(page, bia, subject)
    alpha.stop_web()
    try:
        open_row(row)
        main = page.locator("main")
        expect(main).to_contain_text(
            re.compile(r"Unavailable — the sender's server did not answer, retrying \(last try .+\)"), timeout=30_000
        )
        expect(page.get_by_test_id("message-body")).to_have_count(0)
        page.evaluate("window.__marker = 1")
    finally:
        alpha.start_web()
    body = page.get_by_test_id("message-body")
    expect(body).to_contain_text(text, timeout=40_000)
    assert page.evaluate("window.__marker") == 1, "the page was reloaded instead of swapping the body in"
