"""Encrypted mail between two instances, in Debian's Chromium, with OpenPGP.js in the pages.

ann@alpha.localhost and bob@beta.localhost make their keys in Settings → Encryption. Ann writes to
bob: Compose finds both keys and turns encryption on; her browser encrypts the text, the subject
(protected headers) and a file, and signs. Bob's browser opens it with his key, shows "signed by ann,
verified" and the file's bytes. A sentinel written into the subject, the text and the file appears
in neither instance's database, stored files or logs, nor in any byte that crossed between them (a
recording proxy sits between the instances). GnuPG decrypts with bob's exported key what ann's
browser encrypted and verifies her signature. A body changed at the sender after its notification is
refused by the digest check.

This module starts its own pair of instances, whose federation traffic goes through the proxy.
"""

from __future__ import annotations

import base64
import gzip
import re
import secrets
import socket
import subprocess
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.harness import (
    FAST_ENV,
    REDIS_DB_BASE,
    Mailbox,
    create_mailboxes,
    login,
    port_in_range,
    shell_json,
    stop_all,
)
from tests.browser.test_webmail_flows import listed_entry, wait_until
from tools.cluster import Backend, make_cluster

PASSPHRASES = {"ann": "ann's long passphrase", "bob": "bob's long passphrase"}
SENTINEL = "SENTINEL-" + secrets.token_hex(8).upper()


class RecordingProxy:
    """A TCP relay on loopback that keeps every byte it carries, both ways."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.chunks: list[bytes] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                with self.lock:
                    self.chunks.append(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    @property
    def recorded(self) -> bytes:
        with self.lock:
            return b"".join(self.chunks)

    def close(self) -> None:
        self.listener.close()


def forms_of(sentinel: str) -> list[bytes]:
    """The sentinel as it would show if it leaked: as is, hex (a bytea in a dump), base64 at each alignment."""
    raw = sentinel.encode()
    forms = [raw, raw.hex().encode()]
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + raw)[4:-4]  # the part that does not depend on the neighbours
        forms.append(encoded)
    return forms


def gunzipped(data: bytes) -> list[bytes]:
    """Every gzip stream found in data, decompressed (a leak must not hide in a compressed body)."""
    out = []
    for match in re.finditer(rb"\x1f\x8b\x08", data):
        try:
            out.append(zlib.decompressobj(31).decompress(data[match.start() :]))
        except zlib.error:
            continue
    return out


def leaks(data: bytes, sentinel: str = SENTINEL) -> bool:
    return any(form in blob for blob in [data, *gunzipped(data)] for form in forms_of(sentinel))


@pytest.fixture(scope="module")
def pair(browser_prerequisites: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """alpha and beta, each reaching the other only through a recording proxy."""
    backend = browser_prerequisites
    backend._redis_db = REDIS_DB_BASE + 6  # apart from the shared browser pair's databases
    specs = {"pgpmail_alpha": ["alpha.localhost"], "pgpmail_beta": ["beta.localhost"]}
    instances = make_cluster(tmp_path_factory.mktemp("pgpmail"), specs, backend=backend)
    first = port_in_range()
    ports = (first, port_in_range(avoid={first}))
    alpha, beta = instances["pgpmail_alpha"], instances["pgpmail_beta"]
    proxies = {}
    for inst, port in zip((alpha, beta), ports, strict=True):
        inst.port = port
        proxies[inst.domains[0]] = RecordingProxy(port)
    peers = {domain: f"http://127.0.0.1:{proxy.port}" for domain, proxy in proxies.items()}
    for inst in (alpha, beta):
        # Peers reach each other through the proxies: the discovery documents name them too.
        inst.extra_env = {**FAST_ENV, "PUSHMAIL_BASE_URL": peers[inst.domains[0]]}
        inst.peers = dict(peers)
        inst.env()
    try:
        for inst in (alpha, beta):
            inst.setup()
            inst.start()
        yield {"alpha": alpha, "beta": beta, "proxies": proxies}
    finally:
        stop_all([alpha, beta])
        for proxy in proxies.values():
            proxy.close()


@pytest.fixture(scope="module")
def people(pair: dict[str, Any]) -> dict[str, Mailbox]:
    ann = create_mailboxes(pair["alpha"], ["ann@alpha.localhost"])["ann@alpha.localhost"]
    bob = create_mailboxes(pair["beta"], ["bob@beta.localhost"])["bob@beta.localhost"]
    return {"ann": ann, "bob": bob}


def origin_of(user: Mailbox) -> str:
    return f"http://{user.inst.domains[0]}:{user.inst.port}"


def fetched(page: Any, path: str) -> bytes:
    """What the page's own origin answers for ``path``, fetched by the browser with its session."""
    encoded = page.evaluate(
        """async (path) => {
            const answer = await fetch(path, { credentials: "same-origin" });
            const bytes = new Uint8Array(await answer.arrayBuffer());
            let binary = "";
            for (const b of bytes) binary += String.fromCharCode(b);
            return btoa(binary);
        }""",
        path,
    )
    return base64.b64decode(encoded)


