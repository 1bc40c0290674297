"""Uploads cut off at the limit, before their bytes reach storage.

A multipart upload is refused by its ``Content-Length`` before the body is
read when it cannot be within the limits, and otherwise counted as it
streams in by :class:`LimitedUploadHandler`, which stops the upload at the
first byte over a limit (per file, per message, the mailbox quota) or at the
first file of a blocked type. A view that accepts attachments sets the
allowance with :func:`limit_uploads` before it reads the request, then asks
:func:`upload_problem` what stopped it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, SkipFile, StopUpload
from django.http import HttpRequest, QueryDict
from django.utils.datastructures import MultiValueDict

from pushmail_site.sizes import human_size

from .filenames import blocked_extension, blocked_reason, clean_filename
from .selectors import usage_bytes
from .services import MAX_FILES, file_too_large, message_too_large, quota_exceeded, too_many_files

if TYPE_CHECKING:
    from accounts.models import User

# Room for a multipart request's boundaries and part headers, beyond its fields and files.
FORM_OVERHEAD = 64 * 1024


@dataclass(frozen=True)
class Allowance:
    """What one request may still add to a message or draft."""

    files: int  # how many files
    total: int  # how many bytes of files, per message
    quota_left: int | None = None  # how many bytes before the mailbox is over its quota
    used: int = 0
    quota: int | None = None
    attached: int = 0  # bytes already on the message
    file_bytes: int | None = None  # how many bytes one file may have; None: PUSHMAIL_MAX_ATTACHMENT_BYTES

    def room(self) -> int:
        return max(0, self.total if self.quota_left is None else min(self.total, self.quota_left))

    def request_limit(self) -> int:
        """The largest request that can be within the allowance: its files plus the form's other fields."""
        return self.room() + settings.DATA_UPLOAD_MAX_MEMORY_SIZE + FORM_OVERHEAD

    def too_large(self, size: int) -> str:
        """Why a request of ``size`` bytes is refused unread, naming the limit it must exceed."""
        if self.quota_left is not None and self.quota is not None and self.quota_left < self.total:
            return (
                f"Nothing was attached: the upload is {human_size(size)}, and your mailbox has "
                f"{human_size(self.quota_left)} left of its {human_size(self.quota)} quota."
            )
        limit = settings.PUSHMAIL_MAX_MESSAGE_ATTACHMENTS_BYTES
        left = f" ({human_size(self.total)} left on this message)" if self.attached else ""
        return (
            f"Nothing was attached: the upload is {human_size(size)}, more than the {human_size(limit)} "
            f"limit for one message's attachments{left}."
        )


def allowance_for(*, user: User | None = None, attached: Sequence[int] = ()) -> Allowance:
    """The allowance of a request adding files to a message that has files of the ``attached`` sizes;
    with ``user``, their mailbox quota too."""
    total = settings.PUSHMAIL_MAX_MESSAGE_ATTACHMENTS_BYTES - sum(attached)
    files = MAX_FILES - len(attached)
    if user is None:
        return Allowance(files=files, total=total, attached=sum(attached))
    used = usage_bytes(user)
    quota = user.effective_quota_bytes
    return Allowance(files=files, total=total, quota_left=quota - used, used=used, quota=quota, attached=sum(attached))


class LimitedUploadHandler(FileUploadHandler):
    """Counts uploaded bytes as they arrive and stops the upload at the first limit crossed.

    Installed first in ``FILE_UPLOAD_HANDLERS``, so that every multipart request
    has at least the instance's per-file and per-message limits; a view that
    takes attachments narrows it to the draft and the mailbox (:func:`limit_uploads`).
    Nothing reaches the handlers after it once it stops: no temporary file, no blob.
    """

    def __init__(self, request: HttpRequest | None = None) -> None:
        super().__init__(request)
        self.allowance = allowance_for()
        self.check_names = False
        self.discard = False
        self.problem: str | None = None
        self.status = 413
        self._file = ""
        self._file_bytes = 0
        self._total = 0
        self._files = 0

    def _stop(self, problem: str, status: int = 413) -> None:
        self.problem, self.status = problem, status
        # Reset: the rest of the body is not read, so nothing more is stored, even temporarily.
        raise StopUpload(connection_reset=True)

    def handle_raw_input(
        self, input_data: Any, META: Any, content_length: int, boundary: Any, encoding: str | None = None
    ) -> tuple[QueryDict, MultiValueDict] | None:
        if content_length > self.allowance.request_limit():
            self.problem, self.status = self.allowance.too_large(content_length), 413
            # Answer the parse with nothing: the body is left unread.
            return QueryDict(encoding=encoding), MultiValueDict()
        return None

    def new_file(self, field_name: str, file_name: str, *args: Any, **kwargs: Any) -> None:
        super().new_file(field_name, file_name, *args, **kwargs)
        if self.discard:
            raise SkipFile()
        self._files += 1
        self._file = clean_filename(file_name)
        self._file_bytes = 0
        extension = blocked_extension(file_name) if self.check_names else None
        if extension:
            self._stop(blocked_reason(self._file, extension), status=400)
        if self._files > self.allowance.files:
            self._stop(too_many_files(self._files + MAX_FILES - self.allowance.files))

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        self._file_bytes += len(raw_data)
        self._total += len(raw_data)
        allowance = self.allowance
        per_file = settings.PUSHMAIL_MAX_ATTACHMENT_BYTES if allowance.file_bytes is None else allowance.file_bytes
        if self._file_bytes > per_file:
            self._stop(file_too_large(self._file))
        if self._total > allowance.total:
            self._stop(message_too_large())
        if allowance.quota_left is not None and allowance.quota is not None and self._total > allowance.quota_left:
            self._stop(quota_exceeded(used=allowance.used, quota=allowance.quota, extra=None))
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None  # the next handler makes the file


def _handler(request: HttpRequest) -> LimitedUploadHandler | None:
    return next((h for h in request.upload_handlers if isinstance(h, LimitedUploadHandler)), None)


def limit_uploads(request: HttpRequest, *, allowance: Allowance, discard: bool = False) -> str | None:
    """Count this request's uploads against ``allowance`` (or, with ``discard``, store none of them).

    Call it before anything reads ``request.POST`` or ``request.FILES`` (CSRF
    included: see ``csrf_exempt`` and ``csrf_protect``). Returns why the request
    is refused when its ``Content-Length`` alone is over the allowance: the body
    is then never read.
    """
    handler = _handler(request)
    if handler is None:
        handler = LimitedUploadHandler(request)
        request.upload_handlers.insert(0, handler)
    handler.allowance = allowance
    handler.check_names = True
    handler.discard = discard
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > allowance.request_limit() and request.content_type == "multipart/form-data":
        handler.problem, handler.status = allowance.too_large(declared), 413
        return handler.problem
    return None


def upload_problem(request: HttpRequest) -> tuple[str, int] | None:
    """Why the upload handler stopped this request's upload, and the status to answer; None if it did not.

    Reads the request (so the handler has seen it) unless the Content-Length alone refused it.
    """
    handler = _handler(request)
    if handler is not None and handler.problem is None:
        request.FILES  # noqa: B018 - parse the body now, through the handler
    if handler is None or handler.problem is None:
        return None
    return handler.problem, handler.status
