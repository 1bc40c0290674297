"""Remote content in HTML mail: who allowed it, and the image proxy that loads it.

Remote images are blocked until the reader allows them for one message, for
a sender, or always (``User.remote_content``). Allowed images are still never
loaded by the reader's browser: the sanitizer rewrites them to this instance's
image proxy, which fetches them itself (no cookies, no Referer, a fixed
User-Agent), so the sender learns neither the reader's address nor browser.

Proxy URLs carry an HMAC of the reader, the time and the target URL, so the
proxy fetches only URLs this instance wrote into a message it showed to a
signed-in reader, never arbitrary ones.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlencode, urlsplit

from django.conf import settings
from django.core.cache import cache
from django.urls import reverse
from django.utils.crypto import constant_time_compare, salted_hmac

from accounts.models import RemoteContentPolicy, User
from federation import http

from .models import AllowedSender, InboxEntry

__all__ = [
    "ImageRefused",
    "ProxiedImage",
    "allow_remote_content",
    "allowed_senders",
    "fetch_image",
    "proxy_path",
    "remote_allowed_for_entry",
    "sign_url",
    "sniff_image_type",
    "verify_signature",
]

_SALT = "pushmail.image-proxy"
PROXY_USER_AGENT = "Pushmail-ImageProxy/1"
PROXY_TIMEOUT = 5.0
MAX_URL_LENGTH = 2048


# --- who allowed what --------------------------------------------------------


def _address(sender: str) -> str:
    return sender.strip().lower()


def allowed_senders(*, user: User) -> set[str]:
    """The addresses this reader always shows remote images from (lower-cased)."""
    return set(AllowedSender.objects.filter(owner=user).values_list("address", flat=True))


def allowed_senders_for(*, user: User) -> list[AllowedSender]:
    """The senders this reader always shows remote images from, for the settings page."""
    return list(AllowedSender.objects.filter(owner=user).order_by("address"))


def forget_allowed_sender(*, user: User, sender_id: int) -> None:
    """Stop showing a sender's remote images automatically; another user's id is a DoesNotExist."""
    AllowedSender.objects.filter(owner=user).get(pk=sender_id).delete()


def remote_allowed_for_entry(*, user: User, entry: InboxEntry, senders: set[str] | None = None) -> bool:
    """True when this reader wants remote images in this message shown (through the proxy).

    ``senders`` (from :func:`allowed_senders`) saves a query per message on pages
    that show several.
    """
    if user.remote_content == RemoteContentPolicy.ALWAYS or entry.remote_content_allowed:
        return True
    if senders is not None:
        return _address(entry.sender) in senders
    return AllowedSender.objects.filter(owner=user, address=_address(entry.sender)).exists()


def allow_remote_content(*, user: User, entry: InboxEntry, scope: Literal["message", "sender"]) -> None:
    """Show remote images for this message, or for everything from its sender."""
    if entry.owner_id != user.pk:
        raise PermissionError("not this user's message")
    if scope == "sender":
        AllowedSender.objects.get_or_create(owner=user, address=_address(entry.sender))
    elif scope == "message":
        if not entry.remote_content_allowed:
            entry.remote_content_allowed = True
            entry.save(update_fields=["remote_content_allowed"])
    else:
        raise ValueError(f"unknown scope {scope!r}")


# --- signed proxy URLs -------------------------------------------------------
# Images inside the sandboxed iframe are requested from an opaque origin, so the
# browser sends no session cookie with them. The proxy URL itself is therefore
# the credential: an HMAC over the reader, the hour it was issued and the URL.
# It is valid for PROXY_LINK_SECONDS and only while the reader's account is active.

PROXY_LINK_SECONDS = 24 * 3600
_ISSUE_GRANULARITY = 3600  # URLs stay the same for an hour, so the browser can cache the image


def _mac(url: str, user_id: int, issued: int) -> str:
    return salted_hmac(_SALT, f"{user_id}:{issued}:{url}", algorithm="sha256").hexdigest()


def sign_url(url: str, *, user_id: int, now: float | None = None) -> str:
    issued = int(time.time() if now is None else now) // _ISSUE_GRANULARITY * _ISSUE_GRANULARITY
    return f"{user_id}.{issued}.{_mac(url, user_id, issued)}"


def verify_signature(url: str, signature: str, *, now: float | None = None) -> User | None:
    """The reader a proxy URL was made for, if the signature is genuine and fresh."""
    if not url or len(url) > MAX_URL_LENGTH:
        return None
    user_part, _, rest = signature.partition(".")
    issued_part, _, mac = rest.partition(".")
    if not (user_part.isdigit() and issued_part.isdigit() and mac):
        return None
    user_id, issued = int(user_part), int(issued_part)
    if not constant_time_compare(_mac(url, user_id, issued), mac):
        return None
    age = (time.time() if now is None else now) - issued
    if age < -_ISSUE_GRANULARITY or age > PROXY_LINK_SECONDS:
        return None
    return User.objects.filter(pk=user_id, is_active=True).first()


def proxy_path(url: str, *, user: User) -> str:
    """The image-proxy path (with query) for a remote image URL, for this reader."""
    return reverse("webmail:image-proxy") + "?" + urlencode({"u": url, "s": sign_url(url, user_id=user.pk)})


# --- fetching ----------------------------------------------------------------

_MAGIC: list[tuple[bytes, str]] = [
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
]


def sniff_image_type(data: bytes) -> str | None:
    """The raster image type the bytes really are (PNG, JPEG, GIF, WebP), or None.

    The sender's Content-Type is not trusted: an SVG or HTML document labelled
    image/png is refused here.
    """
    for magic, content_type in _MAGIC:
        if data.startswith(magic):
            return content_type
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


@dataclass(frozen=True)
class ProxiedImage:
    content: bytes
    content_type: str


class ImageRefused(Exception):
    """The proxy will not serve this image; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _allowed_private_hosts() -> frozenset[str]:
    return frozenset(h.strip().lower() for h in settings.PUSHMAIL_IMAGE_PROXY_ALLOW_HOSTS if h.strip())


