"""Mail to domains without a Pushmail instance: MIME, DKIM, MX choice, per-recipient answers, dnsrecords.

A DNS server on loopback (tests/smtp_support.py) answers the MX and address
lookups, and aiosmtpd on loopback plays the recipient domain's mail server,
answering each RCPT as the test says. The Postfix tests are in
tests/integration/test_smtp_outbound.py.
"""

from __future__ import annotations

import email
import email.policy
import io
import re
from collections.abc import Iterator
from datetime import timedelta
from email.message import EmailMessage
from typing import Any

import dkim
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.utils import timezone

from accounts.models import User
from attachments.services import AttachmentInput, store_upload
from federation.models import DkimKey
from gateway import outbound
from mailbox.models import EntryState, InboxEntry
from outbox.models import Delivery, DeliveryState, Message, Recipient, Transport
from outbox.services import deliver_notification, send_message
from outbox.smtp import SmtpFailure
from tests.conftest import api_as
from tests.factories import MailboxFactory
from tests.smtp_support import Zone, dns_server, free_port

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]

LEGACY = "legacy.test"


class FakeMx:
    """The recipient domain's mail server: answers RCPT per address, keeps what DATA brings."""

    def __init__(self) -> None:
        self.rcpt: dict[str, str] = {}
        self.data_answer = "250 2.0.0 Ok: queued as 4XYZ"
        self.received: list[tuple[str, list[str], bytes]] = []

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        answer = self.rcpt.get(address, "250 2.1.5 Ok")
        if answer.startswith("2"):
            envelope.rcpt_tos.append(address)
        return answer

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        content = envelope.original_content or b""
        self.received.append((str(envelope.mail_from), list(envelope.rcpt_tos), content))
        return self.data_answer


@pytest.fixture(scope="module")
def dns() -> Iterator[tuple[Zone, str]]:
    with dns_server() as running:
        yield running


@pytest.fixture(scope="module")
def mx_server() -> Iterator[tuple[FakeMx, int]]:
    handler = FakeMx()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


@pytest.fixture
def mx(mx_server: tuple[FakeMx, int], dns: tuple[Zone, str], settings: Any) -> FakeMx:
    """SMTP on, legacy.test's MX is the fake server on loopback."""
    handler, port = mx_server
    handler.rcpt.clear()
    handler.received.clear()
    handler.data_answer = "250 2.0.0 Ok: queued as 4XYZ"
    zone, resolver = dns
    zone.clear()
    zone.add(LEGACY, "MX", "10 mx.legacy.test.")
    zone.add("mx.legacy.test", "A", "127.0.0.1")
    settings.PUSHMAIL_SMTP_OUTBOUND = True
    settings.PUSHMAIL_DNS_RESOLVER = resolver
    settings.PUSHMAIL_SMTP_OUTBOUND_PORT = port
    settings.PUSHMAIL_SMTP_ALLOW_PRIVATE_DOMAINS = [LEGACY]
    settings.PUSHMAIL_SMTP_RELAY = ""
    return handler


def _deliver(message: Message, domain: str = LEGACY) -> Delivery:
    delivery = Delivery.objects.get(message=message, domain=domain)
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    deliver_notification(delivery.pk)
    delivery.refresh_from_db()
    return delivery


def _answers(message: Message) -> dict[str, tuple[str, str]]:
    return {r.address: (r.status, r.reason) for r in Recipient.objects.filter(message=message)}


def _parse(raw: bytes) -> EmailMessage:
    # As a receiving server stores it: lines end in LF.
    parsed = email.message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _rich_message(alice: User) -> Message:
    alice.display_name = "Alice Liddell"
    alice.save(update_fields=["display_name"])
    blob = store_upload(file=io.BytesIO(b"%PDF-1.4 quarterly numbers"))
    return send_message(
        sender=alice,
        to=[f"bob@{LEGACY}"],
        cc=["carol@peer.test"],
        bcc=[f"hidden@{LEGACY}"],
        subject="Quarterly numbers ✓",
        text="Hello Bob,\nthe numbers are attached.\n",
        html="<p>Hello Bob,</p><p>the numbers are <b>attached</b>.</p>",
        in_reply_to="<earlier@legacy.test>",
        attachments=[AttachmentInput(blob=blob, name="numbers.pdf", content_type="application/pdf")],
    )


# --- MIME ----------------------------------------------------------------------------------------


