"""The direct rendering of plain ASCII messages (mailbox.eml) writes the very bytes the email package writes.

POP3 downloads and the webmail's .eml download share ``build_eml``; most mail is plain ASCII text,
which it writes directly instead of through the email package (milliseconds a message). Whatever
the message, the bytes must be the email package's: a difference would change what mail programs
store, and the sizes POP3 lists.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, example, given, reject, settings
from hypothesis import strategies as st

from mailbox.eml import EmlAttachment, EmlSource, _email_package_eml, _plain_eml, build_eml, eml_head

_ATOM = st.text("abcxyzABC019_+-", min_size=1, max_size=12)
_ADDRESS = st.one_of(
    st.builds(lambda a, b, c: f"{a}@{b}.{c}", _ATOM, _ATOM, st.sampled_from(["test", "example", "co.uk"])),
    st.sampled_from(['"Doe, J" <j@x.test>', "J. Doe <j@x.test>", "ü@x.test", "a..b@x.test", ".a@x.test", "a@x"]),
)
_LINE_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from(["\t", "é", "\r", "\x0c", "="])
_VALUE = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=90),
    st.text(_LINE_CHARS, max_size=40),
    st.sampled_from(["", "Re: figures", "=?utf-8?q?x?=", "a  b", " lead", "Café", "x" * 70, "From nowhere"]),
)
_TEXT = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.just("\n"), max_size=400),
    st.lists(st.text(_LINE_CHARS, max_size=90), max_size=12).map("\n".join),
    st.sampled_from(["", "\n", "one line", "From here\n.dot\n", "x" * 78 + "\n", "x" * 79, "a\n\n\nb\n\n"]),
)
_DATE = st.one_of(
    st.none(),
    st.builds(
        lambda seconds, minutes: (
            datetime(2026, 1, 1, tzinfo=timezone(timedelta(minutes=minutes))) + timedelta(seconds=seconds)
        ),
        st.integers(0, 10**8),
        st.sampled_from([0, 60, -300, 330]),
    ),
)
_MESSAGE_ID = st.one_of(st.builds(lambda a, b: f"<{a}@{b}.test>", _ATOM, _ATOM), _VALUE)


@st.composite
def _sources(draw: st.DrawFn) -> EmlSource:
    return EmlSource(
        sender=draw(_ADDRESS),
        to=draw(st.lists(_ADDRESS, max_size=4)),
        cc=draw(st.lists(_ADDRESS, max_size=2)),
        subject=draw(_VALUE),
        date=draw(_DATE),
        message_id=draw(_MESSAGE_ID),
        in_reply_to=draw(st.one_of(st.just(""), _MESSAGE_ID)),
        references=draw(st.lists(_MESSAGE_ID, max_size=3)),
        text=draw(_TEXT),
        html=draw(st.sampled_from([None, None, None, "<p>hi</p>"])),
        attachments=draw(
            st.lists(
                st.builds(
                    EmlAttachment,
                    st.sampled_from(["a.pdf", "notes.txt"]),
                    st.just("application/pdf"),
                    st.integers(1, 10**6),
                    st.sampled_from([None, None, b"%PDF"]),
                ),
                max_size=2,
            )
        ),
    )


_TYPICAL = EmlSource(
    sender="carol@peer.test",
    to=["bob@beta.test", "bea@beta.test"],
    cc=[],
    subject="Report 12: figures for week 3",
    date=datetime(2026, 12, 4, 15, 4, 5, tzinfo=UTC),
    message_id="<9f1c2a@peer.test>",
    in_reply_to="<8e0b19@beta.test>",
    references=["<8e0b19@beta.test>"],
    text="Dear Bob,\n\nthe figures are in.\n.a line with a dot\nFrom the team\n",
    html=None,
)


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        (_TYPICAL.text, b"7bit"),
        ("A paragraph typed in the webmail runs on, longer than one line of a mail file can be. " * 3, b"quoted"),
        ("Grüße from Köln: the meeting moved to Thursday at ten, same room as last week.\n", b"quoted-printable"),
        ("日本語のメール\n" * 5, b"base64"),
    ],
)
def test_a_text_message_is_written_directly_as_the_email_package_writes_it(text: str, encoding: bytes) -> None:
    source = dataclasses.replace(_TYPICAL, text=text)
    plain = _plain_eml(source)
    assert plain is not None
    assert plain == _email_package_eml(source) == build_eml(source)
    assert b"Subject: Report 12: figures for week 3\r\n" in plain
    assert b"Content-Transfer-Encoding: " + encoding in plain


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_sources())
@example(_TYPICAL)
def test_any_message_is_written_as_the_email_package_writes_it(source: EmlSource) -> None:
    # Multipart messages (HTML, attachments) never take the direct path: their boundaries are random.
    plain = _plain_eml(source)
    if plain is not None:
        assert plain == _email_package_eml(source)


def _head_of(eml: bytes) -> bytes:
    # A multipart message's boundary is drawn at random each time it is written.
    head = eml[: eml.index(b"\r\n\r\n") + 4]
    return re.sub(rb'boundary="[^"]*"', b'boundary="-"', head)


@pytest.mark.parametrize("text", [_TYPICAL.text, "Grüße aus Köln\n", "日本語のメール\n" * 12, "word " * 40 + "\n" * 12])
def test_a_listing_reads_the_header_block_of_the_download(text: str) -> None:
    # IMAP listings (ENVELOPE, BODY[HEADER]) and POP3 TOP give the header block without writing the body.
    source = dataclasses.replace(_TYPICAL, text=text)
    assert eml_head(source) == _head_of(build_eml(source))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_sources())
@example(_TYPICAL)
def test_any_header_block_is_the_one_of_the_download(source: EmlSource) -> None:
    try:
        whole = build_eml(source)
    except TypeError:  # the email package fails on some odd addresses (a Cc of ".a@x.test"); not here
        reject()
    assert _head_of(eml_head(source)) == _head_of(whole)
