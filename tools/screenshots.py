"""Screenshots of the main webmail pages at desktop and phone widths: ``make screenshots``.

Starts two instances (alpha.localhost and beta.localhost, SQLite and the embedded broker,
on ports in 18850-18899), seeds a realistic mailbox for bob@beta.localhost with mail from
alpha (some already read, some still at the sender's, a conversation, attachments), and
saves PNGs of the inbox, a thread, compose, the fetching state, settings, search and a sent
message into
docs/screenshots/ with Debian's Chromium (/usr/bin/chromium; no browser is downloaded).
Every process it starts is stopped before it exits.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.browser.harness import (
    CHROMIUM,
    Mailbox,
    create_mailboxes,
    launch_chromium,
    login,
    make_png,
    port_in_range,
    start_pair,
    stop_all,
)
from tools.cluster import ROOT, Backend, Instance

OUT = ROOT / "docs" / "screenshots"
VIEWPORTS = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True},
}
PAGES = {
    "inbox": "Inbox: one row per conversation, read mail, and mail whose body is still at the sender's (with its size)",
    "thread": "A conversation opened as one thread, its unread messages expanded and pulled at once",
    "compose": "Compose, with To, Cc, Bcc, Subject, Markdown and attachments",
    "fetching": "Opening a message whose body is still at the sender's: the fetch indicator",
    "settings": "Settings: display name, signature, fetch policy, remote content, security",
    "search": "Search results: senders by name with their address, subjects at the width the page has",
    "sent": "A sent message and its delivery per recipient domain (a list at phone width)",
}
NAMES = {
    "ann@alpha.localhost": "Ann Archer",
    "carol@alpha.localhost": "Carol Chen",
    "dave@alpha.localhost": "Dave Dlamini",
    "bob@beta.localhost": "Bob Baker",
}


def wait(what: str, probe: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(0.3)
    raise RuntimeError(f"timed out waiting for {what}")


def send(sender: Mailbox, to: str, subject: str, text: str, **extra: Any) -> dict:
    response = sender.api("POST", "messages/", json={"to": [to], "subject": subject, "text": text, **extra})
    response.raise_for_status()
    return response.json()


def entry_id(user: Mailbox, subject: str) -> int:
    def probe() -> int | None:
        entries = user.api("GET", "inbox/").json()["results"]
        return next((e["id"] for e in entries if e["subject"] == subject), None)

    return wait(f"{subject!r} for {user.address}", probe)


def read(user: Mailbox, subject: str) -> None:
    """Open through the API until the body is here (as a phone app would have done)."""
    ident = entry_id(user, subject)
    wait(f"{subject!r} fetched", lambda: user.api("GET", f"inbox/{ident}/").status_code == 200)


def seed(alpha: Instance, beta: Instance) -> dict[str, Any]:
    people = {
        **create_mailboxes(alpha, [a for a in NAMES if a.endswith("@alpha.localhost")]),
        **create_mailboxes(beta, [a for a in NAMES if a.endswith("@beta.localhost")]),
    }
    for inst in (alpha, beta):
        inst.shell(
            "from accounts.models import User\n"
            f"for address, name in {NAMES!r}.items():\n"
            "    User.objects.filter(email=address).update(display_name=name)\n"
            "User.objects.filter(email='bob@beta.localhost').update(signature='Bob Baker\\nBeta Cooperative')\n"
        )
    ann, carol, dave, bob = (people[a] for a in NAMES)
    to_bob = bob.address

    # Carol's minutes with two attachments, stored once on alpha.
    alpha.shell(
        "from django.core.files.base import ContentFile\n"
        "from accounts.models import User\n"
        "from attachments.services import AttachmentInput, store_upload\n"
        "from outbox.services import send_message\n"
        "minutes = store_upload(file=ContentFile(b'Planning meeting, Tuesday\\n- budget agreed\\n- next: 3rd\\n',"
        " name='minutes.txt'))\n"
        f"board = store_upload(file=ContentFile({make_png(320, 200, (236, 239, 241))!r}, name='whiteboard.png'))\n"
        "send_message(sender=User.objects.get(email='carol@alpha.localhost'), to=[" + repr(to_bob) + "],"
        ' subject="Minutes from Tuesday\'s planning meeting",'
        " text='Hi Bob,\\n\\nMinutes and a photo of the whiteboard attached.\\n\\nCarol',"
        " attachments=[AttachmentInput(blob=minutes, name='minutes.txt', content_type='text/plain'),"
        " AttachmentInput(blob=board, name='whiteboard.png', content_type='image/png')])\n"
    )
    ride = send(dave, to_bob, "Bike ride on Saturday?", "Leaving from the bridge at nine. Coming along?\n\nDave")
    send(
        ann,
        to_bob,
        "Quarterly figures",
        "Revenue is up 12% on last quarter. Details inside.",
        html="<h2>Quarterly figures</h2><p>Revenue is <strong>up 12%</strong> on last quarter.</p>"
        "<ul><li>Members: 1,204</li><li>New this quarter: 87</li></ul>",
    )
    # A conversation: Bob asks, Ann answers.
    question = send(
        bob,
        ann.address,
        "Garden party on the 14th",
        "Hi Ann,\n\nWe're having a garden party on the 14th from 3pm. Can you make it?\n\nBob",
    )
    send(
        ann,
        to_bob,
        "Re: Garden party on the 14th",
        "Lovely idea! I'll bring a lemon cake.\n\nAnn\n\n> We're having a garden party on the 14th from 3pm.",
        in_reply_to=question["message_id"],
    )
    for subject in (
        "Minutes from Tuesday's planning meeting",
        "Bike ride on Saturday?",
        "Quarterly figures",
        "Re: Garden party on the 14th",
    ):
        read(bob, subject)
    # Two unread follow-ups to the bike ride: one conversation of three, opened with both expanded.
    send(
        dave, to_bob, "Re: Bike ride on Saturday?", "Forecast says sun all day.\n\nDave", in_reply_to=ride["message_id"]
    )
    send(
        carol,
        to_bob,
        "Re: Bike ride on Saturday?",
        "Count me in! I'll bring sandwiches for everyone.\n\nCarol",
        in_reply_to=ride["message_id"],
    )
    # Still at the sender's: listed with their size, fetched when opened.
    send(carol, to_bob, "Your library books are due Friday", "Three books are due back on Friday.")
    for n in (1, 2):
        send(dave, to_bob, f"Photos from the lake ({n} of 2)", "A few photos from the weekend at the lake.")
        entry_id(bob, f"Photos from the lake ({n} of 2)")
    return {"bob": bob, "ann": ann, "question": question["id"]}


def visit(page: Any, url: str) -> None:
    response = page.goto(url)
    if response is None or response.status >= 400:
        raise RuntimeError(f"{url} answered {response.status if response else 'nothing'}")


def shoot(page: Any, name: str, kind: str) -> Path:
    path = OUT / f"{name}-{kind}.png"
    page.wait_for_timeout(400)  # fonts and transitions settle
    page.screenshot(path=str(path), full_page=False, animations="disabled")
    return path


def capture(alpha: Instance, beta: Instance, seeded: dict[str, Any]) -> list[Path]:
    from playwright.sync_api import sync_playwright

    bob: Mailbox = seeded["bob"]
    saved: list[Path] = []
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as driver:
        chromium = launch_chromium(driver)
        try:
            contexts = {kind: chromium.new_context(device_scale_factor=1, **opts) for kind, opts in VIEWPORTS.items()}
            pages = {}
            for kind, ctx in contexts.items():
                page = ctx.new_page()
                login(page, bob)
                pages[kind] = page
            thread = entry_id(bob, "Re: Bike ride on Saturday?")
            for kind, page in pages.items():
                visit(page, f"{bob.origin}/mail/inbox/")
                saved.append(shoot(page, "inbox", kind))
                # The follow-ups unread again for each width: opening expands them and pulls their bodies.
                beta.shell(
                    "from mailbox.models import InboxEntry\n"
                    f"InboxEntry.objects.filter(owner__email={bob.address!r},"
                    " subject='Re: Bike ride on Saturday?').update(read=False)\n"
                )
                visit(page, f"{bob.origin}/mail/entry/{thread}/")
                page.get_by_test_id("message-body").nth(1).wait_for(timeout=30_000)
                saved.append(shoot(page, "thread", kind))
                visit(page, f"{bob.origin}/compose/")
                for label, value in (
                    ("To", "ann@alpha.localhost"),
                    ("Subject", "Directions for Saturday"),
                    ("Message", "Hi Ann,\n\nTake the **second** left after the bakery.\n\nBob"),
                ):
                    field = page.get_by_label(label, exact=True)
                    if field.count():
                        field.first.fill(value)
                page.keyboard.press("Escape")  # close any address suggestions
                saved.append(shoot(page, "compose", kind))
                visit(page, f"{bob.origin}/settings/")
                saved.append(shoot(page, "settings", kind))
                visit(page, f"{bob.origin}/settings/filters/")
                saved.append(shoot(page, "filters", kind))
                visit(page, f"{bob.origin}/settings/vacation/")
                saved.append(shoot(page, "vacation", kind))
                visit(page, f"{bob.origin}/search/?q=bike")
                saved.append(shoot(page, "search", kind))
                visit(page, f"{bob.origin}/mail/sent/{seeded['question']}/")
                saved.append(shoot(page, "sent", kind))
            # The fetching state: the page as first shown, before the body is swapped in.
            for n, (kind, page) in enumerate(pages.items(), start=1):
                page.route("**/body/**", lambda route: route.abort())
                visit(page, f"{bob.origin}/mail/entry/{entry_id(bob, f'Photos from the lake ({n} of 2)')}/")
                saved.append(shoot(page, "fetching", kind))
            for ctx in contexts.values():
                ctx.close()
        finally:
            chromium.close()
    return saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"{CHROMIUM} is missing: apt-get install chromium", file=sys.stderr)
        return 1
    base = Path(tempfile.mkdtemp(prefix="pushmail-screenshots-"))
    first = port_in_range(18850, 18900)
    ports = (first, port_in_range(18850, 18900, avoid={first}))
    print(f"starting alpha.localhost:{ports[0]} and beta.localhost:{ports[1]} …", flush=True)
    pair = start_pair(base, prefix="shots", ports=ports, backend=Backend.from_env())
    try:
        seeded = seed(pair["alpha"], pair["beta"])
        saved = capture(pair["alpha"], pair["beta"], seeded)
    except Exception:
        print(f"failed; the instances' logs are in {base}", file=sys.stderr)
        raise
    finally:
        stop_all(pair.values())
    for path in saved:
        print(f"  {path.relative_to(ROOT)}  ({path.stat().st_size // 1024} KB)")
    if not saved:
        return 1
    print(f"{len(saved)} screenshots in {OUT.relative_to(ROOT)}")
    shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
