"""Rejected uploads leave nothing behind: every limit is checked before a byte is stored, a
refused send takes its files with it, and an oversized request is cut off unread."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart

from accounts.models import User
from attachments.models import Blob
from attachments.services import store_upload
from outbox import drafts
from outbox.models import Draft, DraftAttachment, Message
from tests.conftest import api_as

pytestmark = pytest.mark.django_db

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def media(settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def stored_files(media: Path) -> set[str]:
    return {str(p.relative_to(media)) for p in media.rglob("*") if p.is_file()} if media.exists() else set()


@pytest.fixture
def already(media: Path) -> Blob:
    """A file stored before the request: it must still be the only one after a refusal."""
    return store_upload(file=SimpleUploadedFile("earlier.txt", b"stored before"))


def unchanged(media: Path, before: set[str], blob: Blob) -> None:
    assert list(Blob.objects.values_list("pk", flat=True)) == [blob.pk]
    assert stored_files(media) == before


def b64(content: bytes) -> str:
    return base64.b64encode(content).decode()


def send_api(user: User, files: list[tuple[str, bytes]], **fields: Any) -> Any:
    body = {"to": ["carol@peer.test"], "subject": "files", "text": "see attached"} | fields
    body["attachments"] = [{"name": name, "content": b64(content)} for name, content in files]
    return api_as(user).post("/api/v1/messages/", body, format="json")


class Unreadable(io.RawIOBase):
    """A request body that must not be read."""

    reads = 0

    def read(self, size: int = -1) -> bytes:
        type(self).reads += 1
        raise AssertionError("the body was read")

    def readline(self, size: int = -1) -> bytes:
        return self.read(size)


# --- the API ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "files", "expected"),
    [
        pytest.param(
            {"quota_bytes": 1500},
            [("a.bin", b"a" * 800), ("b.bin", b"b" * 800)],
            "Your mailbox is full",
            id="over-quota",
        ),
        pytest.param(
            {"PUSHMAIL_MAX_ATTACHMENT_BYTES": 1000},
            [("small.bin", b"s" * 10), ("big.bin", b"b" * 1001)],
            "big.bin is larger than the 1000 bytes limit for one attachment",
            id="over-per-file",
        ),
        pytest.param(
            {"PUSHMAIL_MAX_MESSAGE_ATTACHMENTS_BYTES": 1500},
            [("a.bin", b"a" * 800), ("b.bin", b"b" * 800)],
            "over the 1.5 KiB limit for one message",
            id="over-per-message",
        ),
        pytest.param(
            {},
            [("notes.txt", b"fine"), ("setup.exe.", b"MZ program")],
            "setup.exe: files of type .exe cannot be attached",
            id="blocked-extension",
        ),
        pytest.param(
            {},
            [(f"f{i}.txt", bytes([i])) for i in range(101)],
            "at most 100 attachments per message",
            id="too-many-files",
        ),
    ],
)
def test_a_refused_api_upload_stores_nothing(
    alice: User, settings: Any, media: Path, already: Blob, limits: dict, files: list, expected: str
) -> None:
    for name, value in limits.items():
        if name == "quota_bytes":
            alice.quota_bytes = value
            alice.save(update_fields=["quota_bytes"])
        else:
            setattr(settings, name, value)
    before = stored_files(media)

    response = send_api(alice, files)

    assert response.status_code == 400, response.content
    assert expected in json.dumps(response.json()["fields"]["attachments"])
    assert not Message.objects.exists()
    unchanged(media, before, already)


def test_a_send_refused_after_the_files_were_stored_takes_them_away(alice: User, media: Path, already: Blob) -> None:
    before = stored_files(media)

    response = send_api(alice, [("a.bin", b"a" * 100), ("b.bin", b"b" * 100)], to=["not an address"])

    assert response.status_code == 400
    assert "to" in response.json()["fields"]
    assert not Message.objects.exists()
    unchanged(media, before, already)


def test_an_accepted_api_upload_is_stored_once(alice: User, media: Path, already: Blob) -> None:
    response = send_api(alice, [("a.bin", b"a" * 100), ("again.bin", b"a" * 100), ("earlier.txt", b"stored before")])

    assert response.status_code == 201, response.content
    assert Blob.objects.count() == 2
    assert len(stored_files(media)) == 2


def test_an_oversized_api_request_is_refused_before_its_body_is_read(alice: User, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1 * MiB
    settings.PUSHMAIL_MAX_MESSAGE_ATTACHMENTS_BYTES = 3 * MiB
    Unreadable.reads = 0

    response = api_as(alice).generic(
        "POST",
        "/api/v1/messages/",
        b"",
        content_type="application/json",
        CONTENT_TYPE="application/json",
        CONTENT_LENGTH=str(5 * MiB + 1),
        **{"wsgi.input": Unreadable()},
    )

    assert response.status_code == 413
    body = response.json()
    assert body["error"] == "too_large"
    assert "over the 5.0 MiB limit" in body["detail"]  # 1 MiB + 3 MiB in base64
    assert "3.0 MiB of attachments" in body["detail"]
    assert Unreadable.reads == 0
    assert not Message.objects.exists()


def test_a_body_without_a_length_is_read_only_up_to_the_limit() -> None:
    from pushmail_site.parsers import LimitedJSONParser, RequestTooLarge

    class View:
        @staticmethod
        def max_body_bytes() -> int:
            return 10

    stream = io.BytesIO(b'{"text": "' + b"x" * 100 + b'"}')
    with pytest.raises(RequestTooLarge) as refused:
        LimitedJSONParser().parse(stream, "application/json", {"view": View(), "request": None})

    assert refused.value.status_code == 413 and "over the 10 bytes limit" in str(refused.value.detail)
    assert stream.tell() == 11  # one byte past the limit, no more


def test_an_api_message_may_be_larger_than_the_general_body_limit(alice: User, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024
    content = bytes(range(256)) * 1024  # 256 KiB: over the general limit once in base64

    response = send_api(alice, [("big.bin", content)])

    assert response.status_code == 201, response.content
    assert Blob.objects.get().size == len(content)


# --- the webmail -------------------------------------------------------------------------------------------


@pytest.fixture
def web(alice: User) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def attach(web: Client, draft: Draft, files: list[tuple[str, bytes]], *, action: str = "attach") -> Any:
    return web.post(
        f"/compose/{draft.pk}/{action}/",
        {"to": "bob@alpha.test", "subject": "s", "text": "t", "files": [SimpleUploadedFile(n, c) for n, c in files]},
    )


@pytest.mark.parametrize(
    ("limits", "files", "status", "expected"),
    [
        pytest.param(
            {"quota_bytes": 1500},
            [("a.bin", b"a" * 800), ("b.bin", b"b" * 800)],
            413,
            "Your mailbox is full: it uses",
            id="over-quota",
        ),
        pytest.param(
            {"PUSHMAIL_MAX_ATTACHMENT_BYTES": 1000},
            [("small.bin", b"s" * 10), ("big.bin", b"b" * 1001)],
            413,
            "big.bin is larger than the 1000 bytes limit for one attachment",
            id="over-per-file",
        ),
        pytest.param(
            {"PUSHMAIL_MAX_MESSAGE_ATTACHMENTS_BYTES": 1500},
            [("a.bin", b"a" * 800), ("b.bin", b"b" * 800)],
            413,
            "more than the 1.5 KiB limit for one message",
            id="over-per-message",
        ),
        pytest.param(
            {},
            [("notes.txt", b"fine"), ("setup.exe ", b"MZ program")],
            400,
            "setup.exe: files of type .exe cannot be attached",
            id="blocked-extension",
        ),
    ],
)
@pytest.mark.parametrize("action", ["attach", "send"])
def test_a_refused_webmail_upload_stores_nothing(
    web: Client,
    alice: User,
    settings: Any,
    media: Path,
    already: Blob,
    limits: dict,
    files: list,
    status: int,
    expected: str,
    action: str,
) -> None:
    for name, value in limits.items():
        if name == "quota_bytes":
            alice.quota_bytes = value
            alice.save(update_fields=["quota_bytes"])
        else:
            setattr(settings, name, value)
    draft = drafts.create_draft(owner=alice, signature=False)
    before = stored_files(media)

    response = attach(web, draft, files, action=action)

    assert response.status_code == status
    assert expected in response.content.decode().replace("\xa0", " ")
    assert not DraftAttachment.objects.exists()
    assert not Message.objects.exists()
    unchanged(media, before, already)


def test_files_already_on_the_draft_count_towards_the_message_limit(
    web: Client, alice: User, settings: Any, media: Path
) -> None:
    settings.PUSHMAIL_MAX_MESSAGE_ATTACHMENTS_BYTES = 1500
    draft = drafts.create_draft(owner=alice, signature=False)
    assert attach(web, draft, [("first.bin", b"1" * 1000)]).status_code == 302
    before = stored_files(media)

    response = attach(web, draft, [("second.bin", b"2" * 1000)])

    assert response.status_code == 413
    assert [a.name for a in DraftAttachment.objects.all()] == ["first.bin"]
    assert stored_files(media) == before


class CountingInput(io.BytesIO):
    """A request body that counts how much of it was read."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.read_bytes = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.read_bytes += len(chunk)
        return chunk

    def readline(self, size: int | None = -1) -> bytes:
        line = super().readline(size)
        self.read_bytes += len(line)
        return line