def test_the_message_has_text_and_html_alternatives_an_attachment_and_threading_headers(alice: User) -> None:
    message = _rich_message(alice)

    mail = _parse(outbound.build_message(message).as_bytes(policy=outbound.POLICY))

    assert mail["From"] == "Alice Liddell <alice@alpha.test>"
    assert mail["To"] == f"bob@{LEGACY}" and mail["Cc"] == "carol@peer.test"
    assert mail["Bcc"] is None and f"hidden@{LEGACY}" not in str(mail)
    assert mail["Subject"] == "Quarterly numbers ✓"
    assert mail["Message-ID"] == message.message_id
    assert mail["In-Reply-To"] == "<earlier@legacy.test>" and "<earlier@legacy.test>" in mail["References"]
    assert mail["Pushmail"] == "alpha.test"
    assert email.utils.parsedate_to_datetime(mail["Date"]) == message.date.replace(microsecond=0)
    assert mail.get_content_type() == "multipart/mixed"
    text = mail.get_body(preferencelist=("plain",))
    html = mail.get_body(preferencelist=("html",))
    assert text is not None and text.get_content().splitlines() == [
        "Hello Bob,",
        "the numbers are attached.",
    ]
    assert html is not None and "<b>attached</b>" in html.get_content()
    (attachment,) = mail.iter_attachments()
    assert attachment.get_filename() == "numbers.pdf" and attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == b"%PDF-1.4 quarterly numbers"


def test_a_text_only_message_is_one_plain_part_in_7bit_safe_encoding(alice: User) -> None:
    message = send_message(sender=alice, to=[f"bob@{LEGACY}"], subject="Hi", text="Grüße aus Köln\n")

    raw = outbound.build_message(message).as_bytes(policy=outbound.POLICY)

    assert max(raw) < 128, "8-bit bytes need 8BITMIME, which not every server offers"
    mail = _parse(raw)
    assert mail.get_content_type() == "text/plain" and mail.get_content().splitlines() == ["Grüße aus Köln"]


# --- DKIM and dnsrecords -------------------------------------------------------------------------


def _dnsrecords(domain: str) -> str:
    out = io.StringIO()
    call_command("dnsrecords", domain, stdout=out)
    return out.getvalue()


def _published_dkim(output: str) -> dict[str, bytes]:
    """The DKIM TXT records in dnsrecords' output, joined as a resolver joins TXT strings."""
    records = {}
    for name, strings in re.findall(r"^(\S+\._domainkey\.\S+)\.\s+3600\s+IN\s+TXT\s+(.+)$", output, re.M):
        records[name] = "".join(re.findall(r'"([^"]*)"', strings)).encode()
    return records


def _verifies(raw: bytes, published: dict[str, bytes]) -> bool:
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return published.get(name.decode().rstrip("."), b"")

    return bool(dkim.verify(raw, dnsfunc=dnsfunc))


def test_the_dkim_signature_verifies_with_the_record_dnsrecords_prints(alice: User) -> None:
    message = _rich_message(alice)
    published = _published_dkim(_dnsrecords("alpha.test"))
    (key,) = DkimKey.objects.filter(domain=alice.domain)
    assert list(published) == [f"{key.selector}._domainkey.alpha.test"]

    signed = outbound.signed_message(message)

    assert signed.startswith(b"DKIM-Signature:") and f"s={key.selector}".encode() in signed
    assert _verifies(signed, published)
    assert not _verifies(signed.replace(b"Quarterly", b"Quarterlx", 1), published)


def test_after_rotatekey_new_mail_uses_a_new_selector_and_the_old_one_stays_published(alice: User) -> None:
    message = _rich_message(alice)
    before = outbound.signed_message(message)
    old_selector = DkimKey.objects.get(domain=alice.domain).selector

    call_command("rotatekey", "alpha.test", stdout=io.StringIO())
    output = _dnsrecords("alpha.test")
    published = _published_dkim(output)
    after = outbound.signed_message(message)

    new_selector = DkimKey.objects.current().get(domain=alice.domain).selector
    assert new_selector != old_selector
    assert set(published) == {f"{s}._domainkey.alpha.test" for s in (old_selector, new_selector)}
    assert "DKIM (retired key, keep until" in output
    assert f"s={new_selector}".encode() in after
    assert _verifies(before, published) and _verifies(after, published)


def test_the_dkim_private_key_is_stored_encrypted(alice: User) -> None:
    key = DkimKey.objects.get(domain=alice.domain)
    assert key.private_key.startswith("aesgcm1:") and "PRIVATE KEY" not in key.private_key