# A host that timed out or refused is not asked again for a while: a hostile
# sender's slow server must not tie up the web workers one image at a time.
HOST_PAUSE_SECONDS = 120


def _pause_key(url: str) -> str:
    host = (urlsplit(url).hostname or "").lower()
    return "pushmail:image-proxy:paused:" + hashlib.sha256(host.encode()).hexdigest()[:32]


def fetch_image(url: str) -> ProxiedImage:
    """Fetch a remote image from this instance, through the SSRF-safe outbound client."""
    max_bytes = int(settings.PUSHMAIL_IMAGE_PROXY_MAX_BYTES)
    pause_key = _pause_key(url)
    if cache.get(pause_key):
        raise ImageRefused("the image server did not answer recently; not asking again yet", status=502)
    try:
        response = http.request(
            "GET",
            url,
            headers={"User-Agent": PROXY_USER_AGENT, "Accept": "image/png,image/jpeg,image/gif,image/webp"},
            max_bytes=max_bytes,
            timeout=PROXY_TIMEOUT,
            extra_private_hosts=_allowed_private_hosts(),
            allow_http=True,
            # A sender's image URL must not reach a configured peer (on any port) through our peer exceptions.
            refuse_peer_hosts=True,
        )
    except http.ResponseTooLarge as exc:
        raise ImageRefused(f"image is over the {max_bytes}-byte limit", status=413) from exc
    except http.BlockedAddress as exc:
        raise ImageRefused(exc.message, status=403) from exc
    except http.OutboundError as exc:
        if exc.retryable:  # unreachable, refused, timed out: give the host a rest
            cache.set(pause_key, True, HOST_PAUSE_SECONDS)
        raise ImageRefused(exc.message, status=502) from exc
    if response.status != 200:
        raise ImageRefused(f"the image server answered {response.status}", status=502)
    content_type = sniff_image_type(response.content)
    if content_type is None:
        raise ImageRefused("not a PNG, JPEG, GIF or WebP image", status=415)
    return ProxiedImage(content=response.content, content_type=content_type)
