"""An IMAP listing (``FETCH 1:* (FLAGS ENVELOPE)``) reads each header block without the email package
(mailaccess.imap); the ENVELOPE a mail program shows in its message list must be the one Twisted builds
from the parsed message, whatever the header block holds."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.mail import imap4

from mailaccess.imap import _Listed, _Message
from mailaccess.imapenvelope import envelope_bytes
from mailaccess.imapstore import Loaded, Row

_NAMES = st.sampled_from(
    ["From", "from", "To", "Cc", "Bcc", "Subject", "Date", "Message-ID", "In-Reply-To", "Sender", "Reply-To", "X-A"]
)
_VALUE = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60),
    st.sampled_from(
        [
            "carol@peer.test",
            '"Doe, J" <j@x.test>, k@y.test',
            "=?utf-8?q?Caf=C3=A9?= <c@x.test>",
            "Café <c@x.test>",
            "",
            "  lead and trail  ",
            "a\x0bb",
            "<1@x.test> <2@x.test>",
        ]
    ),
)
_LINE = st.one_of(
    st.builds(lambda name, value: f"{name}: {value}", _NAMES, _VALUE),
    st.builds(lambda value: f"\t{value}", _VALUE),
    st.builds(lambda value: f" {value}", _VALUE),
    st.sampled_from(["From carol@peer.test Fri Dec  4", "no colon here", ":empty name", "Bad Name: x", "X:"]),
)


def _envelopes(head: bytes) -> tuple[bytes, bytes]:
    row = Row(7, "7", seen=True, flagged=False)
    loaded = Loaded(head, len(head), datetime(2026, 12, 4, 15, 4, 5, tzinfo=UTC), whole=False)
    listed = imap4.collapseNestedLists([_Listed(row, loaded, False).envelope()])
    parsed = imap4.collapseNestedLists([imap4.getEnvelope(_Message(row, loaded, False))])
    assert envelope_bytes(head) == listed  # what a listing keeps (mailaccess.imapstore.envelopes)
    return listed, parsed


def test_a_typical_envelope_names_sender_recipients_subject_and_ids() -> None:
    head = (
        b"From: Carol Peer <carol@peer.test>\r\nTo: bob@beta.test, bea@beta.test\r\n"
        b"Subject: Report 12:\r\n figures  for week 3\r\nDate: Fri, 04 Dec 2026 15:04:05 +0000\r\n"
        b"Message-ID: <9f1c2a@peer.test>\r\nMIME-Version: 1.0\r\nsubject: a second one\r\n\r\n"
    )
    listed, parsed = _envelopes(head)
    assert listed == parsed
    assert listed == (
        b'("Fri, 04 Dec 2026 15:04:05 +0000" "Report 12: figures for week 3" (("Carol Peer" NIL "carol" '
        b'"peer.test")) (("Carol Peer" NIL "carol" "peer.test")) (("Carol Peer" NIL "carol" "peer.test")) '
        b'((NIL NIL "bob" "beta.test") (NIL NIL "bea" "beta.test")) NIL NIL NIL "<9f1c2a@peer.test>")'
    )


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_LINE, max_size=12), st.sampled_from(["\r\n", "\n"]))
@example(["From: a@b.test", "Subject: hi"], "\r\n")
@example(["Subject: Caf\udcc3\udca9"], "\r\n")
def test_any_header_block_gives_the_envelope_twisted_gives(lines: list[str], end: str) -> None:
    head = (end.join(lines) + end + end).encode("utf-8", "surrogateescape")
    listed, parsed = _envelopes(head)
    assert listed == parsed
