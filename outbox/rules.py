"""What may be sent: the rules of an outgoing message, written once.

The user API (outbox/api), the webmail's compose form, drafts and
``send_message`` itself check here, so every path refuses the same things in
the same words (and SMTP submission will too). What other layers already own
is delegated, not repeated: the syntax of an address and of a display name
(accounts.validators), an attachment's name and blocked types
(attachments.filenames), the wire's characters and MIME types
(federation.payloads), and the per-file, per-message and quota limits
(attachments.services.check_new_files).
"""

from __future__ import annotations

import mimetypes
import re

from django.conf import settings
from django.core.exceptions import ValidationError

from accounts.validators import normalize_address, normalize_display_name
from attachments.filenames import blocked_extension, clean_filename
from federation import payloads
from pushmail_site.sizes import human_size

MAX_SUBJECT = 998  # a mail header line
MAX_MESSAGE_ID = 400  # an in_reply_to or references item (docs/protocol.md §4.1)
MAX_CONTENT_TYPE = 127
OCTET_STREAM = "application/octet-stream"
FIELD_LABELS = {"to": "To", "cc": "Cc", "bcc": "Bcc"}

__all__ = [
    "FIELD_LABELS",
    "MAX_CONTENT_TYPE",
    "MAX_MESSAGE_ID",
    "MAX_SUBJECT",
    "blocked_extension",
    "check_characters",
    "check_in_reply_to",
    "check_recipient_count",
    "check_subject",
    "clean_addresses",
    "clean_content_type",
    "clean_filename",
    "human_size",
    "max_recipients",
    "normalize_display_name",
    "parse_addresses",
    "split_addresses",
]


# --- Recipients ---------------------------------------------------------------------------------------


def max_recipients() -> int:
    """Recipients per message: ten times what one notification may carry (a domain's are split)."""
    return settings.PUSHMAIL_MAX_RECIPIENTS * 10


def split_addresses(value: str) -> list[str]:
    """The items of a comma- (or semicolon-) separated field; ``Name <a@b>`` gives ``a@b``."""
    items = []
    for raw in re.split(r"[,;]", value or ""):
        item = raw.strip(" \t")
        if not item.strip():
            continue
        match = re.fullmatch(r"[^<>]*<([^<>]*)>\s*", item)
        items.append(match.group(1) if match else item)
    return items


def parse_addresses(value: str, field_name: str) -> list[str]:
    """Normalized addresses of one field as typed; ValidationError naming the field and each bad item."""
    label = FIELD_LABELS[field_name]
    if "\r" in (value or "") or "\n" in (value or ""):
        raise ValidationError(
            {field_name: [f"{label} contains a line break (CR or LF); addresses must be on one line."]}
        )
    return clean_addresses(split_addresses(value), field_name)


def clean_addresses(values: list[str] | None, field_name: str) -> list[str]:
    """Each address normalized, once, in order; ValidationError naming the field and each bad item."""
    label = FIELD_LABELS[field_name]
    addresses, errors = [], []
    for item in values or []:
        try:
            addresses.append(normalize_address(item))
        except ValidationError:
            errors.append(f"{label}: {item!r} is not a valid address (expected name@domain).")
    if errors:
        raise ValidationError({field_name: errors})
    return list(dict.fromkeys(addresses))


def check_recipient_count(count: int) -> None:
    """At least one recipient, at most :func:`max_recipients` (counted once each over To, Cc and Bcc)."""
    if count == 0:
        raise ValidationError({"to": ["Add at least one recipient in To, Cc or Bcc."]})
    if count > max_recipients():
        raise ValidationError({"to": [f"Too many recipients: {count}; a message can have at most {max_recipients()}."]})


# --- Header fields and text ----------------------------------------------------------------------------


def check_subject(subject: str) -> None:
    if "\r" in subject or "\n" in subject:
        raise ValidationError(
            {"subject": ["The subject contains a line break (CR or LF), which is not allowed in a mail header."]}
        )
    if len(subject) > MAX_SUBJECT:
        raise ValidationError({"subject": [f"The subject is longer than {MAX_SUBJECT} characters."]})


def check_in_reply_to(value: str) -> None:
    if value and ("\r" in value or "\n" in value or len(value) > MAX_MESSAGE_ID):
        raise ValidationError({"in_reply_to": ["must be a message id without line breaks"]})


def check_characters(*, subject: str, in_reply_to: str, text: str, html: str | None) -> None:
    """What recipients' instances would refuse (docs/protocol.md §4.1) is refused here, by name."""
    for name, value, options in (
        ("subject", subject, {"tab": True}),
        ("in_reply_to", in_reply_to, {}),
        ("text", text, {"multiline": True}),
        ("html", html or "", {"multiline": True}),
    ):
        if unfit := payloads.unfit_character(value, **options):
            raise ValidationError({name: [f"{name} contains {unfit}"]})


def check_encrypted(*, subject: str, text: str, html: str | None) -> None:
    """An encrypted message keeps the rules of docs/protocol.md §4.6, so that no peer refuses its body."""
    problem = payloads.encrypted_body_problem(subject=subject, text=text, html=html)
    if problem:
        field, detail = problem
        raise ValidationError({field: [f"{field} {detail}"]})


# --- Attachments ---------------------------------------------------------------------------------------


def clean_content_type(value: str | None, *, name: str | None = None) -> str:
    """A bare lowercase MIME type that the wire accepts (``image/png``).

    Parameters are dropped. Anything unusable becomes application/octet-stream;
    with the file's ``name`` (an upload, whose browser often says only
    octet-stream), the type is guessed from the name first.
    """
    kind = (value or "").split(";", 1)[0].strip().lower()
    usable = len(kind) <= MAX_CONTENT_TYPE and payloads.is_mime_type(kind)
    if usable and not (name is not None and kind == OCTET_STREAM):
        return kind
    guessed = mimetypes.guess_type(name)[0] if name else None
    return guessed if guessed and payloads.is_mime_type(guessed) else OCTET_STREAM
