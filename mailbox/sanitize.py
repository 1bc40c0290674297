"""HTML mail, made safe to show: a conservative nh3 allowlist plus remote-content control.

The sanitized HTML is shown in a sandboxed iframe (no scripts, opaque origin)
under its own strict Content-Security-Policy, so the sanitizer is one layer of
several; it still has to be right on its own.

* Only plain formatting tags survive: no script, style elements, SVG, MathML,
  forms, frames, objects, embeds, media, base, meta or link. Elements whose
  content is code or another namespace are dropped with their content.
* Links keep http, https and mailto targets only; they open in a new tab with
  ``rel="noopener noreferrer nofollow"``.
* Inline ``style`` attributes are kept, limited to layout and typography
  properties; any ``url()``, ``image-set()``, ``expression()`` or escape in
  a declaration drops that declaration.
* Remote content (``<img src>``, ``srcset``, ``background`` attributes,
  ``url()`` in backgrounds) is removed unless ``allow_remote``; then image URLs
  are rewritten to the instance's image proxy (``proxy_url``), so the reader's
  browser never contacts the sender's servers. :class:`Sanitized` says
  whether anything remote was there, so the page can offer to show it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from html.parser import HTMLParser

import nh3

__all__ = ["Sanitized", "sanitize_html"]

ALLOWED_TAGS = frozenset(
    {
        "a", "abbr", "acronym", "address", "b", "bdi", "bdo", "big", "blockquote", "br", "caption", "center",
        "cite", "code", "col", "colgroup", "dd", "del", "details", "dfn", "div", "dl", "dt", "em", "figcaption",
        "figure", "font", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd", "li", "mark",
        "ol", "p", "pre", "q", "rp", "rt", "ruby", "s", "samp", "small", "span", "strike", "strong", "sub",
        "summary", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "time", "tr", "tt", "u", "ul", "var",
        "wbr",
    }
)  # fmt: skip

# Dropped together with everything inside them: their content is code, another
# namespace (where parsing rules differ: the mutation-XSS playground) or UI.
DROPPED_WITH_CONTENT = frozenset(
    {
        "script", "style", "noscript", "template", "svg", "math", "iframe", "frame", "frameset", "object",
        "embed", "applet", "noembed", "noframes", "xmp", "plaintext", "title", "textarea", "select", "option",
        "button", "audio", "video", "canvas", "map", "head", "meta", "link", "base", "param", "source", "track",
    }
)  # fmt: skip

_TABLE_CELL = {"width", "height", "bgcolor", "background", "colspan", "rowspan", "nowrap", "scope", "headers"}
ALLOWED_ATTRIBUTES: dict[str, set[str]] = {
    "*": {"align", "valign", "dir", "lang", "title", "style"},
    "a": {"href"},
    "img": {"src", "srcset", "alt", "width", "height", "border", "hspace", "vspace"},
    "table": {"width", "height", "border", "cellpadding", "cellspacing", "bgcolor", "background", "summary", "frame",
              "rules"},
    "tr": {"bgcolor", "background", "height"},
    "td": _TABLE_CELL,
    "th": _TABLE_CELL | {"abbr"},
    "thead": {"bgcolor"},
    "tbody": {"bgcolor"},
    "tfoot": {"bgcolor"},
    "col": {"span", "width"},
    "colgroup": {"span", "width"},
    "font": {"color", "face", "size"},
    "ol": {"start", "type", "reversed"},
    "ul": {"type"},
    "li": {"value", "type"},
    "hr": {"size", "width", "noshade", "color"},
    "del": {"datetime"},
    "ins": {"datetime"},
    "time": {"datetime"},
    "details": {"open"},
    "bdo": {"dir"},
}  # fmt: skip

# Layout and typography only: nothing that positions over other content, loads
# a resource by itself (border-image, list-style-image, cursor, filter, mask)
# or runs anything (behavior, -moz-binding).
STYLE_PROPERTIES = frozenset(
    {
        "background", "background-color", "background-image", "background-position", "background-repeat",
        "background-size", "border", "border-bottom", "border-bottom-color", "border-bottom-style",
        "border-bottom-width", "border-collapse", "border-color", "border-left", "border-left-color",
        "border-left-style", "border-left-width", "border-radius", "border-right", "border-right-color",
        "border-right-style", "border-right-width", "border-spacing", "border-style", "border-top",
        "border-top-color", "border-top-style", "border-top-width", "border-width", "caption-side", "clear",
        "color", "direction", "display", "empty-cells", "float", "font", "font-family", "font-size", "font-style",
        "font-variant", "font-weight", "height", "letter-spacing", "line-height", "list-style-position",
        "list-style-type", "margin", "margin-bottom", "margin-left", "margin-right", "margin-top", "max-height",
        "max-width", "min-height", "min-width", "opacity", "overflow-wrap", "padding", "padding-bottom",
        "padding-left", "padding-right", "padding-top", "table-layout", "text-align", "text-decoration",
        "text-indent", "text-transform", "unicode-bidi", "vertical-align", "white-space", "width", "word-break",
        "word-spacing", "word-wrap",
    }
)  # fmt: skip
# The only properties where a url() may survive (rewritten to the proxy).
_BACKGROUND_PROPERTIES = frozenset({"background", "background-image"})

# Each proxied image is a fetch by this server: a message gets this many at most.
MAX_PROXIED_IMAGES = 100

LINK_SCHEMES = frozenset({"http", "https", "mailto"})
# "data" is listed so inline data:image URLs reach the attribute filter, which
# keeps them only on <img src> and only for raster image types.
URL_SCHEMES = {"http", "https", "mailto", "cid", "data"}
LINK_REL = "noopener noreferrer nofollow"

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*):")
_TAB_OR_NEWLINE = re.compile(r"[\t\n\r]")
_C0_AND_SPACE = "".join(chr(c) for c in range(0x21))
_DATA_IMAGE = re.compile(r"^data:image/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=\s]*$", re.IGNORECASE)
_CSS_URL = re.compile(r'url\("((?:[^"\\]|\\.)*)"\)', re.IGNORECASE)
_CSS_DANGER = re.compile(
    r"url\(|image-set\(|image\(|cross-fade\(|src\(|expression|\\|@|javascript:|vbscript:|<|>", re.IGNORECASE
)
# Anything that may hide or be a URL once CSS is parsed (escapes, comments, functions).
_CSS_SUSPECT = ("url", "image", "src", "cross-fade", "expression", "\\", "/*", "@", "script:", "<", ">")


@dataclass(frozen=True)
class Sanitized:
    html: str
    #: The message refers to remote images (whether or not they were let through).
    has_remote: bool
    #: Remote images were removed because remote content is not allowed.
    remote_blocked: bool

    def __str__(self) -> str:
        return self.html


def _url_parts(value: str) -> tuple[str, str]:
    """(scheme lower-cased or "", URL) the way a browser reads an attribute URL.

    Browsers strip leading and trailing C0 controls and spaces and ignore tabs
    and newlines anywhere, so ``" jav\\tascript:"`` is a javascript: URL.
    """
    url = _TAB_OR_NEWLINE.sub("", value.strip(_C0_AND_SPACE))
    if url.startswith("//"):
        return "https", "https:" + url
    match = _SCHEME.match(url)
    return (match.group(1).lower() if match else ""), url


class _Remote:
    """The attribute filter: rewrites or removes every URL, and remembers remote ones."""

    def __init__(self, *, allow_remote: bool, proxy_url: Callable[[str], str]) -> None:
        self.allow_remote = allow_remote
        self.proxy_url = proxy_url
        self.found = False
        self.proxied = 0

    def remote_image(self, url: str) -> str | None:
        self.found = True
        if not self.allow_remote or self.proxied >= MAX_PROXIED_IMAGES:
            return None
        self.proxied += 1
        return self.proxy_url(url)

    def image(self, value: str) -> str | None:
        scheme, url = _url_parts(value)
        if scheme in ("http", "https"):
            return self.remote_image(url)
        if scheme == "data" and _DATA_IMAGE.match(url):
            return url
        if scheme == "cid":
            return url
        return None

    def note_srcset(self, value: str) -> None:
        # srcset is always dropped (candidate lists are easy to get wrong; <img src>
        # alone is enough), but remote candidates still count as remote content.
        if any(_url_parts(part.strip())[0] in ("http", "https") for part in value.split(",")):
            self.found = True

    def style(self, value: str) -> str | None:
        lowered = value.lower()
        if not any(token in lowered for token in _CSS_SUSPECT):
            # Nothing that could become a URL, an escape or a comment: nh3's own
            # property filter (filter_style_properties) is all this needs. Most
            # newsletter styles take this path, which keeps cleaning fast.
            return value
        kept: list[str] = []
        for declaration in _declarations(_normalize_style(value)):
            name, _, css_value = declaration.partition(":")
            name = name.strip().lower()
            if name not in STYLE_PROPERTIES:
                continue
            if not _CSS_DANGER.search(css_value):
                kept.append(f"{name}:{css_value.strip()}")
                continue
            rewritten = self.css_background(name, css_value)
            if rewritten is not None:
                kept.append(f"{name}:{rewritten}")
        return ";".join(kept) or None

    def css_background(self, name: str, css_value: str) -> str | None:
        """A background with http(s) url()s rewritten to the proxy, or None to drop it."""
        urls = _CSS_URL.findall(css_value)
        remote = [u for u in urls if _url_parts(u)[0] in ("http", "https")]
        if remote:
            self.found = True
        if name not in _BACKGROUND_PROPERTIES or not self.allow_remote or not urls or len(remote) != len(urls):
            return None
        if any('"' in u or "\\" in u for u in urls):
            return None
        rest = _CSS_URL.sub("", css_value)
        if _CSS_DANGER.search(rest):
            return None

        if self.proxied + len(urls) > MAX_PROXIED_IMAGES:
            return None
        self.proxied += len(urls)

        def proxied(match: re.Match[str]) -> str:
            return 'url("' + _css_string(self.proxy_url(_url_parts(match.group(1))[1])) + '")'

        return _CSS_URL.sub(proxied, css_value)

    def __call__(self, tag: str, attr: str, value: str) -> str | None:
        if attr == "href":
            scheme, url = _url_parts(value)
            return url if scheme in LINK_SCHEMES else None
        if attr == "src":
            return self.image(value) if tag == "img" else None
        if attr == "srcset":
            self.note_srcset(value)
            return None
        if attr == "background":
            scheme, url = _url_parts(value)
            return self.remote_image(url) if scheme in ("http", "https") else None
        if attr == "style":
            return self.style(value)
        return value


def _css_string(url: str) -> str:
    return url.replace("\\", "").replace('"', "%22").replace("\n", "").replace("\r", "")


class _StyleReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.style = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "style" and value:
                self.style = value


def _normalize_style(value: str) -> str:
    """Parse and re-serialize a style attribute with nh3's CSS parser.

    This resolves CSS escapes and comments (``u\\72l(``, ``/**/``) and quotes
    every url(), so the checks that follow see what a browser would see.
    """
    cleaned = nh3.clean(
        f'<span style="{escape(value, quote=True)}"></span>',
        tags={"span"},
        attributes={"span": {"style"}},
        filter_style_properties=set(STYLE_PROPERTIES),
        url_schemes={"http", "https"},
        link_rel=None,
    )
    reader = _StyleReader()
    reader.feed(cleaned)
    reader.close()
    return reader.style


def _declarations(style: str) -> list[str]:
    """Split on semicolons outside quoted strings and parentheses."""
    parts: list[str] = []
    current: list[str] = []
    quote = ""
    depth = 0
    escaped = False
    for char in style:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif quote:
            if char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth = max(0, depth - 1)
        elif char == ";" and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [p for p in (part.strip() for part in parts) if p]


def _drop_relative(url: str) -> None:
    return None


def sanitize_html(html: str, *, allow_remote: bool, proxy_url: Callable[[str], str]) -> Sanitized:
    """Clean an HTML mail body for display; see the module docstring.

    ``proxy_url`` maps a remote image URL to an absolute URL on this instance
    (the signed image-proxy URL); it is called only when ``allow_remote``.
    """
    remote = _Remote(allow_remote=allow_remote, proxy_url=proxy_url)
    cleaned = nh3.clean(
        html,
        tags=set(ALLOWED_TAGS),
        clean_content_tags=set(DROPPED_WITH_CONTENT),
        attributes={tag: set(names) for tag, names in ALLOWED_ATTRIBUTES.items()},
        attribute_filter=remote,
        strip_comments=True,
        link_rel=LINK_REL,
        url_schemes=set(URL_SCHEMES),
        filter_style_properties=set(STYLE_PROPERTIES),
        set_tag_attribute_values={"a": {"target": "_blank"}},
        # A callable rather than "deny", so protocol-relative URLs (//host/x.png)
        # still reach the filter and count as remote content; every relative URL
        # that is left is dropped.
        url_relative=_drop_relative,
    )
    return Sanitized(html=cleaned, has_remote=remote.found, remote_blocked=remote.found and not allow_remote)