def make_key(page: Any, user: Mailbox, passphrase: str) -> str:
    """Create the user's key in Settings → Encryption; return its fingerprint as shown."""
    page.goto(f"{origin_of(user)}/settings/encryption/")
    page.locator("#key-passphrase").fill(passphrase)
    page.locator("#key-passphrase-again").fill(passphrase)
    page.get_by_test_id("create-key").click()
    fingerprint = page.get_by_test_id("key-fingerprint")
    expect(fingerprint).to_be_visible(timeout=30_000)
    return fingerprint.inner_text().replace(" ", "")


def compose_encrypted(page: Any, ann: Mailbox, to: str, subject: str, text: str, files: list[dict]) -> None:
    page.goto(f"{origin_of(ann)}/compose/")
    page.locator("#compose-to").fill(to)
    panel = page.get_by_test_id("encryption-panel")
    expect(panel).to_have_attribute("data-encryption", "on", timeout=20_000)
    expect(page.get_by_test_id("encrypt-toggle")).to_be_checked()
    expect(page.get_by_test_id("encryption-status")).to_contain_text("Encrypted")
    page.locator("#compose-subject").fill(subject)
    page.locator("#compose-text").fill(text)
    if files:
        page.locator("#compose-files").set_input_files(files)


@pytest.fixture(scope="module")
def keyed(browser: Any, people: dict[str, Mailbox]) -> dict[str, str]:
    fingerprints = {}
    for name, user in people.items():
        ctx = browser.new_context()
        page = ctx.new_page()
        login(page, user)
        fingerprints[name] = make_key(page, user, PASSPHRASES[name])
        ctx.close()
    return fingerprints


def test_encrypted_message_with_a_file_is_read_by_bob_and_no_server_sees_the_plaintext(
    browser: Any, pair: dict[str, Any], people: dict[str, Mailbox], keyed: dict[str, str], tmp_path: Path
) -> None:
    ann, bob = people["ann"], people["bob"]
    subject = f"Subject {SENTINEL} secret plans"
    text = f"Dear Bob,\nthe text holds {SENTINEL} too.\n"
    file_bytes = b"\x00\x01binary " + SENTINEL.encode() + b" file\xff" + secrets.token_bytes(3000)

    ann_ctx = browser.new_context(accept_downloads=True)
    ann_page = ann_ctx.new_page()
    ann_page.set_default_timeout(30_000)
    login(ann_page, ann)
    compose_encrypted(
        ann_page,
        ann,
        bob.address,
        subject,
        text,
        [{"name": "plans.bin", "mimeType": "application/x-plans", "buffer": file_bytes}],
    )
    # A wrong passphrase is refused in the browser: nothing is sent.
    ann_page.get_by_test_id("encrypt-passphrase").fill("not the passphrase")
    ann_page.get_by_test_id("send").click()
    expect(ann_page.get_by_test_id("encryption-problem")).to_contain_text("Wrong passphrase")
    ann_page.get_by_test_id("encrypt-passphrase").fill(PASSPHRASES["ann"])
    ann_page.get_by_test_id("send").click()
    ann_page.wait_for_url(re.compile(r"/mail/sent/[0-9a-f-]+/$"))
    expect(ann_page.get_by_test_id("encrypted-message")).to_be_visible()

    # Bob: the notification says only "..."; his browser opens the message.
    entry = listed_entry(bob, "...")
    bob_ctx = browser.new_context(accept_downloads=True)
    page = bob_ctx.new_page()
    page.set_default_timeout(30_000)
    login(page, bob)
    page.goto(f"{origin_of(bob)}/mail/entry/{entry['id']}/")
    box = page.get_by_test_id("encrypted-message")
    expect(box).to_be_visible(timeout=30_000)
    page.get_by_test_id("encrypted-passphrase").fill("wrong wrong wrong")
    page.get_by_test_id("encrypted-open").click()
    expect(page.get_by_test_id("encrypted-problem")).to_contain_text("Wrong passphrase")
    expect(page.get_by_test_id("decrypted-text")).to_be_hidden()
    page.get_by_test_id("encrypted-passphrase").fill(PASSPHRASES["bob"])
    page.get_by_test_id("encrypted-open").click()
    expect(page.get_by_test_id("decrypted-subject")).to_have_text(subject)
    expect(page.get_by_test_id("decrypted-text")).to_contain_text(f"the text holds {SENTINEL} too.")
    expect(page.get_by_test_id("signature-status")).to_have_text("✔ Signed by ann@alpha.localhost, verified.")
    with page.expect_download() as download_info:
        page.get_by_test_id("decrypted-attachment").click()
    download = download_info.value
    assert download.suggested_filename == "plans.bin"
    assert Path(download.path()).read_bytes() == file_bytes

    # GnuPG reads what ann's browser wrote, with bob's exported (locked) key, and checks ann's signature.
    armored_message = page.locator("[data-ciphertext]").text_content()
    file_url = page.locator("[data-encrypted-file]").first.get_attribute("data-url")
    encrypted_file = fetched(page, file_url)
    bob_secret = fetched(page, "/settings/encryption/export/secret.asc").decode()
    ann_public = fetched(ann_page, "/settings/encryption/export/public.asc").decode()
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback"]
    for key in (bob_secret, ann_public):
        subprocess.run([*gpg, "--import"], input=key.encode(), check=True, capture_output=True)
    opened = subprocess.run(
        [*gpg, "--passphrase", PASSPHRASES["bob"], "--status-fd", "2", "--decrypt"],
        input=armored_message.encode(),
        capture_output=True,
        check=True,
    )
    mime = opened.stdout.decode()
    assert 'protected-headers="v1"' in mime and f"Subject: {subject}" in mime
    assert base64.b64encode(text.encode()).decode()[:40] in mime.replace("\r\n", "")
    assert f"VALIDSIG {keyed['ann']}".encode() in opened.stderr or b"GOODSIG" in opened.stderr, opened.stderr
    assert b"GOODSIG" in opened.stderr
    opened_file = subprocess.run(
        [*gpg, "--passphrase", PASSPHRASES["bob"], "--status-fd", "2", "--decrypt"],
        input=encrypted_file,
        capture_output=True,
        check=True,
    )
    assert opened_file.stdout == file_bytes
    assert b"GOODSIG" in opened_file.stderr

    ann_ctx.close()
    bob_ctx.close()

    # The sentinel is nowhere a server keeps or sends anything.
    for inst in (pair["alpha"], pair["beta"]):
        dump = subprocess.run(["pg_dump", "--data-only", inst.database_url], capture_output=True, check=True).stdout
        assert SENTINEL.encode() not in dump and not leaks(dump), f"{inst.name}'s database holds the plaintext"
        assert b"encrypted-1.pgp" in dump  # the dump does hold the message
        for path in inst.data_dir.rglob("*"):
            if path.is_file():
                assert not leaks(path.read_bytes()), f"{path.name} of {inst.name} holds the plaintext"
    for domain, proxy in pair["proxies"].items():
        traffic = proxy.recorded
        assert b"/federation/v1/" in traffic, f"nothing crossed to {domain}"
        assert not leaks(traffic), f"the traffic to {domain} holds the plaintext"
    # and the checks would have seen it: the bytes GnuPG opened do hold it
    assert leaks(mime.encode()) and leaks(gzip.compress(file_bytes))