def test_dnsrecords_prints_mx_spf_dkim_dmarc_and_where_discovery_is_served(alice: User, settings: Any) -> None:
    settings.PUSHMAIL_SMTP_HOSTNAME = "mx.alpha.test"

    output = _dnsrecords("alpha.test")

    assert "alpha.test.\t3600\tIN\tMX\t10 mx.alpha.test." in output
    assert 'alpha.test.\t3600\tIN\tTXT\t"v=spf1 mx a:mx.alpha.test ~all"' in output
    assert re.search(r'pm\d{8}[0-9a-f]{6}\._domainkey\.alpha\.test\.\t3600\tIN\tTXT\t"v=DKIM1; k=rsa; p=', output)
    assert '_dmarc.alpha.test.\t3600\tIN\tTXT\t"v=DMARC1; p=quarantine;' in output
    assert "https://alpha.test/.well-known/pushmail must serve" in output


def test_dnsrecords_for_a_domain_not_hosted_here_fails(db: None) -> None:
    with pytest.raises(CommandError, match="no hosted domain ghost.test"):
        _dnsrecords("ghost.test")


# --- MX choice -----------------------------------------------------------------------------------


def test_mail_servers_come_in_preference_order(mx: FakeMx, dns: tuple[Zone, str]) -> None:
    zone, _ = dns
    zone.add("pref.test", "MX", "20 backup.pref.test.")
    zone.add("pref.test", "MX", "5 primary.pref.test.")
    zone.add("backup.pref.test", "A", "192.0.2.2")
    zone.add("primary.pref.test", "A", "192.0.2.1")
    zone.add("primary.pref.test", "AAAA", "2001:db8::1")

    servers = outbound.mail_servers("pref.test")

    assert [(s.name, s.addresses) for s in servers] == [
        ("primary.pref.test", ("192.0.2.1", "2001:db8::1")),
        ("backup.pref.test", ("192.0.2.2",)),
    ]


def test_a_domain_without_mx_gets_mail_at_its_own_address(mx: FakeMx, dns: tuple[Zone, str]) -> None:
    zone, _ = dns
    zone.add("nomx.test", "A", "192.0.2.7")

    assert [(s.name, s.addresses) for s in outbound.mail_servers("nomx.test")] == [("nomx.test", ("192.0.2.7",))]


@pytest.mark.parametrize(
    ("records", "reason"),
    [
        ([("MX", "0 .")], "nullmx.test does not accept mail (null MX)"),
        ([], "the domain nullmx.test does not exist"),
        ([("MX", "10 nowhere.nullmx.test.")], "no address for the mail servers of nullmx.test"),
    ],
)
def test_no_mail_server_is_a_permanent_failure(
    mx: FakeMx, dns: tuple[Zone, str], records: list[tuple[str, str]], reason: str
) -> None:
    zone, _ = dns
    for rtype, value in records:
        zone.add("nullmx.test", rtype, value)
    with pytest.raises(SmtpFailure, match=re.escape(reason)) as failure:
        outbound.mail_servers("nullmx.test")
    assert failure.value.retryable is False


# --- delivery, answers, retries ------------------------------------------------------------------


def test_each_recipient_gets_the_servers_answer_and_a_4xx_is_retried_then_delivered(alice: User, mx: FakeMx) -> None:
    mx.rcpt[f"later@{LEGACY}"] = "450 4.2.1 Mailbox busy, try later"
    mx.rcpt[f"gone@{LEGACY}"] = "550 5.1.1 <gone@legacy.test>: Recipient address rejected"
    message = send_message(
        sender=alice, to=[f"bob@{LEGACY}", f"later@{LEGACY}", f"gone@{LEGACY}"], subject="Plans", text="See you."
    )

    delivery = _deliver(message)

    assert delivery.transport == Transport.SMTP and delivery.state == DeliveryState.RETRYING
    assert _answers(message) == {
        f"bob@{LEGACY}": ("accepted", ""),
        f"later@{LEGACY}": ("pending", ""),
        f"gone@{LEGACY}": ("rejected", "550 5.1.1 <gone@legacy.test>: Recipient address rejected"),
    }
    assert "450 4.2.1 Mailbox busy" in delivery.last_error
    notice = InboxEntry.objects.get(owner=alice, state=EntryState.NOTICE)
    assert f"gone@{LEGACY}" in notice.notice_text and "550 5.1.1" in notice.notice_text
    assert "bob@" not in notice.notice_text and "later@" not in notice.notice_text
    ((mail_from, rcpts, raw),) = mx.received
    assert mail_from == "alice@alpha.test" and rcpts == [f"bob@{LEGACY}"]
    assert _parse(raw)["Subject"] == "Plans"

    del mx.rcpt[f"later@{LEGACY}"]
    delivery = _deliver(message)

    assert delivery.state == DeliveryState.NOTIFIED and delivery.notified_at is not None
    assert delivery.smtp_reply == "250 2.0.0 Ok: queued as 4XYZ"
    assert _answers(message)[f"later@{LEGACY}"] == ("accepted", "")
    assert [rcpts for _, rcpts, _ in mx.received] == [[f"bob@{LEGACY}"], [f"later@{LEGACY}"]]
    assert InboxEntry.objects.filter(owner=alice, state=EntryState.NOTICE).count() == 1

    (row,) = api_as(alice).get(f"/api/v1/messages/{message.pk}/").json()["deliveries"]
    assert (row["transport"], row["state"], row["smtp_reply"]) == ("smtp", "notified", "250 2.0.0 Ok: queued as 4XYZ")
    assert row["offered"] is False
    client = Client()
    client.force_login(alice)
    page = client.get(f"/mail/sent/{message.pk}/").content.decode()
    assert 'data-domain="legacy.test" data-state="sent-by-smtp"' in page
    assert "sent by SMTP <time" in page and "their server answered “250 2.0.0 Ok: queued as 4XYZ”" in page
    assert "1 sent by SMTP" in client.get("/mail/sent/").content.decode()


