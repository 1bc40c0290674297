"""Every answer that carries attachment bytes to a reader, from the webmail or the API.

:func:`serve_blob` answers a download (``Content-Disposition: attachment``,
``application/octet-stream``) unless ``?inline=1`` asks for a preview of a
raster image or a PDF, the only types ever shown in the page. ``nosniff`` and
a sandboxing Content-Security-Policy keep the browser from running anything
in them, whatever the sender put there.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import quote

from django.http import FileResponse, HttpRequest

from .filenames import clean_filename
from .models import Blob
from .selectors import previewable

# Nothing in an attachment response may load, run or act as our origin. The
# sandbox comes from this header, not from an iframe attribute: Chromium's PDF
# viewer still renders under it, but refuses to load in a sandboxed <iframe>.
ATTACHMENT_CSP = "default-src 'none'; sandbox"


def content_disposition(kind: str, name: str) -> str:
    """RFC 6266: an ASCII ``filename`` fallback and the exact name as ``filename*`` (RFC 8187)."""
    name = clean_filename(name)
    # ASCII fallback for old clients: accents dropped (ü -> u), anything else unsafe becomes "_".
    decomposed = unicodedata.normalize("NFKD", name)
    fallback = (
        "".join(
            c if c.isascii() and (c.isalnum() or c in " .-_()+,=") else "_"
            for c in decomposed
            if not unicodedata.combining(c)
        ).strip()
        or "attachment"
    )
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def serve_blob(request: HttpRequest, blob: Blob, *, name: str, content_type: str) -> FileResponse:
    """Stream ``blob`` as a download, or as an inline preview when allowed (see module docstring)."""
    inline = request.GET.get("inline") == "1" and previewable(content_type)
    response = FileResponse(blob.file.open("rb"), content_type=content_type if inline else "application/octet-stream")
    response["Content-Length"] = str(blob.size)
    response["Content-Disposition"] = content_disposition("inline" if inline else "attachment", name)
    response["X-Content-Type-Options"] = "nosniff"
    # Set here, so django-csp leaves it as it is instead of adding the page policy.
    response["Content-Security-Policy"] = ATTACHMENT_CSP
    if inline:
        response["X-Frame-Options"] = "SAMEORIGIN"  # a PDF preview is framed by the message page
    response["Cache-Control"] = "private, max-age=3600"
    response["Referrer-Policy"] = "no-referrer"
    return response
