"""Two real instances: an attachment stays at the sender's until a reader on the other side opens it.

alpha.test sends a message with a file; beta.test gets the manifest with the
notification, fetches the body when bob opens the message but the file only when
bob downloads it (in the background: the download answers "Fetching attachment…"
until beta's worker has it), verifies it, stores it once and serves identical bytes. A second
download, by API or in the page, is served from beta's copy.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator

import pytest
import requests

from tools.cluster import Instance

from .conftest import PASSWORD, Cluster, mailboxes, sql, start_cluster, unique


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = start_cluster(
        tmp_path_factory.mktemp("attachments"), {"it_att_alpha": ["alpha.test"], "it_att_beta": ["beta.test"]}
    )
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def alpha(cluster: Cluster) -> Instance:
    return cluster["it_att_alpha"]


@pytest.fixture(scope="module")
def beta(cluster: Cluster) -> Instance:
    return cluster["it_att_beta"]


def attachment_fetches(inst: Instance, subject: str) -> int:
    """How many times the sender's instance served an attachment of the message with this subject."""
    [(count,)] = sql(
        inst,
        "SELECT count(*) FROM outbox_attachmentfetch f "
        "JOIN outbox_messageattachment a ON a.id = f.attachment_id "
        f"JOIN outbox_message m ON m.id = a.message_id WHERE m.subject = '{subject}'",
    )
    return int(count)


def blobs_with(inst: Instance, digest: str) -> int:
    [(count,)] = sql(inst, f"SELECT count(*) FROM attachments_blob WHERE sha256 = '{digest.removeprefix('sha-256:')}'")
    return int(count)


def web_login(inst: Instance, address: str) -> requests.Session:
    """Sign in to the webmail with the address and password, as a browser would."""
    session = requests.Session()
    page = session.get(f"{inst.base_url}/accounts/login/", timeout=30)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token, page.text[:500]
    response = session.post(
        f"{inst.base_url}/accounts/login/",
        data={"csrfmiddlewaretoken": token.group(1), "login": address, "password": PASSWORD},
        headers={"Referer": f"{inst.base_url}/accounts/login/"},
        timeout=30,
    )
    assert response.status_code == 200 and "/accounts/login/" not in response.url, response.text[:500]
    return session


def download_when_here(session: requests.Session, url: str, timeout: float = 60.0) -> requests.Response:
    """A download of a file still at the sender's: 202 "Fetching attachment…" until beta's worker brought it."""
    deadline = time.monotonic() + timeout
    while True:
        response = session.get(url, timeout=60)
        if response.status_code != 202 or time.monotonic() > deadline:
            return response
        assert "Fetching attachment…" in response.text
        time.sleep(0.3)


def test_an_attachment_is_pulled_once_only_when_a_reader_opens_it(alpha: Instance, beta: Instance) -> None:
    [ann] = mailboxes(alpha, 1, prefix="ann")
    [bob] = mailboxes(beta, 1, prefix="bob")
    picture = b"\x89PNG\r\n\x1a\n" + os.urandom(300_000)  # large enough to cross many network reads
    digest = "sha-256:" + hashlib.sha256(picture).hexdigest()
    subject = unique("files-")

    sent = ann.session.post(
        ann.url("messages/"),
        json={
            "to": [bob.address],
            "subject": subject,
            "text": "The picture is attached.",
            "attachments": [
                {"name": "site plan.png", "type": "image/png", "content": base64.b64encode(picture).decode()}
            ],
        },
        timeout=60,
    )
    assert sent.status_code == 201, sent.text
    manifest = [{"name": "site plan.png", "type": "image/png", "size": len(picture), "digest": digest}]
    assert sent.json()["attachments"] == manifest

    # The notification carried the manifest; nothing was fetched for it.
    entry = bob.entry_with_subject(subject)
    [(stored,)] = sql(beta, f"SELECT attachments FROM mailbox_remotemessage WHERE subject = '{subject}'")
    assert (json.loads(stored) if isinstance(stored, str) else stored) == manifest
    assert attachment_fetches(alpha, subject) == 0 and blobs_with(beta, digest) == 0

    # Opening the message pulls the body, not the file.
    opened = bob.read_until(entry["id"], "fetched")
    assert opened["attachments"] == [{**manifest[0], "at_sender": True}]
    assert attachment_fetches(alpha, subject) == 0 and blobs_with(beta, digest) == 0

    # The download in the webmail starts the fetch; beta's worker fetches, verifies and stores,
    # and the very bytes are served.
    browser = web_login(beta, bob.address)
    url = f"{beta.base_url}/mail/entry/{entry['id']}/attachments/0/"
    first = browser.get(url, timeout=60)
    assert first.status_code == 202 and "Fetching attachment…" in first.text, first.text[:500]
    download = download_when_here(browser, url)
    assert download.status_code == 200, download.text[:500]
    assert download.content == picture
    assert download.headers["Content-Type"] == "application/octet-stream"
    assert download.headers["Content-Disposition"].startswith("attachment;")
    assert download.headers["X-Content-Type-Options"] == "nosniff"
    assert download.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert attachment_fetches(alpha, subject) == 1
    assert blobs_with(beta, digest) == 1

    # Later downloads, a preview and the API are served from beta's own copy.
    preview = browser.get(url, params={"inline": "1"}, timeout=60)
    assert preview.headers["Content-Type"] == "image/png" and preview.content == picture
    by_api = bob.session.get(bob.url(f"inbox/{entry['id']}/attachments/0/"), timeout=60)
    assert by_api.status_code == 200 and by_api.content == picture
    assert attachment_fetches(alpha, subject) == 1
    assert bob.open(entry["id"])[1]["attachments"][0]["at_sender"] is False


def test_a_reader_elsewhere_cannot_download_anothers_attachment(alpha: Instance, beta: Instance) -> None:
    [ann] = mailboxes(alpha, 1, prefix="ann")
    bob, eve = mailboxes(beta, 2, prefix="rcpt")
    subject = unique("private-")
    sent = ann.session.post(
        ann.url("messages/"),
        json={
            "to": [bob.address],
            "subject": subject,
            "text": "for bob",
            "attachments": [{"name": "a.txt", "type": "text/plain", "content": base64.b64encode(b"only bob").decode()}],
        },
        timeout=60,
    )
    assert sent.status_code == 201, sent.text
    entry = bob.entry_with_subject(subject)

    response = eve.session.get(eve.url(f"inbox/{entry['id']}/attachments/0/"), timeout=30)

    assert response.status_code == 404
    assert attachment_fetches(alpha, subject) == 0