def test_a_4xx_until_the_window_ends_fails_with_a_notice_naming_the_answer(
    alice: User, mx: FakeMx, settings: Any
) -> None:
    mx.rcpt[f"bob@{LEGACY}"] = "451 4.3.0 Temporary lookup failure"
    message = send_message(sender=alice, to=[f"bob@{LEGACY}"], subject="Old news", text="x")
    Message.objects.filter(pk=message.pk).update(date=timezone.now() - settings.PUSHMAIL_DELIVERY_WINDOW)

    delivery = _deliver(message)

    assert delivery.state == DeliveryState.FAILED
    status, reason = _answers(message)[f"bob@{LEGACY}"]
    assert status == "rejected" and "451 4.3.0 Temporary lookup failure" in reason
    notice = InboxEntry.objects.get(owner=alice, state=EntryState.NOTICE)
    assert f"bob@{LEGACY}" in notice.notice_text and "451 4.3.0" in notice.notice_text


def test_a_5xx_to_the_message_refuses_every_recipient_at_once(alice: User, mx: FakeMx) -> None:
    mx.data_answer = "554 5.7.1 Message rejected as spam"
    message = send_message(sender=alice, to=[f"bob@{LEGACY}", f"eve@{LEGACY}"], subject="Offer", text="x")

    delivery = _deliver(message)

    assert delivery.state == DeliveryState.NOTIFIED
    assert set(_answers(message).values()) == {("rejected", "554 5.7.1 Message rejected as spam")}
    notice = InboxEntry.objects.get(owner=alice, state=EntryState.NOTICE)
    assert "bob@legacy.test" in notice.notice_text and "eve@legacy.test" in notice.notice_text


def test_an_unreachable_mail_server_is_retried(alice: User, mx: FakeMx, settings: Any) -> None:
    settings.PUSHMAIL_SMTP_OUTBOUND_PORT = free_port()  # nothing listens there
    message = send_message(sender=alice, to=[f"bob@{LEGACY}"], subject="Hello", text="x")

    delivery = _deliver(message)

    assert delivery.state == DeliveryState.RETRYING and delivery.next_attempt_at is not None
    assert "mx.legacy.test [127.0.0.1]" in delivery.last_error
    assert _answers(message)[f"bob@{LEGACY}"] == ("pending", "")
    assert not InboxEntry.objects.filter(owner=alice, state=EntryState.NOTICE).exists()


def test_a_domain_with_a_null_mx_fails_at_once_with_a_notice(alice: User, mx: FakeMx, dns: tuple[Zone, str]) -> None:
    zone, _ = dns
    zone.add("nomail.test", "MX", "0 .")
    message = send_message(sender=alice, to=["bob@nomail.test"], subject="Hello", text="x")

    delivery = _deliver(message, "nomail.test")

    assert delivery.state == DeliveryState.FAILED
    assert _answers(message)["bob@nomail.test"] == ("rejected", "nomail.test does not accept mail (null MX)")
    assert "null MX" in InboxEntry.objects.get(owner=alice, state=EntryState.NOTICE).notice_text


