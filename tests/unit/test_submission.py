"""Submission's checks and sending, called as the submission server calls them (gateway.submission).

A submitted message is parsed, its attachments stored once, and sent with the
outbox's send service; every refusal stores nothing. The SMTP conversation
itself is tested with swaks in tests/integration/test_submission.py.
"""

from __future__ import annotations

import email.policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache

from accounts.models import User
from accounts.services import app_password_user, issue_api_token
from attachments.models import Blob
from gateway import submission
from gateway.submission_server import plaintext_auth_allowed
from mailbox.models import InboxEntry
from outbox.models import Message, SendingPause
from tests.factories import MailboxFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    cache.clear()  # failure counts
    return settings.MEDIA_ROOT


@pytest.fixture
def carol(alice: User) -> User:
    return MailboxFactory(domain=alice.domain, local_part="carol")


def login(user: User) -> submission.Login:
    return submission.Login(user_id=user.pk, address=user.email)


def mail(
    sender: str, *, to: str, subject: str = "Plans", text: str = "See you at ten.", **headers: str
) -> EmailMessage:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(text)
    return msg


def nothing_stored() -> bool:
    return not Message.objects.exists() and not Blob.objects.exists()


# --- Sending ------------------------------------------------------------------------------------


def test_a_message_is_sent_as_from_the_webmail_with_its_attachments_stored_once(
    alice: User, bob: User, carol: User
) -> None:
    msg = mail(f"Alice <{alice.email}>", to=f"Bob <{bob.email}>", subject="Photos", text="Two copies of one photo.")
    msg.add_alternative("<p>Two copies of <b>one</b> photo.</p>", subtype="html")
    photo = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    for name in ("beach.png", "beach-again.png"):
        msg.add_attachment(photo, maintype="image", subtype="png", filename=name)
    msg["Bcc"] = carol.email

    reply = submission.submit_message(login=login(alice), recipients=[bob.email, carol.email], raw=msg.as_bytes())

    assert reply.code == 250 and reply.text.startswith("2.0.0 Queued as <")
    sent = Message.objects.get()
    assert reply.text.endswith(f"{sent.message_id}")
    assert (sent.sender, sent.subject, sent.to, sent.cc, sent.bcc) == (alice, "Photos", [bob.email], [], [carol.email])
    assert sent.text.strip() == "Two copies of one photo."
    assert sent.html is not None and "<b>one</b>" in sent.html
    assert [(a.name, a.content_type) for a in sent.attachments.order_by("position")] == [
        ("beach.png", "image/png"),
        ("beach-again.png", "image/png"),
    ]
    assert Blob.objects.count() == 1  # the same bytes, stored once
    assert Blob.objects.get().file.read() == photo
    # Both local recipients have it in their inbox, as from the webmail.
    assert set(InboxEntry.objects.filter(subject="Photos").values_list("owner__email", flat=True)) == {
        bob.email,
        carol.email,
    }


def test_recipients_are_the_envelope_and_the_bcc_header_is_not_passed_on(alice: User, bob: User, carol: User) -> None:
    msg = mail(alice.email, to=bob.email, Cc="dave@alpha.test", Bcc=carol.email)
    reply = submission.submit_message(login=login(alice), recipients=[bob.email, carol.email], raw=msg.as_bytes())
    assert reply.ok, reply
    sent = Message.objects.get()
    # dave is in the Cc header but not in the envelope: not sent to; carol is only in the envelope: a Bcc.
    assert (sent.to, sent.cc, sent.bcc) == ([bob.email], [], [carol.email])
    assert set(sent.recipients.values_list("address", flat=True)) == {bob.email, carol.email}


def test_split_recipients() -> None:
    to, cc, bcc = submission.split_recipients(
        to=["a@x.test", "b@x.test"], cc=["b@x.test", "c@x.test"], envelope=["c@x.test", "a@x.test", "d@x.test"]
    )
    assert (to, cc, bcc) == (["a@x.test"], ["c@x.test"], ["d@x.test"])


def test_a_reply_keeps_its_in_reply_to(alice: User, bob: User) -> None:
    msg = mail(alice.email, to=bob.email, In_Reply_To="<parent-1@beta.test>")
    assert submission.submit_message(login=login(alice), recipients=[bob.email], raw=msg.as_bytes()).ok
    assert Message.objects.get().in_reply_to == "<parent-1@beta.test>"


# --- Refusals: each answered, nothing stored ----------------------------------------------------------