def _multipart(draft: Draft, content: bytes, name: str = "big.bin") -> bytes:
    return encode_multipart(BOUNDARY, {"subject": "Typed, not saved", "files": [SimpleUploadedFile(name, content)]})


def test_a_webmail_upload_is_cut_off_at_the_limit_not_read_to_the_end(
    web: Client, alice: User, settings: Any, media: Path
) -> None:
    settings.PUSHMAIL_MAX_ATTACHMENT_BYTES = 64 * 1024
    draft = drafts.create_draft(owner=alice, signature=False)
    data = _multipart(draft, b"x" * (4 * MiB))
    body = CountingInput(data)

    response = web.generic(
        "POST",
        f"/compose/{draft.pk}/attach/",
        b"",
        content_type=MULTIPART_CONTENT,
        CONTENT_TYPE=MULTIPART_CONTENT,
        CONTENT_LENGTH=str(len(data)),
        **{"wsgi.input": body},
    )

    assert response.status_code == 413
    assert "big.bin is larger than the 64 KiB limit for one attachment" in response.content.decode()
    assert body.read_bytes < MiB  # stopped soon after the limit, not at the end of the 4 MiB
    assert not Blob.objects.exists() and not stored_files(media)
    assert 'value="Typed, not saved"' in response.content.decode()  # shown again as typed...
    draft.refresh_from_db()
    assert draft.subject == ""  # ...but nothing of the refused request is stored


