"""Attachment file names: one cleaner and one blocked-type check, used on every path.

A name is cleaned by :func:`clean_filename` wherever it enters or leaves this
instance: an upload through the webmail or the API, and a remote sender's
manifest before a file is fetched, listed, exported or offered in a
``Content-Disposition`` header. :func:`blocked_extension` decides whether a
name is of a type refused as an attachment (``PUSHMAIL_BLOCKED_ATTACHMENT_EXTENSIONS``);
it cleans the name first, so whatever a client or a peer sends, the check
sees the name a reader's system would save.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from django.conf import settings

MAX_NAME = 255
FALLBACK = "attachment"

# Letters and marks that render as nothing although they are not control or
# formatting characters (Hangul fillers, the Braille blank, variation
# selectors...): "setup.exe" followed by one of them must not pass for another type.
_INVISIBLE = re.compile(
    "[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u2800\u3164\ufe00-\ufe0f\uffa0\U000e0100-\U000e01ef]"
)
_SEPARATORS = re.compile(r"[/\\]")

# Letters from other scripts that look like the Latin ones used in extensions
# (after case folding): ".ехе" in Cyrillic reads as ".exe" to a person.
_LOOKALIKES = str.maketrans(
    {
        # Cyrillic
        "а": "a", "в": "b", "с": "c", "ԁ": "d", "е": "e", "һ": "h", "н": "h", "і": "i", "ј": "j", "к": "k",
        "ӏ": "l", "м": "m", "о": "o", "р": "p", "ԛ": "q", "ѕ": "s", "т": "t", "у": "y", "ԝ": "w", "х": "x",
        # Greek
        "α": "a", "β": "b", "ε": "e", "η": "h", "ι": "i", "κ": "k", "μ": "m", "ν": "v", "ο": "o", "ρ": "p",
        "τ": "t", "υ": "u", "χ": "x", "ζ": "z",
        # Armenian and Latin variants
        "օ": "o", "ս": "u", "հ": "h", "ı": "i", "ȷ": "j", "ɡ": "g", "ɑ": "a",
    }
)  # fmt: skip


def _visible(ch: str) -> bool:
    return unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


def clean_filename(name: object) -> str:
    """The name to store, show and offer for download: never empty, at most 255 characters.

    Keeps what a reader recognises and drops what could mislead a person or a
    file system: everything after a NUL (C file APIs stop there), directories
    (``/`` and ``\\``), control and formatting characters (so no CR, LF or
    right-to-left override), invisible fillers, and leading or trailing white
    space and trailing dots (Windows drops those, so ``setup.exe.`` is
    ``setup.exe``). Other white space becomes a plain space. A name too long
    is shortened before its extension. Cleaning a clean name changes nothing.
    """
    text = unicodedata.normalize("NFC", name) if isinstance(name, str) else ""
    text = text.split("\x00", 1)[0]
    text = "".join(" " if ch.isspace() else ch for ch in text)
    text = _INVISIBLE.sub("", "".join(ch for ch in text if _visible(ch)))
    text = _SEPARATORS.split(text.strip().rstrip("/\\"))[-1]
    text = _trim(text)
    if len(text) > MAX_NAME:
        stem, dot, extension = text.rpartition(".")
        if dot and stem and len(extension) < 32:
            text = _trim(stem[: MAX_NAME - len(extension) - 1]) + "." + extension
        else:
            text = _trim(text[:MAX_NAME])
    return text if text.strip(".") else FALLBACK


def _trim(text: str) -> str:
    previous = None
    while text != previous:
        previous = text
        text = text.strip(" ").rstrip(".")
    return text


def blocked_extensions() -> frozenset[str]:
    """``PUSHMAIL_BLOCKED_ATTACHMENT_EXTENSIONS`` as lowercase ``.ext`` items, however it was written
    (``.exe .bat``, ``exe,bat``, a list or a set)."""
    value = settings.PUSHMAIL_BLOCKED_ATTACHMENT_EXTENSIONS
    items: Iterable[str] = [value] if isinstance(value, str) else value
    found = set()
    for item in items:
        for part in re.split(r"[\s,;]+", str(item)):
            part = part.strip().lstrip(".").casefold()
            if part:
                found.add("." + part)
    return frozenset(found)


def _extension(name: str) -> str:
    """The last extension, folded the way a person reads it: ``.EXE``, ``.ｅｘｅ`` and ``.ехе`` are ``.exe``."""
    folded = unicodedata.normalize("NFKD", name)
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch)).casefold().translate(_LOOKALIKES)
    folded = _trim(folded.strip())
    _stem, dot, extension = folded.rpartition(".")
    return "." + extension.strip() if dot else ""


def blocked_extension(name: object) -> str | None:
    """The blocked extension (``.exe``) that the cleaned ``name`` ends with, or None when it may be attached.

    The last extension counts (``a.pdf.exe`` is a program), also before an NTFS
    stream suffix (``setup.exe::$DATA`` or ``setup.exe:x`` opens ``setup.exe``).
    """
    blocked = blocked_extensions()
    cleaned = clean_filename(name)
    for candidate in (cleaned, cleaned.split(":", 1)[0]):
        extension = _extension(candidate)
        if extension in blocked:
            return extension
    return None


def blocked_reason(name: str, extension: str, *, received: bool = False) -> str:
    """What the sender (or, for a received file, the reader) is told about a blocked file."""
    if received:
        return (
            f"{name}: files of type {extension} are not accepted here (they could run as programs), "
            "so it is not downloaded."
        )
    return f"{name}: files of type {extension} cannot be attached (they could run as programs)."