def test_a_from_header_naming_someone_else_is_refused(alice: User, bob: User) -> None:
    msg = mail("boss@alpha.test", to=bob.email)
    msg.add_attachment(b"data", maintype="application", subtype="octet-stream", filename="a.bin")
    reply = submission.submit_message(login=login(alice), recipients=[bob.email], raw=msg.as_bytes())
    assert (reply.code, reply.text) == (
        553,
        f"5.7.1 From: boss@alpha.test is not your address: it must be From: <{alice.email}>",
    )
    assert nothing_stored()


def test_a_message_without_from_is_refused(alice: User, bob: User) -> None:
    raw = f"To: {bob.email}\r\nSubject: x\r\n\r\nhello\r\n".encode()
    reply = submission.submit_message(login=login(alice), recipients=[bob.email], raw=raw)
    assert reply.code == 553 and "no readable From header" in reply.text
    assert nothing_stored()


@pytest.mark.parametrize(
    "content_type, body, problem",
    [
        ('multipart/mixed; boundary="b1"', "no parts here\r\n", "boundary never appears"),
        ('multipart/mixed; boundary="b1"', "--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n", "not closed"),
        ("multipart/mixed", "--b1\r\n\r\nhi\r\n--b1--\r\n", "no boundary parameter"),
    ],
    ids=["boundary-missing", "not-closed", "no-boundary-parameter"],
)
def test_broken_mime_is_refused_554_naming_the_problem(
    alice: User, bob: User, content_type: str, body: str, problem: str
) -> None:
    raw = (
        f"From: {alice.email}\r\nTo: {bob.email}\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: {content_type}\r\n\r\n{body}"
    ).encode()
    reply = submission.submit_message(login=login(alice), recipients=[bob.email], raw=raw)
    assert reply.code == 554 and reply.text.startswith("5.6.0 Malformed MIME: ") and problem in reply.text, reply
    assert nothing_stored()


def test_bad_base64_in_an_attachment_is_refused(alice: User, bob: User) -> None:
    raw = (
        f"From: {alice.email}\r\nTo: {bob.email}\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
        "--b1\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        'Content-Disposition: attachment; filename="a.pdf"\r\n\r\nJVBERi0xLjQK*%$\r\n'
        "--b1--\r\n"
    ).encode()
    reply = submission.submit_message(login=login(alice), recipients=[bob.email], raw=raw)
    assert reply.code == 554 and "base64" in reply.text, reply
    assert nothing_stored()


def test_an_attachment_over_the_limit_is_552_and_nothing_is_stored(alice: User, bob: User, settings: Any) -> None:
    settings.PUSHMAIL_MAX_ATTACHMENT_BYTES = 1000
    msg = mail(alice.email, to=bob.email)
    msg.add_attachment(b"small", maintype="text", subtype="plain", filename="small.txt")
    msg.add_attachment(b"x" * 1001, maintype="application", subtype="octet-stream", filename="big.bin")
    reply = submission.submit_message(login=login(alice), recipients=[bob.email], raw=msg.as_bytes())
    assert reply.code == 552 and reply.text.startswith("5.3.4 ") and "big.bin is larger than" in reply.text, reply
    assert nothing_stored()


def test_a_full_mailbox_is_552_5_2_2(alice: User, bob: User) -> None:
    alice.quota_bytes = 100
    alice.save(update_fields=["quota_bytes"])
    msg = mail(alice.email, to=bob.email)
    msg.add_attachment(b"y" * 500, maintype="application", subtype="octet-stream", filename="y.bin")
    reply = submission.submit_message(login=login(alice), recipients=[bob.email], raw=msg.as_bytes())
    assert reply.code == 552 and reply.text.startswith("5.2.2 ") and "quota" in reply.text, reply
    assert nothing_stored()


def test_paused_sending_is_550_with_the_reason(alice: User, bob: User) -> None:
    SendingPause.objects.create(user=alice, reason="Too many recipients reported your mail as spam.")
    reply = submission.submit_message(
        login=login(alice), recipients=[bob.email], raw=mail(alice.email, to=bob.email).as_bytes()
    )
    assert reply.code == 550 and reply.text.startswith(f"5.7.1 Sending from {alice.email} is paused"), reply
    assert not Message.objects.exists()


# --- MAIL FROM, RCPT TO, AUTH -----------------------------------------------------------------------


def test_the_envelope_sender_must_be_the_signed_in_address(alice: User) -> None:
    assert submission.sender_reply(login=login(alice), address=alice.email.upper()).ok
    refused = submission.sender_reply(login=login(alice), address="ceo@alpha.test")
    assert (refused.code, refused.text) == (
        553,
        f"5.7.1 Sender address <ceo@alpha.test> is not yours: send as <{alice.email}>",
    )


