"""Settings → Encryption in Chromium: a key made in the browser, locked with a passphrase, that GnuPG 2.2 reads.

The key is made by OpenPGP.js under the site's Content-Security-Policy. GnuPG then finds the public key
in beta's Web Key Directory (fetched over plain HTTP here: GnuPG itself asks WKD only over https, which the
test instances do not serve, so the test fetches the same URL and checks its hash is GnuPG's),
encrypts to it, and decrypts with the exported locked key only when given the passphrase. Alpha reads
the key through the federation endpoint, signed by beta.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import expect

from encryption.openpgp import wkd_hash
from tests.browser.harness import Mailbox, create_mailboxes, login
from tests.gnupg import GnuPG
from tools.cluster import Instance

pytestmark = pytest.mark.skipif(shutil.which("gpg") is None, reason="needs GnuPG (Debian's gnupg)")

PASSPHRASE = "ochre lantern quietly folds"  # noqa: S105 - test data


@pytest.fixture
def gnupg(tmp_path: Path) -> Iterator[dict[str, GnuPG]]:
    homes = {"owner": GnuPG(tmp_path / "owner"), "correspondent": GnuPG(tmp_path / "correspondent")}
    yield homes
    for home in homes.values():
        home.close()


@pytest.fixture(scope="module")
def kai(beta: Instance) -> Mailbox:
    return create_mailboxes(beta, ["kai@beta.localhost"])["kai@beta.localhost"]


def _fingerprint(page: Any) -> str:
    return page.get_by_test_id("key-fingerprint").inner_text().replace(" ", "")


def test_a_key_made_in_the_browser_is_locked_published_and_read_by_gnupg(
    page: Any, kai: Mailbox, alpha: Instance, beta: Instance, gnupg: dict[str, GnuPG], tmp_path: Path
) -> None:
    refused: list[str] = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    login(page, kai)
    page.goto(f"{kai.origin}/settings/")
    page.get_by_role("navigation", name="Settings").get_by_role("link", name="Encryption").click()
    expect(page.get_by_test_id("passphrase-warning")).to_contain_text(
        "If you lose your passphrase, you lose your encrypted mail."
    )
    page.get_by_label("Passphrase", exact=True).fill(PASSPHRASE)
    page.get_by_label("Passphrase again").fill(PASSPHRASE + "x")
    page.get_by_test_id("create-key").click()
    expect(page.get_by_test_id("encryption-browser-problem")).to_contain_text("The two passphrases differ.")
    page.get_by_label("Passphrase again").fill(PASSPHRASE)
    page.get_by_test_id("create-key").click()
    expect(page.get_by_test_id("key-fingerprint")).to_be_visible(timeout=60_000)
    fingerprint = _fingerprint(page)
    assert len(fingerprint) == 40
    assert refused == []

    # The exported key is the stored one: locked, a v4 key GnuPG 2.2 reads, usable only with the passphrase.
    with page.expect_download() as download:
        page.get_by_test_id("export-secret").click()
    exported = Path(download.value.path()).read_bytes()
    owner = gnupg["owner"]
    packets = owner.run("--list-packets", data=exported).decode()
    assert "version 4" in packets
    assert ":secret key packet:" in packets
    assert "protected" in packets  # gpg prints "[v4 protected]" for a locked secret part
    owner.run("--import", data=exported)
    with pytest.raises(subprocess.CalledProcessError):
        owner.run("--local-user", fingerprint, "--sign", data=b"x", passphrase="not the passphrase")
    owner.run("--local-user", fingerprint, "--sign", data=b"x", passphrase=PASSPHRASE)

    # The Web Key Directory: the path is GnuPG's for the address, the bytes import, and GnuPG encrypts to them.
    shown = owner.run("--with-wkd-hash", "--list-keys", fingerprint).decode()
    assert f"{wkd_hash('kai')}@beta.localhost" in shown
    wkd_url = f"http://127.0.0.1:{beta.port}/.well-known/openpgpkey/hu/{wkd_hash('kai')}?l=kai"
    served = requests.get(wkd_url, headers={"Host": "beta.localhost"}, timeout=30)
    assert served.status_code == 200
    assert served.headers["Content-Type"] == "application/octet-stream"
    correspondent = gnupg["correspondent"]
    correspondent.run("--import", data=served.content)
    secret_words = b"the heron leaves at dawn"
    encrypted = correspondent.run(
        "--trust-model", "always", "--armor", "--encrypt", "--recipient", "kai@beta.localhost", data=secret_words
    )
    with pytest.raises(subprocess.CalledProcessError):
        owner.run("--decrypt", data=encrypted, passphrase="not the passphrase")
    assert owner.run("--decrypt", data=encrypted, passphrase=PASSPHRASE) == secret_words

    # Alpha asks beta for Kai's keys through federation; the document is signed by beta.
    code = (
        "import json\n"
        "from federation.discovery import discover\n"
        "from federation.publickeys import fetch_public_keys\n"
        "keys = fetch_public_keys(instance=discover('beta.localhost'), address='kai@beta.localhost')\n"
        "print(json.dumps([[k.fingerprint, k.revoked] for k in keys]))\n"
    )
    assert json.loads(alpha.shell(code).strip().splitlines()[-1]) == [[fingerprint, False]]

    # Revoking needs the passphrase; the published key then says it is revoked.
    page.get_by_label("Passphrase").fill("not the passphrase")
    page.get_by_test_id("revoke-key").click()
    expect(page.get_by_test_id("encryption-browser-problem")).to_contain_text("Wrong passphrase")
    page.get_by_label("Passphrase").fill(PASSPHRASE)
    page.get_by_test_id("revoke-key").click()
    expect(page.get_by_test_id("revoked-keys")).to_contain_text(
        " ".join(fingerprint[i : i + 4] for i in range(0, 40, 4)), timeout=30_000
    )
    served = requests.get(wkd_url, headers={"Host": "beta.localhost"}, timeout=30)
    correspondent.run("--import", data=served.content)
    listing = correspondent.run("--with-colons", "--list-keys", fingerprint).decode()
    assert "pub:r:" in listing
    assert refused == []