def test_a_body_changed_at_the_sender_after_its_notification_is_refused_by_the_digest(
    browser: Any, pair: dict[str, Any], people: dict[str, Mailbox], keyed: dict[str, str]
) -> None:
    ann, bob = people["ann"], people["bob"]
    before = {e["id"] for e in bob.api("GET", "inbox/").json()["results"]}
    ctx = browser.new_context()
    page = ctx.new_page()
    page.set_default_timeout(30_000)
    login(page, ann)
    compose_encrypted(page, ann, bob.address, "to be tampered", "This will be changed on the way.", [])
    page.get_by_test_id("encrypt-passphrase").fill(PASSPHRASES["ann"])
    page.get_by_test_id("send").click()
    page.wait_for_url(re.compile(r"/mail/sent/([0-9a-f-]+)/$"))
    message_id = page.url.rstrip("/").rsplit("/", 1)[1]
    # One character of the ciphertext changes in alpha's database, after bob's instance was notified.
    changed = shell_json(
        pair["alpha"],
        "import json\n"
        "from outbox.models import Message\n"
        f"m = Message.objects.get(pk='{message_id}')\n"
        "lines = m.text.split('\\n')\n"
        "i = 3\n"
        "lines[i] = ('B' if lines[i][0] != 'B' else 'C') + lines[i][1:]\n"
        "m.text = '\\n'.join(lines)\n"
        "m.save(update_fields=['text'])\n"
        "print(json.dumps(m.encrypted))\n",
    )
    assert changed is True
    newest = wait_until(
        "the new encrypted entry in bob's inbox",
        lambda: next((e for e in bob.api("GET", "inbox/").json()["results"] if e["id"] not in before), None),
    )
    assert newest["subject"] == "..."
    login(page, bob)
    page.goto(f"{origin_of(bob)}/mail/entry/{newest['id']}/")
    expect(page.get_by_test_id("fetch-state")).to_contain_text("Tampered — the body did not match its notification")
    expect(page.get_by_test_id("encrypted-message")).to_have_count(0)
    ctx.close()