def test_recipients_are_capped_as_in_the_webmail(settings: Any) -> None:
    settings.PUSHMAIL_MAX_RECIPIENTS = 1  # ten per message
    assert submission.recipient_reply(address="a@x.test", accepted=9).ok
    assert submission.recipient_reply(address="a@x.test", accepted=10).code == 452
    assert submission.recipient_reply(address="not an address", accepted=0).code == 501


def test_an_app_password_is_an_api_token_of_that_mailbox(alice: User, bob: User) -> None:
    token = issue_api_token(user=alice, name="Thunderbird")
    assert app_password_user(address=alice.email, password=token) == alice
    assert app_password_user(address=alice.email.upper(), password=token) == alice
    assert app_password_user(address=bob.email, password=token) is None  # another mailbox's token
    alice.api_tokens.all().delete()  # revoked
    assert app_password_user(address=alice.email, password=token) is None


def test_failed_logins_are_limited_per_account_and_per_client(alice: User, bob: User, settings: Any) -> None:
    settings.PUSHMAIL_SUBMISSION_AUTH_FAILURES_PER_ACCOUNT = 2
    settings.PUSHMAIL_SUBMISSION_AUTH_FAILURES_PER_CLIENT = 3
    token = issue_api_token(user=alice)
    for _ in range(2):
        user, reply = submission.check_login(login=alice.email, password="wrong", client_ip="192.0.2.1")
        assert user is None and reply == submission.INVALID_LOGIN
    # The account is now refused from anywhere, even with the right app password.
    user, reply = submission.check_login(login=alice.email, password=token, client_ip="192.0.2.99")
    assert user is None and reply.code == 454
    # One more failure from 192.0.2.1, for another account, reaches that client's limit.
    submission.check_login(login=f"nobody@{bob.domain.name}", password="wrong", client_ip="192.0.2.1")
    bobs = issue_api_token(user=bob)
    assert submission.check_login(login=bob.email, password=bobs, client_ip="192.0.2.1")[1].code == 454
    found, reply = submission.check_login(login=bob.email, password=bobs, client_ip="192.0.2.50")
    assert found == submission.Login(user_id=bob.pk, address=bob.email) and reply.code == 235


def test_an_unknown_address_and_a_wrong_password_get_the_same_answer(alice: User) -> None:
    token = issue_api_token(user=alice)
    unknown = submission.check_login(login="nobody@alpha.test", password=token, client_ip="192.0.2.1")
    wrong = submission.check_login(login=alice.email, password=token + "x", client_ip="192.0.2.1")
    assert unknown == wrong == (None, submission.INVALID_LOGIN)


@pytest.mark.parametrize(
    "address, allowed",
    [
        ("127.0.0.1", True),
        ("127.5.0.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("192.0.2.2", False),
        ("::ffff:192.0.2.2", False),
        ("2001:db8::1", False),
        ("not an address", False),
    ],
)
def test_plaintext_auth_only_from_loopback(address: str, allowed: bool) -> None:
    assert plaintext_auth_allowed(address) is allowed


def test_the_settings_page_tells_how_to_set_up_a_mail_program_and_its_token_signs_in(
    client: Any, alice: User, settings: Any
) -> None:
    settings.PUSHMAIL_SMTP_HOSTNAME = "mail.alpha.test"
    settings.PUSHMAIL_SUBMISSION_LISTEN = "0.0.0.0:587"
    settings.PUSHMAIL_SUBMISSION_TLS_LISTEN = "0.0.0.0:465"
    settings.PUSHMAIL_SUBMISSION_TLS_CERT, settings.PUSHMAIL_SUBMISSION_TLS_KEY = "cert.pem", "key.pem"
    client.force_login(alice)
    page = client.post("/settings/tokens/", {"name": "Thunderbird"}).content.decode()
    assert "Setting up a mail program" in page
    assert "<code>mail.alpha.test</code>" in page
    assert "<code>587</code> with STARTTLS, or <code>465</code> with SSL/TLS" in page
    assert f"<code>{alice.email}</code>" in page
    raw = page.split('id="new-token-value" type="text" readonly value="', 1)[1].split('"', 1)[0]
    found, reply = submission.check_login(login=alice.email, password=raw, client_ip="192.0.2.1")
    assert reply.code == 235 and found == submission.Login(user_id=alice.pk, address=alice.email)


def test_a_blocked_file_type_is_554_naming_the_file(alice: User, bob: User) -> None:
    msg = mail(alice.email, to=bob.email)
    msg.add_attachment(b"MZ\x90\x00", maintype="application", subtype="octet-stream", filename="setup.exe")
    reply = submission.submit_message(login=login(alice), recipients=[bob.email], raw=msg.as_bytes())
    assert reply.code == 554 and reply.text.startswith("5.7.0 attachments: setup.exe: files of type"), reply
    assert nothing_stored()
