"""Address and domain syntax. CR and LF are refused everywhere."""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError

_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_LOCAL_RE = re.compile(r"^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")


def normalize_domain(value: str) -> str:
    if not isinstance(value, str) or "\r" in value or "\n" in value:
        raise ValidationError("domain contains a line break")
    domain = value.strip().lower().rstrip(".")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValidationError(f"invalid domain {value!r}") from exc
    if not _DOMAIN_RE.match(domain):
        raise ValidationError(f"invalid domain {value!r}")
    return domain


def normalize_address(value: str) -> str:
    """Return ``local@domain`` in lower case, or raise naming the problem."""
    if not isinstance(value, str):
        raise ValidationError("address must be a string")
    if "\r" in value or "\n" in value:
        raise ValidationError(f"address {value.strip()!r} contains a line break")
    value = value.strip()
    local, sep, domain = value.rpartition("@")
    if not sep or not local or not domain:
        raise ValidationError(f"{value!r} is not an address of the form local@domain")
    local = local.lower()
    if len(local) > 64 or not _LOCAL_RE.match(local):
        raise ValidationError(f"{value!r} has an invalid local part")
    try:
        domain = normalize_domain(domain)
    except ValidationError as exc:
        raise ValidationError(f"{value!r} has an invalid domain") from exc
    return f"{local}@{domain}"


MAX_DISPLAY_NAME = 100
# What a display name may not hold, here and on the wire (docs/protocol.md §4.1): control
# characters, line and paragraph separators, unpaired surrogates, and the bidirectional
# embeddings, overrides and isolates that could make a name read as something else.
_NAME_UNFIT = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def display_name_problem(name: str) -> str | None:
    """What makes ``name`` (already trimmed) unfit as a display name, or None."""
    if len(name) > MAX_DISPLAY_NAME:
        return f"longer than {MAX_DISPLAY_NAME} characters"
    bad = _NAME_UNFIT.search(name)
    if bad is None:
        return None
    char = bad.group()
    if char in "\r\n":
        return "contains a line break (CR or LF)"
    if "\u202a" <= char <= "\u202e" or "\u2066" <= char <= "\u2069":
        return f"contains a bidirectional control character (U+{ord(char):04X})"
    return f"contains a control character (U+{ord(char):04X})"


def normalize_display_name(value: str) -> str:
    """The name shown beside an address, trimmed; ValidationError for a line break, another
    control character or over 100 characters: what peers refuse (docs/protocol.md §4.1)."""
    name = value.strip()
    if "\r" in name or "\n" in name:
        raise ValidationError("must not contain a line break (CR or LF)")
    if len(name) > MAX_DISPLAY_NAME:
        raise ValidationError(f"at most {MAX_DISPLAY_NAME} characters")
    problem = display_name_problem(name)
    if problem:  # "contains a control character (U+001B)"
        raise ValidationError(f"must not {problem.replace('contains', 'contain', 1)}")
    return name


def clean_display_name(value: str) -> str:
    """A display name fit for the wire and for showing, whatever its source (a name saved before
    these checks existed, an SMTP From): unfit characters and white space runs become one space,
    at most 100 characters."""
    return " ".join(_NAME_UNFIT.sub(" ", value).split())[:MAX_DISPLAY_NAME].strip()


def domain_of(address: str) -> str:
    return address.rpartition("@")[2]
