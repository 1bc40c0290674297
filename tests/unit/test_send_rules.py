"""What may be sent is decided once (outbox/rules.py): the API and the webmail refuse the same
input with the same words, keep the same MIME types, and write sizes the same way."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.models import User
from outbox import services
from outbox.models import Draft, DraftAttachment, DraftState, Message, MessageAttachment

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]

MESSAGES = "/api/v1/messages/"
ROOT = Path(django_settings.BASE_DIR)


@pytest.fixture
def web(alice: User) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def _api_problems(api: APIClient, body: dict[str, Any]) -> dict[str, list[str]]:
    response = api.post(MESSAGES, {"subject": "s", "text": "t", **body}, format="json")
    assert response.status_code == 400, response.content
    assert not Message.objects.exists()
    return response.json()["fields"]


def _web_problems(web: Client, alice: User, **fields: str) -> str:
    draft = services.create_draft(owner=alice, signature=False)
    data = {"to": "", "cc": "", "bcc": "", "subject": "s", "text": "t", **fields}
    response = web.post(reverse("webmail:draft-send", args=[draft.pk]), data)
    assert response.status_code == 400
    assert Draft.objects.get(pk=draft.pk).state == DraftState.DRAFT
    return response.content.decode().replace("&#x27;", "'")


@pytest.mark.parametrize(
    ("api_body", "web_fields", "field"),
    [
        (
            {"to": ["bob@alpha.test"], "subject": "Hi\r\nBcc: eve@evil.test"},
            {"to": "bob@alpha.test", "subject": "Hi\r\nBcc: eve@evil.test"},
            "subject",
        ),
        ({"to": []}, {"to": " , "}, "to"),
        ({"to": ["bob@alpha.test", "not an address"]}, {"to": "bob@alpha.test, not an address"}, "to"),
        (
            {"to": [f"u{i}@alpha.test" for i in range(11)]},
            {"to": ", ".join(f"u{i}@alpha.test" for i in range(11))},
            "to",
        ),
        (
            {"to": ["bob@alpha.test"], "subject": "bell \x07"},
            {"to": "bob@alpha.test", "subject": "bell \x07"},
            "subject",
        ),
    ],
    ids=["line-break", "no-recipient", "bad-address", "too-many", "control-character"],
)
def test_api_and_webmail_refuse_the_same_input_in_the_same_words(
    api: APIClient, web: Client, alice: User, settings: Any, api_body: dict, web_fields: dict, field: str
) -> None:
    settings.PUSHMAIL_MAX_RECIPIENTS = 1  # ten per message
    problems = _api_problems(api, api_body)[field]
    page = _web_problems(web, alice, **web_fields)
    for problem in problems:
        assert problem in page, (problem, re.findall(r'data-testid="compose-errors".*?</', page, re.S))


def test_the_api_counts_recipients_against_the_one_cap(api: APIClient, settings: Any) -> None:
    settings.PUSHMAIL_MAX_RECIPIENTS = 1
    assert _api_problems(api, {"to": [f"u{i}@alpha.test" for i in range(11)]}) == {
        "to": ["Too many recipients: 11; a message can have at most 10."]
    }


def test_content_types_are_cleaned_the_same_way_on_both_paths(api: APIClient, alice: User, bob: User) -> None:
    files = [
        {"name": "notes.txt", "type": "Text/Plain; charset=utf-8", "content": base64.b64encode(b"hi").decode()},
        {"name": "odd.bin", "type": "not a type", "content": base64.b64encode(b"x").decode()},
    ]
    response = api.post(
        MESSAGES, {"to": ["bob@alpha.test"], "subject": "s", "text": "t", "attachments": files}, format="json"
    )
    assert response.status_code == 201, response.content
    sent = dict(MessageAttachment.objects.values_list("name", "content_type"))
    assert sent == {"notes.txt": "text/plain", "odd.bin": "application/octet-stream"}

    draft = services.create_draft(owner=alice, signature=False)
    services.add_attachments(
        draft=draft,
        files=[
            SimpleUploadedFile("notes.txt", b"hi", content_type="Text/Plain; charset=utf-8"),
            SimpleUploadedFile("odd.bin", b"x", content_type="not a type"),
            SimpleUploadedFile("plan.pdf", b"%PDF", content_type="application/octet-stream"),
        ],
    )
    attached = dict(DraftAttachment.objects.values_list("name", "content_type"))
    assert attached == {"notes.txt": "text/plain", "odd.bin": "application/octet-stream", "plan.pdf": "application/pdf"}


def test_sizes_are_written_one_way_on_pages_in_errors_and_in_the_api(
    api: APIClient, web: Client, alice: User, settings: Any
) -> None:
    settings.PUSHMAIL_MAX_ATTACHMENT_BYTES = 5 * 1024
    settings.PUSHMAIL_MAX_MESSAGE_ATTACHMENTS_BYTES = 3 * 1024
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    page = web.get(reverse("webmail:compose")).content.decode()
    assert "Up to 5.0\xa0KiB per file and 3.0\xa0KiB per message" in page

    response = api.post(MESSAGES, {"to": ["bob@alpha.test"], "subject": "s", "text": "x" * 6000}, format="json")
    assert response.status_code == 413
    detail = response.json()["detail"]
    assert "over the 5.0 KiB limit (3.0 KiB of attachments, base64-encoded, plus 1.0 KiB for the rest" in detail


# --- one definition of each -------------------------------------------------------------------------------

SOURCES = ["outbox", "federation", "mailbox", "webmail", "accounts", "attachments", "reputation", "pushmail_site"]


def _python_sources() -> list[Path]:
    return [p for package in SOURCES for p in sorted((ROOT / package).rglob("*.py")) if "migrations" not in p.parts]


def test_one_size_formatter() -> None:
    defined = [str(p.relative_to(ROOT)) for p in _python_sources() if re.search(r"def human_size\(size", p.read_text())]
    assert defined == ["pushmail_site/sizes.py"]
    uses = [p for p in ROOT.glob("templates/**/*.html") if "filesizeformat" in p.read_text()]
    uses += [p for p in _python_sources() if "filesizeformat" in p.read_text()]
    assert uses == []


def test_one_mime_type_pattern() -> None:
    pattern = "a-z0-9!#$&^_.+-"
    defined = [str(p.relative_to(ROOT)) for p in _python_sources() if pattern in p.read_text()]
    assert defined == ["federation/payloads.py"]


def test_recipient_cap_written_once() -> None:
    found = [
        str(p.relative_to(ROOT))
        for p in _python_sources()
        if re.search(r"PUSHMAIL_MAX_RECIPIENTS \* 10|max_length=10000", p.read_text())
    ]
    assert found == ["outbox/rules.py"]
