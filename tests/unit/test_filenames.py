"""Attachment names: one cleaner and one blocked-type check, and every path uses them
(API upload, webmail upload, a remote sender's manifest before download)."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.template.loader import render_to_string
from django.test import Client
from django.utils import timezone

from accounts.models import User
from attachments.filenames import blocked_extension, blocked_extensions, clean_filename
from attachments.models import Blob
from federation import http, payloads
from mailbox import attachment_fetching as fetching
from mailbox.models import InboxEntry, ReceivedAttachment
from mailbox.selectors import attachment_items_for_entry
from outbox import drafts
from outbox.models import DraftAttachment, Message
from tests.conftest import Call, FakePeer, FederationClient, api_as

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]

# Names that must be refused as programs, each with the extension the refusal names.
HOSTILE = [
    ("setup.exe", ".exe"),
    ("setup.EXE", ".exe"),
    ("Setup.ExE", ".exe"),
    ("setup.exe.", ".exe"),
    ("setup.exe...", ".exe"),
    ("setup.exe ", ".exe"),
    ("setup.exe . . ", ".exe"),
    ("setup.exe\t", ".exe"),
    ("setup.exe\u00a0", ".exe"),  # no-break space
    ("setup.exe\u3000", ".exe"),  # ideographic space
    ("setup.exe\u200b", ".exe"),  # zero-width space
    ("setup.exe\ufeff", ".exe"),  # byte order mark
    ("setup.exe\u3164", ".exe"),  # Hangul filler, renders as nothing
    ("setup.exe\x00.pdf", ".exe"),  # C file APIs stop at NUL
    ("setup.e\x00xe", None),  # cut at the NUL: "setup.e"
    ("setup.ex\u200be", ".exe"),
    ("setup.e\u00adxe", ".exe"),  # soft hyphen
    ("invoice\u202efdp.exe", ".exe"),  # right-to-left override: shows as "invoiceexe.pdf"
    ("invoice\u202egpj.scr", ".scr"),
    ("photo\u2066.jpg\u2069.exe", ".exe"),
    ("report.pdf.exe", ".exe"),
    ("a.b.c.bat", ".bat"),
    ("C:\\Users\\ann\\setup.exe", ".exe"),
    ("../../setup.exe", ".exe"),
    ("folder/setup.exe/", ".exe"),
    ("setup.exe::$DATA", ".exe"),  # NTFS default stream: opens setup.exe
    ("setup.exe:hidden", ".exe"),
    ("setup.exe .::$DATA", ".exe"),
    ("setup\uff0eexe", ".exe"),  # fullwidth full stop
    ("setup\u2024exe", ".exe"),  # one dot leader
    ("setup.\uff45\uff58\uff45", ".exe"),  # fullwidth letters
    ("setup.\u0435x\u0435", ".exe"),  # Cyrillic e
    ("setup.\u0415\u0425\u0415", ".exe"),  # Cyrillic capitals
    ("setup.e\u0301xe", ".exe"),  # combining accent
    ("script.JS", ".js"),
    ("run.ps1", ".ps1"),
    ("tool.jar ", ".jar"),
    ("link.lnk.", ".lnk"),
    (".exe", ".exe"),
    ("setup.exe\r\n", ".exe"),
]

HARMLESS = [
    "report.pdf",
    "setup.exe.pdf",
    "setup.exe.txt",
    "exe",
    "archive.tar.gz",
    "Meeting 10:30.pdf",
    "notes.executable",
    "Grüße.txt",
    "資料（２０２４）.pdf",
]


@pytest.mark.parametrize(("name", "extension"), HOSTILE)
def test_hostile_names_are_recognised_as_programs(name: str, extension: str | None) -> None:
    assert blocked_extension(name) == extension
    # Cleaning keeps the verdict: a cleaned name is refused the same way.
    assert blocked_extension(clean_filename(name)) == extension


@pytest.mark.parametrize("name", HARMLESS)
def test_ordinary_names_are_not_refused(name: str) -> None:
    assert blocked_extension(name) is None


@pytest.mark.parametrize("name", [name for name, _ in HOSTILE] + HARMLESS + ["", "...", " ", "\u202e", "/", "a" * 400])
def test_a_cleaned_name_is_valid_on_the_wire_and_cleaning_again_changes_nothing(name: str) -> None:
    cleaned = clean_filename(name)

    assert clean_filename(cleaned) == cleaned
    assert 1 <= len(cleaned) <= 255
    payloads.parse_manifest([{"name": cleaned, "type": "text/plain", "size": 1, "digest": "sha-256:" + "0" * 64}])


@pytest.mark.parametrize(
    ("name", "cleaned"),
    [
        ("setup.exe.", "setup.exe"),
        ("  report.pdf  ", "report.pdf"),
        ("C:\\Users\\ann\\report\u202e.txt", "report.txt"),
        ("../../etc/passwd", "passwd"),
        ("a\r\nb.txt", "a  b.txt"),
        ("setup.exe\x00.pdf", "setup.exe"),
        ("", "attachment"),
        ("...", "attachment"),
        ("Gru\u0308\u00dfe.txt", "Grüße.txt"),  # composed (NFC), not changed otherwise
        ("資料（２０２４）.pdf", "資料（２０２４）.pdf"),
        ("x" * 300 + ".pdf", "x" * 251 + ".pdf"),
    ],
)
def test_the_cleaned_name(name: str, cleaned: str) -> None:
    assert clean_filename(name) == cleaned


def test_the_blocked_list_is_read_however_it_is_written(settings: Any) -> None:
    settings.PUSHMAIL_BLOCKED_ATTACHMENT_EXTENSIONS = "EXE, .bat;cmd"
    assert blocked_extensions() == {".exe", ".bat", ".cmd"}
    assert blocked_extension("a.CMD.") == ".cmd"
    settings.PUSHMAIL_BLOCKED_ATTACHMENT_EXTENSIONS = frozenset({"exe"})
    assert blocked_extension("a.exe ") == ".exe"


# --- every path uses them ------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def media(settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def stored_files(media: Path) -> list[Path]:
    return [p for p in media.rglob("*") if p.is_file()] if media.exists() else []


@pytest.mark.parametrize("name", ["setup.exe.", "setup.exe ", "invoice\u202efdp.exe", "setup.exe::$DATA"])
def test_the_api_refuses_a_program_whatever_its_name_and_stores_nothing(alice: User, media: Path, name: str) -> None:
    response = api_as(alice).post(
        "/api/v1/messages/",
        {
            "to": ["carol@peer.test"],
            "subject": "x",
            "text": "",
            "attachments": [{"name": name, "content": base64.b64encode(b"MZ program").decode()}],
        },
        format="json",
    )

    assert response.status_code == 400, response.content
    assert "files of type .exe cannot be attached" in json.dumps(response.json())
    assert not Message.objects.exists() and not Blob.objects.exists() and not stored_files(media)


@pytest.mark.parametrize("name", ["setup.exe.", "setup.exe ", "report.pdf.exe", "setup.\u0435x\u0435"])
def test_the_webmail_refuses_a_program_whatever_its_name_and_stores_nothing(
    alice: User, media: Path, name: str
) -> None:
    web = Client()
    web.force_login(alice)
    draft = drafts.create_draft(owner=alice, signature=False)

    response = web.post(
        f"/compose/{draft.pk}/attach/", {"subject": "s", "files": [SimpleUploadedFile(name, b"MZ program")]}
    )

    assert 400 <= response.status_code < 500
    assert "cannot be attached" in response.content.decode()
    assert not DraftAttachment.objects.exists() and not Blob.objects.exists() and not stored_files(media)


def test_an_uploaded_name_is_stored_cleaned(alice: User) -> None:
    response = api_as(alice).post(
        "/api/v1/messages/",
        {
            "to": ["carol@peer.test"],
            "subject": "x",
            "text": "",
            "attachments": [{"name": " C:\\tmp\\plan\u200b.pdf. ", "content": base64.b64encode(b"%PDF").decode()}],
        },
        format="json",
    )

    assert response.status_code == 201, response.content
    assert response.json()["attachments"][0]["name"] == "plan.pdf"


def _receive(alice: User, peer: FakePeer, names: list[str]) -> InboxEntry:
    """A message from the peer whose manifest names these files; their bytes are served on request."""
    global_id = uuid.uuid4()
    now = timezone.now().replace(microsecond=0)
    files = {name: b"MZ " + name.encode() for name in names}
    manifest = [
        {
            "name": n,
            "type": "application/octet-stream",
            "size": len(c),
            "digest": "sha-256:" + hashlib.sha256(c).hexdigest(),
        }
        for n, c in files.items()
    ]
    fields: dict[str, Any] = {
        "global_id": global_id,
        "message_id": f"<{global_id}@peer.test>",
        "sender": "carol@peer.test",
        "to": [alice.email],
        "cc": [],
        "subject": "Files for you",
        "date": now,
        "text": "Attached.",
        "html": None,
        "in_reply_to": "",
        "references": [],
        "attachments": manifest,
    }
    content = payloads.canonical_body(**fields)
    notification = payloads.Notification(
        global_id=global_id,
        message_id=fields["message_id"],
        sender="carol@peer.test",
        recipients=[alice.email],
        subject="Files for you",
        date=now,
        size=len(content),
        digest=payloads.digest(content),
        in_reply_to="",
        references=[],
        expires=now + timedelta(days=30),
        attachments=tuple(payloads.ManifestEntry(**m) for m in manifest),
    )
    peer.bodies[str(global_id)] = content
    by_digest = {m["digest"]: files[m["name"]] for m in manifest}

    def serve(call: Call) -> http.Response:
        digest = call.path.rsplit("/", 1)[1]
        return http.Response(status=200, headers={}, content=by_digest[digest], url=call.url)

    peer.on("GET", r"/federation/v1/messages/[^/]+/attachments/[^/]+(.*)", serve)
    assert FederationClient().notify(peer, notification.to_json()).status_code == 200
    return InboxEntry.objects.get(owner=alice, remote__global_id=global_id)


def _attachment_gets(peer: FakePeer) -> list[Call]:
    return [c for c in peer.calls if "/attachments/" in c.path]


def _fetched(web: Client, path: str) -> Any:
    """A download of a file still at the sender's: answered 202 at once, then served once the worker fetched it."""
    first = web.get(path)
    if first.status_code != 202:
        return first
    for job_id in ReceivedAttachment.objects.filter(state="wanted").values_list("pk", flat=True):
        fetching.fetch_attachment(job_id)
    return web.get(path)


