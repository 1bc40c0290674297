"""Settings → Encryption, the Web Key Directory and the federation key document, checked with Debian's GnuPG.

The keys are made by GnuPG (the program people's existing keys come from); what the instance stores and
serves is read back by GnuPG too. The key made in the browser is checked in tests/browser.
"""

from __future__ import annotations

import html
import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.test import Client

from accounts.models import User
from encryption.models import OpenPGPKey
from encryption.openpgp import wkd_hash
from federation import discovery, publickeys
from tests.conftest import LOCAL
from tests.factories import MailboxFactory
from tests.gnupg import GnuPG

pytestmark = pytest.mark.skipif(shutil.which("gpg") is None, reason="needs GnuPG (Debian's gnupg)")

PASSPHRASE = "correct horse battery staple"  # noqa: S105 - test data
UPLOAD = "/settings/encryption/key/"
REVOKE = "/settings/encryption/revoke/"


@dataclass
class Keys:
    locked: str
    locked_fingerprint: str
    unlocked: str
    other_address: str
    rsa_locked: str
    rsa_fingerprint: str
    public_only: str
    maker: GnuPG


ADDRESS = f"ann@{LOCAL}"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    base = tmp_path_factory.mktemp("gnupg")
    ann = GnuPG(base / "ann")
    fingerprint = ann.make_key(f"Ann Example <{ADDRESS}>", passphrase=PASSPHRASE)
    open_ = GnuPG(base / "open")
    open_.make_key(f"Ann Open <{ADDRESS}>", passphrase="")
    other = GnuPG(base / "other")
    other.make_key("Mallory <mallory@elsewhere.test>", passphrase=PASSPHRASE)
    rsa = GnuPG(base / "rsa")
    rsa_fingerprint = rsa.make_key(f"Ann RSA <{ADDRESS}>", passphrase=PASSPHRASE, algorithm="rsa2048")
    made = Keys(
        locked=ann.export_secret(ADDRESS, passphrase=PASSPHRASE),
        locked_fingerprint=fingerprint,
        unlocked=open_.export_secret(ADDRESS, passphrase=""),
        other_address=other.export_secret("mallory@elsewhere.test", passphrase=PASSPHRASE),
        rsa_locked=rsa.export_secret(ADDRESS, passphrase=PASSPHRASE),
        rsa_fingerprint=rsa_fingerprint,
        public_only=ann.run("--armor", "--export", ADDRESS).decode(),
        maker=ann,
    )
    yield made
    for home in (ann, open_, other, rsa):
        home.close()


@pytest.fixture
def ann(local_domain: Any) -> User:
    return MailboxFactory(domain=local_domain, local_part="ann")


@pytest.fixture
def browser(ann: User, settings: Any) -> Client:
    settings.ALLOWED_HOSTS = ["*"]
    client = Client()
    client.force_login(ann)
    return client


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[GnuPG]:
    """A correspondent's GnuPG, which has never seen Ann's key."""
    home = GnuPG(tmp_path / "reader")
    yield home
    home.close()


@pytest.fixture
def wkd(settings: Any) -> Iterator[Client]:
    settings.ALLOWED_HOSTS = ["*"]
    yield Client()


def _upload(browser: Client, armored: str) -> Any:
    return browser.post(UPLOAD, {"secret_key": armored})


def _page_text(response: Any) -> str:
    return html.unescape(" ".join(response.content.decode().split()))


# --- storing a key ---------------------------------------------------------------------------


def test_a_locked_gnupg_key_is_stored_with_its_fingerprint_and_shown(browser: Client, keys: Keys, ann: User) -> None:
    response = _upload(browser, keys.locked)
    assert response.status_code == 302
    key = OpenPGPKey.objects.get(user=ann)
    assert key.fingerprint == keys.locked_fingerprint
    page = _page_text(browser.get("/settings/encryption/"))
    grouped = " ".join(keys.locked_fingerprint[i : i + 4] for i in range(0, 40, 4))
    assert grouped in page
    assert "If you lose your passphrase, you lose your encrypted mail." in page
    assert "Export your locked key" in page


def test_the_published_key_holds_no_secret_part(browser: Client, keys: Keys, reader: GnuPG) -> None:
    _upload(browser, keys.locked)
    public = bytes(OpenPGPKey.objects.get().public_key)
    packets = reader.run("--list-packets", data=public).decode()
    assert ":public key packet:" in packets
    assert ":public sub key packet:" in packets
    assert "secret" not in packets
    reader.run("--import", data=public)
    assert reader.fingerprints(ADDRESS) == [keys.locked_fingerprint]
    assert reader.fingerprints(ADDRESS, secret=True) == []