def test_mail_servers_on_private_addresses_are_refused_unless_allowed(alice: User, mx: FakeMx, settings: Any) -> None:
    settings.PUSHMAIL_SMTP_ALLOW_PRIVATE_DOMAINS = []
    message = send_message(sender=alice, to=[f"bob@{LEGACY}"], subject="Hello", text="x")

    delivery = _deliver(message)

    assert delivery.state == DeliveryState.RETRYING
    assert "refusing to connect to a private address" in delivery.last_error
    assert mx.received == []


def test_a_smarthost_takes_the_mail_instead_of_the_mx(alice: User, mx: FakeMx, settings: Any, dns: Any) -> None:
    zone, _ = dns
    zone.clear()  # no MX at all: only the relay is asked
    settings.PUSHMAIL_SMTP_RELAY = f"smtp://127.0.0.1:{settings.PUSHMAIL_SMTP_OUTBOUND_PORT}"
    settings.PUSHMAIL_SMTP_OUTBOUND_PORT = free_port()
    message = send_message(sender=alice, to=[f"bob@{LEGACY}"], subject="Via relay", text="x")

    delivery = _deliver(message)

    assert delivery.state == DeliveryState.NOTIFIED
    assert [_parse(raw)["Subject"] for _, _, raw in mx.received] == ["Via relay"]


def test_a_smarthost_password_is_never_sent_without_tls(alice: User, mx: FakeMx, settings: Any) -> None:
    settings.PUSHMAIL_SMTP_RELAY = f"smtp://me:secret@127.0.0.1:{settings.PUSHMAIL_SMTP_OUTBOUND_PORT}"
    message = send_message(sender=alice, to=[f"bob@{LEGACY}"], subject="Via relay", text="x")

    delivery = _deliver(message)

    assert delivery.state == DeliveryState.RETRYING
    assert "does not offer STARTTLS: not sending the password in clear" in delivery.last_error
    assert mx.received == []


def test_with_smtp_off_a_legacy_domain_is_still_rejected(alice: User, mx: FakeMx, settings: Any) -> None:
    settings.PUSHMAIL_SMTP_OUTBOUND = False
    message = send_message(sender=alice, to=[f"bob@{LEGACY}"], subject="Hello", text="x")

    delivery = _deliver(message)

    assert delivery.state == DeliveryState.FAILED and delivery.transport == Transport.FEDERATION
    assert _answers(message)[f"bob@{LEGACY}"] == ("rejected", "legacy domain")
    assert mx.received == []


def test_the_admins_retry_now_sends_again_to_the_recipients_not_taken(
    alice: User, mx: FakeMx, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    mx.rcpt[f"bob@{LEGACY}"] = "451 4.3.0 Temporary lookup failure"
    message = send_message(sender=alice, to=[f"bob@{LEGACY}", f"ann@{LEGACY}"], subject="Again", text="x")
    delivery = _deliver(message)
    assert delivery.state == DeliveryState.RETRYING
    Message.objects.filter(pk=message.pk).update(date=timezone.now() - settings.PUSHMAIL_DELIVERY_WINDOW)
    delivery = _deliver(message)
    assert delivery.state == DeliveryState.FAILED and _answers(message)[f"bob@{LEGACY}"][0] == "rejected"
    Message.objects.filter(pk=message.pk).update(date=timezone.now())
    del mx.rcpt[f"bob@{LEGACY}"]
    admin = MailboxFactory(domain=alice.domain, local_part="postmaster")
    User.objects.filter(pk=admin.pk).update(is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(User.objects.get(pk=admin.pk))

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/admin/outbox/delivery/", {"action": "retry_now", "_selected_action": [delivery.pk]})

    assert response.status_code == 302
    assert _answers(message)[f"bob@{LEGACY}"] == ("pending", "")
    delivery = _deliver(message)
    assert delivery.state == DeliveryState.NOTIFIED
    assert _answers(message) == {f"bob@{LEGACY}": ("accepted", ""), f"ann@{LEGACY}": ("accepted", "")}
    assert [rcpts for _, rcpts, _ in mx.received] == [[f"ann@{LEGACY}"], [f"bob@{LEGACY}"]]


def test_a_display_name_cannot_add_a_header(alice: User) -> None:
    User.objects.filter(pk=alice.pk).update(display_name="Alice\r\nBcc: everyone@example.org")
    message = send_message(sender=User.objects.get(pk=alice.pk), to=[f"bob@{LEGACY}"], subject="Hi", text="x")

    mail = _parse(outbound.signed_message(message))

    assert mail["Bcc"] is None
    assert mail["From"].addresses[0].addr_spec == "alice@alpha.test"
