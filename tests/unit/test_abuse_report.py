"""Abuse reports (ARF, RFC 5965) with the signed notifications: they parse with Python's email package,
and each signature in them verifies with the origin's published key, checked here from the documented
layout (docs/protocol.md Appendix C) with nothing but `cryptography`."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.core.management import CommandError, call_command
from django.test import Client

from accounts.models import Domain, User
from accounts.services import create_mailbox
from federation.models import SignedRequest
from mailbox.models import RemoteMessage
from reputation.abuse import NoEvidence, abuse_report, evidence_for_messages, evidence_of_origin, report_bytes
from reputation.models import Campaign, OriginPolicy, OriginReputation, SpamVerdict
from tests.conftest import NOTIFICATIONS, FakePeer, FederationClient
from tests.factories import DomainFactory, MailboxFactory, PeerMessageFactory
from tests.unit.test_protocol_doc import example_blocks

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]


# --- an independent verifier, written from docs/protocol.md Appendix C and §3.2 ------------------


@dataclass
class SignedRequestSeen:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    key_id: str


def parse_report(raw: bytes) -> tuple[EmailMessage, Message, EmailMessage]:
    """The report, its feedback fields and the evidence message; asserts the RFC 5965 layout."""
    report = message_from_bytes(raw, policy=policy.default)
    assert isinstance(report, EmailMessage)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "feedback-report"
    parts = list(report.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/feedback-report", "message/rfc822"]
    feedback = parts[1].get_payload()[0]
    original = parts[2].get_payload()[0]
    return report, feedback, original


def _pm_member(header: str) -> str:
    match = re.search(r'(?:^|,)\s*pm=(\((?:[^()"]|"(?:[^"\\]|\\.)*")*\)(?:;[^,]*)?)', header)
    assert match, header
    return match.group(1).strip()


def verify_report(raw: bytes, published: dict[str, str]) -> list[SignedRequestSeen]:
    """Check every signed request in the report against ``published`` (key id -> base64 public key)."""
    _report, _feedback, original = parse_report(raw)
    keys_part = next(p for p in original.iter_attachments() if p.get_filename() == "keys.json")
    enclosed = {k["id"]: k["public_key"] for k in json.loads(keys_part.get_content())["keys"]}
    seen = []
    for part in original.iter_attachments():
        if part.get_content_type() != "application/http":
            continue
        data = part.get_content()
        assert isinstance(data, bytes)
        head, body = data.split(b"\r\n\r\n", 1)
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ")
        assert version == "HTTP/1.1"
        headers = {}
        for line in header_lines:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
        assert int(headers["content-length"]) == len(body)
        # Content-Digest over the exact body bytes (RFC 9530).
        assert headers["content-digest"] == "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
        # The signature base of §3.2.
        params = _pm_member(headers["signature-input"])
        covered = re.findall(r'"([^"]+)"', params[: params.index(")")])
        url = urlsplit("http://" + headers["host"] + target)
        authority = headers["host"].lower()
        for default in (":80", ":443"):
            authority = authority.removesuffix(default)
        values = {
            "@method": method.upper(),
            "@authority": authority,
            "@path": url.path or "/",
            "@query": "?" + url.query,
            "content-digest": headers["content-digest"],
        }
        base = "\n".join([f'"{c}": {values[c]}' for c in covered] + [f'"@signature-params": {params}'])
        key_id = re.search(r';keyid="([^"]+)"', params).group(1)  # type: ignore[union-attr]
        signature = re.search(r"pm=:([A-Za-z0-9+/=]+):", headers["signature"]).group(1)  # type: ignore[union-attr]
        assert enclosed[key_id] == published[key_id], "keys.json does not hold the published key"
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(published[key_id]))
        public.verify(base64.b64decode(signature), base.encode("ascii"))  # raises InvalidSignature
        seen.append(SignedRequestSeen(method, target, headers, body, key_id))
    return seen


# --- the tests --------------------------------------------------------------------------------


def _notify(federation: FederationClient, peer: FakePeer, **fields: Any) -> tuple[dict[str, Any], bytes]:
    payload = PeerMessageFactory(**fields).payload()
    body = json.dumps(payload, ensure_ascii=False).encode()
    response = federation.send("POST", NOTIFICATIONS, body, signer=peer)
    assert response.status_code == 200, response.content
    return payload, body


def test_origin_report_parses_as_arf_and_verifies_with_the_published_key(
    federation: FederationClient, peer: FakePeer, alice: User, bob: User
) -> None:
    sent = [_notify(federation, peer, to=[alice.email], subject="Wïn a prize 1")]
    sent.append(_notify(federation, peer, to=[alice.email, bob.email], subject="Win a prize 2", sender="dan@peer.test"))
    assert federation.withdraw(peer, sent[0][0]["id"], "carol@peer.test").status_code == 200

    raw = abuse_report(notifications=evidence_of_origin("peer.test"))

    report, feedback, original = parse_report(raw)
    assert report["To"] == "abuse@peer.test"
    assert feedback["Feedback-Type"] == "abuse"
    assert feedback["Version"] == "1"
    assert feedback["User-Agent"].startswith("Pushmail/")
    assert feedback.get_all("Reported-Domain") == ["peer.test"]
    assert feedback["Original-Mail-From"] == "<dan@peer.test>"  # the newest notification's sender
    assert feedback["Arrival-Date"] and feedback["Source-IP"] == "127.0.0.1"
    assert feedback["Incidents"] == "3"
    assert original["From"] == "dan@peer.test" and original["Subject"] == "Win a prize 2"
    text = report.get_body(("plain",)).get_content()
    assert "2 notifications and 1 withdrawal" in text and "3 of 3 signatures verify" in text
    seen = verify_report(raw, {peer.key_id: peer.public_b64})
    assert sorted(s.body for s in seen if s.target == NOTIFICATIONS) == sorted(body for _, body in sent)
    assert [s.target for s in seen].count("/federation/v1/withdrawals") == 1


def test_a_forged_or_altered_request_fails_the_check(
    federation: FederationClient, peer: FakePeer, other_peer: FakePeer, alice: User
) -> None:
    _notify(federation, peer, to=[alice.email])
    raw = abuse_report(notifications=SignedRequest.objects.all())

    with pytest.raises(Exception, match=r"InvalidSignature|does not hold"):
        verify_report(raw, {peer.key_id: other_peer.public_b64})  # not the key peer.test published
    SignedRequest.objects.update(body=bytes(SignedRequest.objects.get().body).replace(b"alice", b"alicf"))
    with pytest.raises(AssertionError):
        verify_report(abuse_report(notifications=SignedRequest.objects.all()), {peer.key_id: peer.public_b64})


def test_origin_report_holds_the_newest_n(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    subjects = [f"Run {n}" for n in range(3)]
    for subject in subjects:
        _notify(federation, peer, to=[alice.email], subject=subject)

    raw = abuse_report(notifications=evidence_of_origin("peer.test", limit=2))

    seen = verify_report(raw, {peer.key_id: peer.public_b64})
    assert sorted(json.loads(s.body)["subject"] for s in seen) == subjects[1:]


def test_report_for_messages_and_by_ids(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    wanted, _ = _notify(federation, peer, to=[alice.email])
    _notify(federation, peer, to=[alice.email])
    message = RemoteMessage.objects.filter(global_id=wanted["id"])

    by_message = verify_report(
        abuse_report(notifications=evidence_for_messages(message)), {peer.key_id: peer.public_b64}
    )
    ids = list(evidence_for_messages(message).values_list("pk", flat=True))
    by_id = verify_report(abuse_report(notifications=ids), {peer.key_id: peer.public_b64})

    assert [json.loads(s.body)["id"] for s in by_message] == [json.loads(s.body)["id"] for s in by_id] == [wanted["id"]]
    with pytest.raises(NoEvidence):
        abuse_report(notifications=[])


@pytest.fixture
def superuser_client(local_domain: Domain) -> Client:
    root = create_mailbox(address=f"root@{local_domain.name}", password="admin passphrase 123", is_staff=True)
    User.objects.filter(pk=root.pk).update(is_superuser=True)
    client = Client()
    client.force_login(User.objects.get(pk=root.pk))
    return client


def _download(response: Any) -> bytes:
    assert response.status_code == 200, response.content[:2000]
    assert response["Content-Type"] == "message/rfc822"
    assert response["Content-Disposition"].startswith('attachment; filename="abuse-report-peer.test-')
    return bytes(response.content)


def test_admin_exports_a_verdict_and_an_origin(
    superuser_client: Client, federation: FederationClient, peer: FakePeer, alice: User
) -> None:
    spam, spam_body = _notify(federation, peer, to=[alice.email], subject="Cheap pills")
    _notify(federation, peer, to=[alice.email], subject="Hello")
    message = RemoteMessage.objects.get(global_id=spam["id"])
    verdict = SpamVerdict.objects.create(message=message, reports=3, readers=3, reason="3 people reported this")
    policy_row = OriginPolicy.objects.create(domain="peer.test")

    verdict_report = _download(
        superuser_client.post(
            "/admin/reputation/spamverdict/",
            {"action": "export_verdict_abuse_report", "_selected_action": [verdict.pk]},
        )
    )
    origin_report = _download(
        superuser_client.post(
            "/admin/reputation/originpolicy/",
            {"action": "export_origin_abuse_report", "_selected_action": [policy_row.pk]},
        )
    )
    evidence_page = superuser_client.post(
        "/admin/federation/signedrequest/",
        {"action": "export_origins", "_selected_action": [SignedRequest.objects.first().pk]},  # type: ignore[union-attr]
    )

    assert [s.body for s in verify_report(verdict_report, {peer.key_id: peer.public_b64})] == [spam_body]
    assert len(verify_report(origin_report, {peer.key_id: peer.public_b64})) == 2
    assert len(verify_report(_download(evidence_page), {peer.key_id: peer.public_b64})) == 2


def test_admin_export_without_evidence_says_so(superuser_client: Client, alice: User) -> None:
    policy_row = OriginPolicy.objects.create(domain="quiet.test")

    response = superuser_client.post(
        "/admin/reputation/originpolicy/",
        {"action": "export_origin_abuse_report", "_selected_action": [policy_row.pk]},
        follow=True,
    )

    assert response.status_code == 200
    assert "No abuse report: no kept signed notification matches" in response.content.decode()


def test_a_domain_admin_reports_only_what_reached_their_domain(
    federation: FederationClient, peer: FakePeer, alice: User, local_domain: Domain
) -> None:
    elsewhere = DomainFactory(name="beta.test")
    betty = MailboxFactory(domain=elsewhere, local_part="betty")
    _notify(federation, peer, to=[alice.email], subject="To alpha")
    _notify(federation, peer, to=[betty.email], subject="To beta")
    domain_admin = create_mailbox(address=f"admin@{local_domain.name}", password="admin passphrase 123", is_staff=True)
    client = Client()
    client.force_login(domain_admin)
    listing = client.get("/admin/federation/signedrequest/")
    assert listing.status_code == 200
    visible = SignedRequest.objects.get(local_domain="alpha.test")

    response = client.post(
        "/admin/federation/signedrequest/", {"action": "export_origins", "_selected_action": [visible.pk]}
    )

    seen = verify_report(_download(response), {peer.key_id: peer.public_b64})
    assert [json.loads(s.body)["subject"] for s in seen] == ["To alpha"]


def test_management_command_writes_the_report(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    _notify(federation, peer, to=[alice.email])
    out = io.StringIO()

    call_command("abuse_report", "--origin", "peer.test", stdout=out)

    assert len(verify_report(out.getvalue().encode("ascii"), {peer.key_id: peer.public_b64})) == 1
    with pytest.raises(CommandError, match="either --origin"):
        call_command("abuse_report", stdout=io.StringIO())
    with pytest.raises(CommandError, match="no kept signed notification"):
        call_command("abuse_report", "--origin", "quiet.test", stdout=io.StringIO())


# --- docs/protocol.md Appendix C: the worked example is what the code produces, and it verifies -----


def _arf_blocks() -> dict[str, str]:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")
    return dict(re.findall(r"<!-- pushmail-arf-example: (\S+) -->\n```[^\n]*\n(.*?)\n```", doc, re.S))


def test_appendix_c_worked_example_is_what_the_export_writes_and_it_verifies() -> None:
    ex, arf = example_blocks(), _arf_blocks()
    assert set(arf) == {"feedback-report", "http-request", "keys"}
    head = dict(line.split(": ", 1) for line in ex["notification-request"].split("\n")[1:])
    row = SignedRequest(
        kind="notification",
        origin_domain="alpha.example",
        global_id=uuid.UUID("3f1c9a52-7d4e-4b8a-9e21-6c0d5b7a8f13"),
        sender="ann@alpha.example",
        local_domain="beta.example",
        received_at=datetime(2026, 11, 26, 10, 0, 1, tzinfo=UTC),
        source_ip="192.0.2.10",
        method="POST",
        authority="mail.beta.example",
        path=NOTIFICATIONS,
        query="?",
        content_digest=head["Content-Digest"],
        signature_input=head["Signature-Input"],
        signature=head["Signature"],
        headers={"Host": "mail.beta.example", "Content-Type": "application/json"},
        key_id=ex["alpha-key-id"],
        public_key=ex["alpha-public-key"],
        body=ex["notification-body"].encode(),
    )
    doc_head, doc_body = arf["http-request"].split("\n\n", 1)
    documented = doc_head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + doc_body.encode()

    raw = report_bytes([row], reporter="postmaster@beta.example")

    _report, feedback, original = parse_report(raw)
    assert feedback.as_string().split("\n\n", 1)[0].replace("\r\n", "\n") == arf["feedback-report"]
    [http_part] = [p for p in original.iter_attachments() if p.get_content_type() == "application/http"]
    assert http_part.get_content() == documented
    keys_part = next(p for p in original.iter_attachments() if p.get_filename() == "keys.json")
    assert keys_part.get_content().decode() == arf["keys"]
    [seen] = verify_report(raw, {ex["alpha-key-id"]: ex["alpha-public-key"]})
    assert seen.body == ex["notification-body"].encode()


def test_a_report_carries_at_most_the_newest_limit(federation: FederationClient, peer: FakePeer, alice: User) -> None:
    for n in range(3):
        _notify(federation, peer, to=[alice.email], subject=f"Many {n}")

    raw = abuse_report(notifications=SignedRequest.objects.all(), limit=2)

    seen = verify_report(raw, {peer.key_id: peer.public_b64})
    assert sorted(json.loads(s.body)["subject"] for s in seen) == ["Many 1", "Many 2"]


def test_a_domain_admin_exports_a_campaign_and_an_origin_from_their_reputation_pages(
    federation: FederationClient, peer: FakePeer, alice: User, bob: User, local_domain: Domain
) -> None:
    """A run split into two messages (one campaign, reputation.campaigns), and an unrelated message."""
    first, first_body = _notify(federation, peer, to=[alice.email], subject="Your parcel is waiting at the depot")
    second, second_body = _notify(
        federation, peer, to=[bob.email], subject="Your parcel is waiting at the depot", sender="dan@peer.test"
    )
    _notify(federation, peer, to=[alice.email], subject="Minutes of the meeting")
    campaign = Campaign.objects.get(members__message__global_id=first["id"])
    origin = OriginReputation.objects.create(domain="peer.test")
    domain_admin = create_mailbox(address=f"admin@{local_domain.name}", password="admin passphrase 123", is_staff=True)
    client = Client()
    client.force_login(domain_admin)

    campaign_report = _download(
        client.post(
            "/admin/reputation/campaign/",
            {"action": "export_campaign_abuse_report", "_selected_action": [campaign.pk]},
        )
    )
    origin_report = _download(
        client.post(
            "/admin/reputation/originreputation/",
            {"action": "export_origin_abuse_report", "_selected_action": [origin.pk]},
        )
    )

    published = {peer.key_id: peer.public_b64}
    assert sorted(s.body for s in verify_report(campaign_report, published)) == sorted([first_body, second_body])
    assert len(verify_report(origin_report, published)) == 3
