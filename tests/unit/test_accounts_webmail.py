"""Accounts in the browser: sign in and out, two-factor (TOTP, recovery codes), rate limits, no account
enumeration, password reset through Pushmail to the recovery address, settings and API tokens."""

from __future__ import annotations

import re
from typing import Any

import pytest
from allauth.mfa.models import Authenticator
from allauth.mfa.recovery_codes.internal.auth import RecoveryCodes
from allauth.mfa.totp.internal.auth import SECRET_SESSION_KEY, format_hotp_value, hotp_value
from allauth.mfa.totp.internal.auth import yield_hotp_counters_from_time as counters
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from accounts.models import ApiToken, FetchPolicy, RemoteContentPolicy, User
from accounts.services import issue_api_token
from accounts.tasks import send_password_reset
from mailbox.models import InboxEntry
from outbox.models import Delivery, Message
from tests.conftest import Queued
from tests.factories import MailboxFactory

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"  # noqa: S105 - the factories' test password
LOGIN = "/accounts/login/"
RESET = "/accounts/password/reset/"


@pytest.fixture(autouse=True)
def _clear_rate_limits() -> None:
    cache.clear()


def _login(client: Client, email: str, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    return client.post(LOGIN, {"login": email, "password": password})


def _signed_in_as(client: Client) -> str | None:
    response = client.get(reverse("webmail:settings"))
    if response.status_code != 200:
        return None
    return response.context["user"].email


def _totp_code(secret: str) -> str:
    return format_hotp_value(hotp_value(secret, next(iter(counters()))))


def _scrub(html: str) -> str:
    """A page without its per-request tokens, to compare two responses."""
    html = re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "", html)
    return re.sub(r'"X-CSRFToken": "[^"]+"', "", html)


# --- sign in, sign out -----------------------------------------------------------------------


def test_login_page_is_a_pushmail_page_without_sign_up_or_inline_script(client: Client) -> None:
    response = client.get(LOGIN)
    html = response.content.decode()
    assert response.status_code == 200
    assert "<title>Sign in — Pushmail</title>" in html
    assert "css/webmail.css" in html and "css/accounts.css" in html
    assert "sign up" not in html.lower()
    assert "Sign in with a passkey" in html
    # Every <script> either loads a file from this origin or is a JSON data block (never executed).
    for attrs, body in re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S):
        assert "src=" in attrs or 'type="application/json"' in attrs, attrs
    assert " style=" not in html and " onclick=" not in html
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp


def test_login_then_logout(client: Client, alice: User) -> None:
    response = _login(client, alice.email)
    assert response.status_code == 302
    assert _signed_in_as(client) == alice.email
    assert client.post("/accounts/logout/").status_code == 302
    assert _signed_in_as(client) is None


def test_session_cookie_is_http_only_and_lax(client: Client, alice: User, settings: Any) -> None:
    response = _login(client, alice.email)
    cookie = response.cookies[settings.SESSION_COOKIE_NAME]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"


def test_wrong_password_and_unknown_address_get_the_same_answer(client: Client, alice: User) -> None:
    wrong = _login(client, alice.email, "not the password")
    unknown = _login(client, "nobody@alpha.test", "not the password")
    assert wrong.status_code == unknown.status_code == 200
    assert "The email address and/or password you specified are not correct." in wrong.content.decode()
    html_wrong = _scrub(wrong.content.decode()).replace(alice.email, "ADDRESS")
    html_unknown = _scrub(unknown.content.decode()).replace("nobody@alpha.test", "ADDRESS")
    assert html_wrong == html_unknown


def test_repeated_failed_logins_are_rate_limited(client: Client, alice: User) -> None:
    for _ in range(5):
        assert "not correct" in _login(client, alice.email, "wrong").content.decode()
    response = _login(client, alice.email, PASSWORD)  # even the right password now waits
    assert "Too many failed login attempts. Try again later." in response.content.decode()
    assert _signed_in_as(client) is None


def test_repeated_reset_requests_are_rate_limited(client: Client, alice: User) -> None:
    for _ in range(5):
        assert client.post(RESET, {"email": alice.email}).status_code == 302
    response = client.post(RESET, {"email": alice.email})
    assert response.status_code == 429
    html = response.content.decode()
    assert "Too many attempts" in html and "— Pushmail</title>" in html


