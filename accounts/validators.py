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


def normalize_display_name(value: str) -> str:
    """The name shown beside an address, trimmed; ValidationError for a line break or over 100 characters."""
    name = value.strip()
    if "\r" in name or "\n" in name:
        raise ValidationError("must not contain a line break (CR or LF)")
    if len(name) > MAX_DISPLAY_NAME:
        raise ValidationError(f"at most {MAX_DISPLAY_NAME} characters")
    return name


def domain_of(address: str) -> str:
    return address.rpartition("@")[2]