def test_a_remote_program_is_listed_as_refused_and_never_fetched(alice: User, peer: FakePeer) -> None:
    entry = _receive(alice, peer, ["setup.exe.", "report.pdf.exe", "setup.\u0435x\u0435", "notes.txt"])
    web = Client()
    web.force_login(alice)

    refused = web.get(f"/mail/entry/{entry.pk}/attachments/0/")
    api_refused = api_as(alice).get(f"/api/v1/inbox/{entry.pk}/attachments/1/")
    lookalike = web.get(f"/mail/entry/{entry.pk}/attachments/2/")

    assert refused.status_code == 403 and lookalike.status_code == 403
    assert "setup.exe: files of type .exe are not accepted here" in html.unescape(refused.content.decode())
    assert api_refused.status_code == 403
    assert api_refused.json()["error"] == "attachment_blocked"
    assert "report.pdf.exe: files of type .exe" in api_refused.json()["detail"]
    assert not _attachment_gets(peer)  # nothing was asked of the sender
    assert not Blob.objects.exists()
    listed = api_as(alice).get(f"/api/v1/inbox/{entry.pk}/").json()["attachments"]
    assert [item["name"] for item in listed] == ["setup.exe", "report.pdf.exe", "setup.\u0435x\u0435", "notes.txt"]
    partial = html.unescape(
        render_to_string("webmail/partials/attachments.html", {"attachment_items": attachment_items_for_entry(entry)})
    )
    assert partial.count('data-testid="attachment-blocked"') == 3
    assert partial.count('data-testid="attachment-link"') == 1  # only notes.txt can be downloaded
    fine = _fetched(web, f"/mail/entry/{entry.pk}/attachments/3/")
    assert fine.status_code == 200 and len(_attachment_gets(peer)) == 1


def test_a_remote_name_is_cleaned_in_the_download_header(alice: User, peer: FakePeer) -> None:
    entry = _receive(alice, peer, ["report.txt.."])
    web = Client()
    web.force_login(alice)

    response = _fetched(web, f"/mail/entry/{entry.pk}/attachments/0/")

    assert response.status_code == 200, response.content
    assert response["Content-Disposition"] == "attachment; filename=\"report.txt\"; filename*=UTF-8''report.txt"