def test_the_exported_secret_key_is_still_locked(browser: Client, keys: Keys, reader: GnuPG) -> None:
    _upload(browser, keys.locked)
    exported = browser.get("/settings/encryption/export/secret.asc")
    assert exported.status_code == 200
    assert exported["Content-Type"].startswith("application/pgp-keys")
    assert "attachment" in exported["Content-Disposition"]
    reader.run("--import", data=exported.content)
    # Signing needs the secret key unlocked: refused with a wrong passphrase, done with the right one.
    with pytest.raises(subprocess.CalledProcessError):
        reader.run("--local-user", ADDRESS, "--sign", data=b"hello", passphrase="wrong passphrase")
    assert reader.run("--local-user", ADDRESS, "--sign", data=b"hello", passphrase=PASSPHRASE)


def test_an_rsa_key_from_gnupg_is_accepted(browser: Client, keys: Keys) -> None:
    assert _upload(browser, keys.rsa_locked).status_code == 302
    assert OpenPGPKey.objects.get().fingerprint == keys.rsa_fingerprint
    assert OpenPGPKey.objects.get().algorithm == "RSA 2048"


@pytest.mark.parametrize(
    ("which", "problem"),
    [
        ("unlocked", "the secret key is not locked with a passphrase"),
        ("other_address", f"the key has no user ID for {ADDRESS} (it has 'Mallory <mallory@elsewhere.test>')"),
        ("public_only", "this is a public key; upload your secret key, locked with a passphrase"),
    ],
)
def test_an_unfit_key_is_refused_with_400_naming_the_problem(
    browser: Client, keys: Keys, which: str, problem: str
) -> None:
    response = _upload(browser, getattr(keys, which))
    assert response.status_code == 400
    assert problem in _page_text(response)
    assert not OpenPGPKey.objects.exists()


@pytest.mark.parametrize(
    ("uploaded", "problem"),
    [
        ("hello, this is not a key", "no armored OpenPGP key found"),
        ("-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n!!!!\n-----END PGP PRIVATE KEY BLOCK-----", "base64 does not"),
        ("", "Paste your locked secret key"),
    ],
)
def test_garbage_is_refused_with_400(browser: Client, uploaded: str, problem: str) -> None:
    response = _upload(browser, uploaded)
    assert response.status_code == 400
    assert problem in _page_text(response)
    assert not OpenPGPKey.objects.exists()


def test_a_damaged_key_is_refused_by_its_checksum(browser: Client, keys: Keys) -> None:
    lines = keys.locked.splitlines()
    middle = len(lines) // 2
    lines[middle] = lines[middle][:10] + ("A" if lines[middle][10] != "A" else "B") + lines[middle][11:]
    response = _upload(browser, "\n".join(lines))
    assert response.status_code == 400
    assert "checksum does not match" in _page_text(response)
    assert not OpenPGPKey.objects.exists()


def test_a_second_key_needs_the_first_revoked(browser: Client, keys: Keys) -> None:
    _upload(browser, keys.locked)
    response = _upload(browser, keys.rsa_locked)
    assert response.status_code == 409
    assert "revoke it before" in _page_text(response)
    assert OpenPGPKey.objects.count() == 1


# --- revoking --------------------------------------------------------------------------------


def test_a_revocation_is_published_with_the_key(browser: Client, wkd: Client, keys: Keys, reader: GnuPG) -> None:
    _upload(browser, keys.locked)
    certificate = keys.maker.revocation_certificate(keys.locked_fingerprint)
    assert browser.post(REVOKE, {"revocation": certificate}).status_code == 302
    served = wkd.get(f"/.well-known/openpgpkey/hu/{wkd_hash('ann')}", HTTP_HOST=LOCAL)
    reader.run("--import", data=served.content)
    listing = reader.run("--with-colons", "--list-keys", ADDRESS).decode()
    assert listing.startswith("tru:") or "pub:r:" in listing
    assert "pub:r:" in listing
    # A new key may now be stored; the revoked one stays published after it.
    assert _upload(browser, keys.rsa_locked).status_code == 302
    page = _page_text(browser.get("/settings/encryption/"))
    assert "Revoked keys" in page


def test_a_revocation_by_another_key_is_refused(browser: Client, keys: Keys, tmp_path: Path) -> None:
    _upload(browser, keys.locked)
    stranger = GnuPG(tmp_path / "stranger")
    fingerprint = stranger.make_key(f"Not Ann <{ADDRESS}>", passphrase=PASSPHRASE)
    stranger.close()
    response = browser.post(REVOKE, {"revocation": stranger.revocation_certificate(fingerprint)})
    assert response.status_code == 400
    assert f"is not signed by key {keys.locked_fingerprint}" in _page_text(response)
    assert OpenPGPKey.objects.get().revoked_at is None


# --- the Web Key Directory --------------------------------------------------------------------


def test_the_wkd_hash_is_gnupgs(keys: Keys) -> None:
    shown = keys.maker.run("--with-wkd-hash", "--list-keys", ADDRESS).decode()
    assert f"{wkd_hash('ann')}@{LOCAL}" in shown
    assert f"{wkd_hash('Ann')}@{LOCAL}" in shown  # the local part is lowercased first