def test_an_oversized_webmail_request_is_refused_before_its_body_is_read(
    web: Client, alice: User, settings: Any, media: Path
) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1 * MiB
    settings.PUSHMAIL_MAX_MESSAGE_ATTACHMENTS_BYTES = 2 * MiB
    draft = drafts.create_draft(owner=alice, signature=False, subject="Kept as it was")
    Unreadable.reads = 0

    response = web.generic(
        "POST",
        f"/compose/{draft.pk}/send/",
        b"",
        content_type=MULTIPART_CONTENT,
        CONTENT_TYPE=MULTIPART_CONTENT,
        CONTENT_LENGTH=str(4 * MiB),
        **{"wsgi.input": Unreadable()},
    )

    assert response.status_code == 413
    page = response.content.decode().replace("\xa0", " ")
    assert "Nothing was attached: the upload is 4.0 MiB, more than the 2.0 MiB limit for one message" in page
    assert "Kept as it was" in page  # the draft page, with the error on it
    assert Unreadable.reads == 0
    draft.refresh_from_db()
    assert draft.send_at is None
    assert not Blob.objects.exists() and not stored_files(media)


def test_the_quota_left_bounds_a_webmail_request_before_it_is_read(web: Client, alice: User) -> None:
    alice.quota_bytes = 1000
    alice.save(update_fields=["quota_bytes"])
    Unreadable.reads = 0

    response = web.generic(
        "POST",
        f"/compose/{drafts.create_draft(owner=alice, signature=False).pk}/attach/",
        b"",
        content_type=MULTIPART_CONTENT,
        CONTENT_TYPE=MULTIPART_CONTENT,
        CONTENT_LENGTH=str(20 * MiB),
        **{"wsgi.input": Unreadable()},
    )

    assert response.status_code == 413
    assert "your mailbox has 1000 bytes left of its 1000 bytes quota" in response.content.decode()
    assert Unreadable.reads == 0


def test_save_draft_ignores_chosen_files_without_storing_them(web: Client, alice: User, media: Path) -> None:
    draft = drafts.create_draft(owner=alice, signature=False)

    response = attach(web, draft, [("chosen.txt", b"not attached yet")], action="save")

    assert response.status_code == 302
    draft.refresh_from_db()
    assert draft.subject == "s"
    assert not DraftAttachment.objects.exists() and not Blob.objects.exists() and not stored_files(media)


def test_compose_posts_still_need_the_csrf_token(alice: User, media: Path) -> None:
    """The upload limits are set before the body is read, so the CSRF check runs inside the view: it still runs."""
    web = Client(enforce_csrf_checks=True)
    web.force_login(alice)
    draft = drafts.create_draft(owner=alice, signature=False)
    upload = {"subject": "s", "files": [SimpleUploadedFile("a.txt", b"a")]}

    refused = web.post(f"/compose/{draft.pk}/attach/", upload)
    assert refused.status_code == 403
    assert not Blob.objects.exists() and not DraftAttachment.objects.exists()

    page = web.get(f"/compose/{draft.pk}/").content.decode()
    token = page.split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]
    upload["files"] = [SimpleUploadedFile("a.txt", b"a")]
    accepted = web.post(f"/compose/{draft.pk}/attach/", {**upload, "csrfmiddlewaretoken": token})
    assert accepted.status_code == 302
    assert [a.name for a in DraftAttachment.objects.all()] == ["a.txt"]
