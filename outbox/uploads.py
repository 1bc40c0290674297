"""A draft's attachments: uploads stored once (by SHA-256), all of a request's files or none."""

from __future__ import annotations

from collections.abc import Sequence

from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone

from attachments.services import AttachmentInput, check_new_files, store_upload, storing_atomically

from .drafts import lock_open_draft
from .models import Draft, DraftAttachment
from .rules import clean_content_type, clean_filename


def add_attachments(*, draft: Draft, files: list[UploadedFile]) -> list[DraftAttachment]:
    """Store uploads (deduplicated by SHA-256) on a draft: all of them, or none with a reason.

    Every limit is checked before a byte is stored, and the files are stored
    with their draft rows or not at all.
    """
    files = [f for f in files if f is not None]
    if not files:
        return []
    with storing_atomically():
        current = lock_open_draft(draft)
        check_new_files(
            user=draft.owner,
            files=[(upload.name or "", upload.size or 0) for upload in files],
            attached=[a.size for a in current.attachments.all()],
        )
        added = [_attach(current, upload) for upload in files]
        Draft.objects.filter(pk=current.pk).update(updated_at=timezone.now())
    return added


def _attach(draft: Draft, upload: UploadedFile) -> DraftAttachment:
    name = clean_filename(upload.name)
    content_type = clean_content_type(upload.content_type, name=name)
    blob = store_upload(file=upload)
    return DraftAttachment.objects.create(draft=draft, blob=blob, name=name, content_type=content_type, size=blob.size)


def attach_stored(*, draft: Draft, files: Sequence[AttachmentInput]) -> list[DraftAttachment]:
    """Attach files already stored here to a new draft (a forward carries those its reader has)."""
    return DraftAttachment.objects.bulk_create(
        DraftAttachment(draft=draft, blob=f.blob, name=f.name, content_type=f.content_type, size=f.blob.size)
        for f in files
    )


def remove_attachment(*, draft: Draft, attachment_id: int) -> None:
    with transaction.atomic():
        current = lock_open_draft(draft)
        DraftAttachment.objects.filter(draft=current, pk=attachment_id).delete()