def test_wkd_direct_layout_serves_the_binary_key_gnupg_imports(
    browser: Client, wkd: Client, keys: Keys, reader: GnuPG
) -> None:
    _upload(browser, keys.locked)
    path = f"/.well-known/openpgpkey/hu/{wkd_hash('ann')}"
    served = wkd.get(path, {"l": "ann"}, HTTP_HOST=LOCAL)
    assert served.status_code == 200
    assert served["Content-Type"] == "application/octet-stream"
    assert served["Access-Control-Allow-Origin"] == "*"
    assert not served.content.startswith(b"-----BEGIN")
    reader.run("--import", data=served.content)
    assert reader.fingerprints(ADDRESS) == [keys.locked_fingerprint]
    assert wkd.get("/.well-known/openpgpkey/policy", HTTP_HOST=LOCAL).status_code == 200
    assert wkd.head(path, HTTP_HOST=LOCAL).status_code == 200


def test_wkd_advanced_layout_is_routed_by_host(browser: Client, wkd: Client, keys: Keys, reader: GnuPG) -> None:
    _upload(browser, keys.locked)
    path = f"/.well-known/openpgpkey/{LOCAL}/hu/{wkd_hash('ann')}"
    served = wkd.get(path, {"l": "ann"}, HTTP_HOST=f"openpgpkey.{LOCAL}")
    assert served.status_code == 200
    reader.run("--import", data=served.content)
    assert reader.fingerprints(ADDRESS) == [keys.locked_fingerprint]
    assert wkd.get(f"/.well-known/openpgpkey/{LOCAL}/policy", HTTP_HOST=f"openpgpkey.{LOCAL}").status_code == 200
    # Another hosted domain's host does not answer for this one.
    MailboxFactory(local_part="x", domain__name="other.test")
    discovery.forget_hosted_domains()
    assert wkd.get(path, HTTP_HOST="openpgpkey.other.test").status_code == 404


def test_wkd_answers_404_when_there_is_no_key(browser: Client, wkd: Client, keys: Keys) -> None:
    path = f"/.well-known/openpgpkey/hu/{wkd_hash('ann')}"
    assert wkd.get(path, HTTP_HOST=LOCAL).status_code == 404
    _upload(browser, keys.locked)
    assert wkd.get(path, {"l": "bob"}, HTTP_HOST=LOCAL).status_code == 404  # l does not match the hash
    assert wkd.get(path, HTTP_HOST="unhosted.test").status_code == 404
    assert wkd.post(path, HTTP_HOST=LOCAL).status_code == 405


# --- the federation key document (docs/protocol.md §14) ----------------------------------------


def test_the_key_document_is_signed_by_the_domain_and_holds_the_key(
    browser: Client, wkd: Client, keys: Keys, reader: GnuPG
) -> None:
    _upload(browser, keys.locked)
    answer = wkd.get(f"/federation/v1/keys/{ADDRESS}")
    assert answer.status_code == 200
    assert answer["Access-Control-Allow-Origin"] == "*"
    instance = discovery.discover(LOCAL)
    assert instance is not None
    found = publickeys.read_key_document(answer.content, address=ADDRESS, instance=instance)
    assert [key.fingerprint for key in found] == [keys.locked_fingerprint]
    reader.run("--import", data=found[0].key)
    assert reader.fingerprints(ADDRESS) == [keys.locked_fingerprint]
    # A document changed after signing is refused.
    document = json.loads(answer.content)
    document["keys"][0]["revoked"] = True
    with pytest.raises(publickeys.KeyDocumentError, match="signature does not verify"):
        publickeys.read_key_document(json.dumps(document).encode(), address=ADDRESS, instance=instance)


def test_the_key_document_is_404_without_a_key_and_400_for_a_bad_address(wkd: Client, ann: User) -> None:
    answer = wkd.get(f"/federation/v1/keys/{ADDRESS}")
    assert answer.status_code == 404
    assert answer.json()["error"] == "not_found"
    assert wkd.get("/federation/v1/keys/nobody@unhosted.test").status_code == 404
    bad = wkd.get("/federation/v1/keys/no-at-sign")
    assert bad.status_code == 400
    assert "local@domain" in bad.json()["detail"]


WKS_CLIENT = Path("/usr/lib/gnupg/gpg-wks-client")


@pytest.mark.skipif(not WKS_CLIENT.exists(), reason="needs gpg-wks-client (Debian's gpg-wks-client)")
def test_the_url_gnupg_asks_is_answered(browser: Client, wkd: Client, keys: Keys, reader: GnuPG) -> None:
    """GnuPG asks WKD only over https; its URL for the address, asked here, gives the key."""
    _upload(browser, keys.locked)
    printed = subprocess.run(  # noqa: S603
        [str(WKS_CLIENT), "--print-wkd-url", ADDRESS], capture_output=True, check=True, text=True
    ).stdout.strip()
    url = urlsplit(printed)
    assert url.scheme == "https"
    served = wkd.get(f"{url.path}?{url.query}", HTTP_HOST=url.hostname)
    assert served.status_code == 200
    reader.run("--import", data=served.content)
    assert reader.fingerprints(ADDRESS) == [keys.locked_fingerprint]