def test_expired_session_gets_a_clear_message_on_the_way_to_sign_in(client: Client) -> None:
    response = client.get("/settings/", follow=True)
    assert response.redirect_chain[-1][0].startswith(LOGIN + "?next=")
    assert "your session has ended" in response.content.decode()
    assert "your session has ended" not in client.get(LOGIN).content.decode()


# --- two-factor ----------------------------------------------------------------------------


def test_security_pages_ask_for_the_password_unless_just_signed_in(
    client: Client, alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    _login(client, alice.email)
    assert client.get("/accounts/2fa/webauthn/add/").status_code == 200  # a fresh sign-in counts
    import time

    later = time.time() + 301
    monkeypatch.setattr(time, "time", lambda: later)
    response = client.get("/accounts/2fa/webauthn/add/")
    assert response["Location"].startswith("/accounts/reauthenticate/")
    monkeypatch.undo()
    _reauthenticate(client)
    assert client.get("/accounts/2fa/webauthn/add/").status_code == 200


def _reauthenticate(client: Client, password: str = PASSWORD) -> None:
    """allauth asks for the password again before security changes, even right after sign-in."""
    page = client.get("/accounts/reauthenticate/")
    assert page.status_code == 200 and "— Pushmail</title>" in page.content.decode()
    assert client.post("/accounts/reauthenticate/", {"password": password}).status_code == 302


def _activate_totp(client: Client) -> str:
    page = client.get("/accounts/2fa/totp/activate/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'src="data:image/svg+xml;base64,' in html  # the QR code, allowed by img-src data:
    secret = client.session[SECRET_SESSION_KEY]
    response = client.post("/accounts/2fa/totp/activate/", {"code": _totp_code(secret)})
    assert response.status_code == 302, response.content.decode()[:2000]
    return secret


def test_totp_activation_then_login_requires_the_code(client: Client, alice: User) -> None:
    _login(client, alice.email)
    secret = _activate_totp(client)
    assert Authenticator.objects.filter(user=alice, type=Authenticator.Type.TOTP).exists()
    client.post("/accounts/logout/")
    cache.clear()  # the activation code counts as used; the next period's code is what a user would type

    response = _login(client, alice.email)
    assert response.status_code == 302 and response["Location"] == "/accounts/2fa/authenticate/"
    assert _signed_in_as(client) is None
    page = client.get("/accounts/2fa/authenticate/")
    assert "Enter the code from your authenticator app, or one of your recovery codes." in page.content.decode()
    wrong = client.post("/accounts/2fa/authenticate/", {"code": "000000" if _totp_code(secret) != "000000" else "1"})
    assert "Incorrect code." in wrong.content.decode()
    assert _signed_in_as(client) is None
    assert client.post("/accounts/2fa/authenticate/", {"code": _totp_code(secret)}).status_code == 302
    assert _signed_in_as(client) == alice.email


def test_recovery_code_signs_in_once(client: Client, alice: User) -> None:
    _login(client, alice.email)
    status = client.get("/settings/").content.decode()
    assert "Authenticator app</dt>\n    <dd>Off" in status
    _activate_totp(client)
    status = client.get("/settings/").content.decode()
    assert "Authenticator app</dt>\n    <dd>On" in status and "10 unused" in status
    page = client.get("/accounts/2fa/recovery-codes/")
    assert page.status_code == 200
    codes = RecoveryCodes(Authenticator.objects.get(user=alice, type=Authenticator.Type.RECOVERY_CODES))
    code = codes.get_unused_codes()[0]
    assert code in page.content.decode()
    client.post("/accounts/logout/")

    _login(client, alice.email)
    assert client.post("/accounts/2fa/authenticate/", {"code": code}).status_code == 302
    assert _signed_in_as(client) == alice.email
    client.post("/accounts/logout/")
    _login(client, alice.email)
    assert "Incorrect code." in client.post("/accounts/2fa/authenticate/", {"code": code}).content.decode()


def test_account_security_pages_render_in_the_webmail_layout(client: Client, alice: User) -> None:
    client.force_login(alice)
    _reauthenticate(client)
    for url in [
        "/accounts/password/change/",
        "/accounts/2fa/",
        "/accounts/2fa/totp/activate/",
        "/accounts/2fa/webauthn/",
        "/accounts/2fa/webauthn/add/",
        "/accounts/sessions/",
        "/accounts/2fa/recovery-codes/generate/",
        "/accounts/logout/",
        "/accounts/reauthenticate/",
        "/accounts/password/reset/key/done/",
    ]:
        response = client.get(url)
        html = response.content.decode()
        assert response.status_code == 200, url
        assert "— Pushmail</title>" in html, url
        if "/logout/" not in url and "/reauthenticate/" not in url and "/reset/" not in url:
            assert 'aria-label="Settings"' in html, url  # the settings navigation beside the page
        for attrs, _body in re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S):
            assert "src=" in attrs or 'type="application/json"' in attrs, (url, attrs)


def test_passkey_page_loads_allauths_webauthn_scripts(client: Client, alice: User) -> None:
    client.force_login(alice)
    _reauthenticate(client)
    html = client.get("/accounts/2fa/webauthn/add/").content.decode()
    assert "mfa/js/webauthn.js" in html and "mfa/js/webauthn-json.js" in html and "account/js/onload.js" in html
    assert 'id="mfa_webauthn_add"' in html and 'id="js_data"' in html


def test_password_change(client: Client, alice: User) -> None:
    client.force_login(alice)
    new = "a much newer passphrase 42"
    response = client.post("/accounts/password/change/", {"oldpassword": PASSWORD, "password1": new, "password2": new})
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password(new)


# --- password reset through Pushmail --------------------------------------------------------


def _request_reset(client: Client, address: str, queued: list[Queued], capture: Any):  # type: ignore[no-untyped-def]
    """Post the reset form, then run the queued reset task as a worker would."""
    before = len(queued)
    with capture(execute=True):
        response = client.post(RESET, {"email": address})
    resets = [q for q in queued[before:] if q.name == "accounts.send_password_reset"]
    assert len(resets) == 1, queued  # one task for every address, known or not
    with capture(execute=True):
        send_password_reset(*resets[0].args)
    return response


def _reset_link(text: str) -> str:
    match = re.search(r"https?://[^/\s]+(/accounts/password/reset/key/\S+)", text)
    assert match, text
    return match.group(1)


def test_reset_mail_arrives_in_the_local_recovery_mailbox_and_resets(
    client: Client, alice: User, bob: User, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    User.objects.filter(pk=alice.pk).update(recovery_address=bob.email)
    response = _request_reset(client, alice.email, queued, django_capture_on_commit_callbacks)
    assert response.status_code == 302
    entry = InboxEntry.objects.get(owner=bob)
    assert entry.sender == "postmaster@alpha.test"
    assert entry.subject == f"Password reset for {alice.email}"
    postmaster = User.objects.get(email="postmaster@alpha.test")
    assert not postmaster.is_active and not postmaster.has_usable_password()

    link = _reset_link(Message.objects.get(pk=entry.local_id).text)
    page = client.get(link, follow=True)
    assert page.status_code == 200
    new = "fresh new passphrase 77"
    response = client.post(page.redirect_chain[-1][0], {"password1": new, "password2": new})
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password(new)
    # The link works once.
    assert "Bad Token" in client.get(link, follow=True).content.decode()


def test_reset_mail_to_a_remote_recovery_address_is_a_delivery_to_its_domain(
    client: Client, alice: User, net: Any, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    User.objects.filter(pk=alice.pk).update(recovery_address="carol@peer.test")
    _request_reset(client, alice.email, queued, django_capture_on_commit_callbacks)
    message = Message.objects.get(sender_address="postmaster@alpha.test")
    assert message.to == ["carol@peer.test"]
    assert Delivery.objects.filter(message=message, domain="peer.test").exists()
    assert "/accounts/password/reset/key/" in message.text


def test_reset_page_says_the_same_for_every_address(
    client: Client, alice: User, bob: User, net: Any, queued: list[Queued], django_capture_on_commit_callbacks: Any
) -> None:
    User.objects.filter(pk=alice.pk).update(recovery_address="someone@peer.test")
    answers = []
    for address in ["nobody@alpha.test", bob.email, "stranger@elsewhere.test", alice.email]:
        response = _request_reset(client, address, queued, django_capture_on_commit_callbacks)
        page = client.get(response["Location"])
        answers.append((response.status_code, response["Location"], _scrub(page.content.decode())))
    assert answers[0] == answers[1] == answers[2] == answers[3]
    assert "a reset link is on its way" in answers[0][2]
    # Only alice has a recovery address: one message, to it.
    assert [m.to for m in Message.objects.all()] == [["someone@peer.test"]]


# --- settings -----------------------------------------------------------------------------


def _prefs(**overrides: str) -> dict[str, str]:
    data = {
        "display_name": "Alice Liddell",
        "signature": "-- \nAlice",
        "fetch_policy": FetchPolicy.ON_NOTIFY,
        "remote_content": RemoteContentPolicy.ALWAYS,
        "recovery_address": "alice.backup@peer.test",
    }
    data.update(overrides)
    return data


def test_settings_page_shows_choices_and_the_domain_default(client: Client, alice: User) -> None:
    client.force_login(alice)
    html = client.get("/settings/").content.decode()
    assert "Domain default: Fetch when I open a message" in html
    assert "Fetch as soon as notified" in html
    assert "Block remote images until I allow them" in html
    assert re.search(r"[\d.]+\xa0(bytes|KiB|MiB) of 2\.0\xa0GiB used", html), "storage used against the quota"
    for link in ["/accounts/2fa/", "/accounts/sessions/", "/accounts/password/change/", "/settings/tokens/"]:
        assert f'href="{link}"' in html


def test_settings_save(client: Client, alice: User) -> None:
    client.force_login(alice)
    response = client.post("/settings/", _prefs())
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.display_name == "Alice Liddell"
    assert alice.effective_fetch_policy == FetchPolicy.ON_NOTIFY
    assert alice.remote_content == RemoteContentPolicy.ALWAYS
    assert alice.recovery_address == "alice.backup@peer.test"
    assert "Settings saved." in client.get("/settings/").content.decode()
    # Back to the domain default.
    client.post("/settings/", _prefs(fetch_policy=""))
    alice.refresh_from_db()
    assert alice.fetch_policy == "" and alice.effective_fetch_policy == FetchPolicy.ON_OPEN


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("display_name", "Alice\r\nBcc: everyone@example.com", "line break"),
        ("display_name", "Alice\nX", "line break"),
        ("recovery_address", "not an address", "Enter a valid email address."),
        ("recovery_address", "alice@alpha.test", "must be another mailbox"),
        ("fetch_policy", "whenever", "Select a valid choice."),
    ],
)
def test_settings_reject_bad_input(client: Client, alice: User, field: str, value: str, message: str) -> None:
    client.force_login(alice)
    response = client.post("/settings/", _prefs(**{field: value}))
    assert response.status_code == 400
    assert message in response.content.decode()
    alice.refresh_from_db()
    assert alice.display_name == "" and alice.recovery_address == ""


def test_settings_need_sign_in(client: Client) -> None:
    response = client.get("/settings/")
    assert response.status_code == 302 and response["Location"].startswith(LOGIN)


# --- API tokens -----------------------------------------------------------------------------


def test_token_create_shows_it_once_and_it_works(client: Client, alice: User) -> None:
    client.force_login(alice)
    response = client.post("/settings/tokens/", {"name": "my laptop"})
    html = response.content.decode()
    raw = re.search(r'value="(pm_[^"]+)"', html).group(1)  # type: ignore[union-attr]
    assert "It will not be shown again" in html
    assert response.headers["Cache-Control"].startswith("max-age=0")
    listing = client.get("/settings/tokens/").content.decode()
    assert raw not in listing
    assert "my laptop" in listing and raw[:8] in listing and "never" in listing
    api = Client(headers={"Authorization": f"Bearer {raw}"})
    assert api.get("/api/v1/inbox/").status_code == 200
    listing = client.get("/settings/tokens/").content.decode()
    assert "my laptop" in listing and ">never<" not in listing  # last used: now


def test_token_revoke(client: Client, alice: User) -> None:
    raw = issue_api_token(user=alice, name="old script")
    token = ApiToken.objects.get(user=alice)
    client.force_login(alice)
    response = client.post(f"/settings/tokens/{token.pk}/revoke/", follow=True)
    assert "Token revoked." in response.content.decode()
    assert not ApiToken.objects.filter(pk=token.pk).exists()
    assert Client(headers={"Authorization": f"Bearer {raw}"}).get("/api/v1/inbox/").status_code == 401


def test_revoking_another_users_token_is_404(client: Client, alice: User, bob: User) -> None:
    issue_api_token(user=bob, name="bob's")
    token = ApiToken.objects.get(user=bob)
    client.force_login(alice)
    assert client.post(f"/settings/tokens/{token.pk}/revoke/").status_code == 404
    assert ApiToken.objects.filter(pk=token.pk).exists()
    assert "bob&#x27;s" not in client.get("/settings/tokens/").content.decode()


def test_revoke_is_post_only(client: Client, alice: User) -> None:
    issue_api_token(user=alice)
    token = ApiToken.objects.get(user=alice)
    client.force_login(alice)
    assert client.get(f"/settings/tokens/{token.pk}/revoke/").status_code == 405


def test_empty_token_name_is_refused(client: Client, alice: User) -> None:
    client.force_login(alice)
    response = client.post("/settings/tokens/", {"name": ""})
    assert response.status_code == 400
    assert "This field is required." in response.content.decode()
    assert not ApiToken.objects.filter(user=alice).exists()


def test_other_mailbox_factory_is_unaffected(alice: User) -> None:
    assert MailboxFactory(domain=alice.domain).is_active


# --- sessions ------------------------------------------------------------------------------


def test_sign_out_other_sessions(alice: User) -> None:
    laptop, phone = Client(), Client()
    _login(laptop, alice.email)
    _login(phone, alice.email)
    page = laptop.get("/accounts/sessions/").content.decode()
    assert page.count("<tr") >= 3  # header and both sessions
    assert laptop.post("/accounts/sessions/").status_code == 302
    assert _signed_in_as(laptop) == alice.email
    assert _signed_in_as(phone) is None


# --- cookies in production -------------------------------------------------------------------


def _cookie_settings(**env: str) -> list[str]:
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "from django.conf import settings as s; import django; django.setup(); "
        "print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SESSION_COOKIE_HTTPONLY, s.SESSION_COOKIE_SAMESITE)"
    )
    clean = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECURE_COOKIES"}}
    clean.update(
        DJANGO_SETTINGS_MODULE="pushmail_site.settings",
        SECRET_KEY="cookie-test-secret",
        PUSHMAIL_KEY_ENCRYPTION_KEY="cookie-test-signing-key-encryption-key",
        PUSHMAIL_BASE_URL="https://mail.example.org",
        **env,
    )
    out = subprocess.run(  # noqa: S603 - fixed command
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[2],
        env=clean,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.split()


def test_cookies_are_secure_in_production_and_never_readable_by_scripts() -> None:
    assert _cookie_settings(DEBUG="0") == ["True", "True", "True", "Lax"]
    assert _cookie_settings(DEBUG="0", SECURE_COOKIES="0") == ["False", "False", "True", "Lax"]


def test_the_mailbox_address_cannot_be_changed_or_added_to(client: Client, alice: User, bob: User) -> None:
    from allauth.account.models import EmailAddress

    User.objects.filter(pk=alice.pk).update(recovery_address=bob.email)
    client.force_login(alice)
    for data in [{"action_add": "", "email": "x@evil.test"}, {"action_primary": "", "email": "x@evil.test"}]:
        response = client.post("/accounts/email/", data, follow=True)
        assert response.redirect_chain[-1][0] == "/settings/"
        assert "cannot be changed or added to here" in response.content.decode()
    assert list(EmailAddress.objects.filter(user=alice).values_list("email", flat=True)) == [alice.email]
    assert not InboxEntry.objects.filter(owner=bob).exists()  # no confirmation mail went anywhere
    alice.refresh_from_db()
    assert alice.email == "alice@alpha.test"


def test_settings_lists_senders_whose_images_show_and_removes_one(client: Client) -> None:
    from mailbox.models import AllowedSender

    user = MailboxFactory()
    AllowedSender.objects.create(owner=user, address="news@peer.test")
    client.force_login(user)

    page = client.get("/settings/").content.decode()
    assert "news@peer.test" in page and 'data-testid="allowed-senders"' in page

    sender = AllowedSender.objects.get(owner=user)
    response = client.post(f"/settings/allowed-senders/{sender.pk}/remove/", follow=True)
    assert "Images from that sender are blocked again" in response.content.decode()
    assert not AllowedSender.objects.filter(owner=user).exists()
