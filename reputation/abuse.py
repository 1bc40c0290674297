"""Abuse reports: the signed notifications an origin sent us, as an ARF report (RFC 5965).

The layout is specified in docs/protocol.md Appendix C. In short, a
``multipart/report; report-type=feedback-report`` with exactly the three parts
RFC 6522 allows:

1. ``text/plain``: what is reported, how many, and how to verify it;
2. ``message/feedback-report``: Feedback-Type abuse, the origin as Reported-Domain,
   and the sender, arrival date and source address of the first notification;
3. ``message/rfc822``: a message with the first notification's headers (From,
   Subject, Date, Message-ID) whose body holds the evidence: each kept request as
   an ``application/http`` part (the exact bytes received, signature headers and
   request target included), and the origins' public keys in ``keys.json``.

Anyone with an Ed25519 library can rebuild each signature base (§3.2) from an
``application/http`` part and check it against the origin's published key.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from email import policy
from email.message import EmailMessage, MIMEPart
from email.utils import format_datetime, make_msgid
from typing import Any, cast

from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from federation import discovery, evidence, payloads
from federation.http import USER_AGENT
from federation.models import SignedRequest
from mailbox.models import RemoteMessage

#: Newest kept notifications of an origin one report carries by default.
DEFAULT_LIMIT = 1000
#: Lines end in CRLF and are folded at 78: the report can be mailed as it is.
POLICY = policy.SMTP

__all__ = [
    "DEFAULT_LIMIT",
    "NoEvidence",
    "abuse_report",
    "evidence_for_messages",
    "evidence_of_origin",
    "report_bytes",
]


class NoEvidence(Exception):
    """Nothing kept to report: no signed notification matches (or it was deleted after PUSHMAIL_EVIDENCE_DAYS)."""


def evidence_of_origin(
    origin: str, *, limit: int = DEFAULT_LIMIT, among: QuerySet[SignedRequest] | None = None
) -> QuerySet[SignedRequest]:
    """The newest ``limit`` kept notifications signed by ``origin`` (of ``among``, by default all)."""
    rows = SignedRequest.objects.all() if among is None else among
    newest = (
        rows.filter(origin_domain=origin.lower(), kind=SignedRequest.Kind.NOTIFICATION)
        .order_by("-received_at")
        .values("pk")[:limit]
    )
    return SignedRequest.objects.filter(pk__in=newest)


def evidence_for_messages(messages: QuerySet[RemoteMessage]) -> QuerySet[SignedRequest]:
    """Every kept notification and withdrawal of these messages (one query, whatever their number)."""
    same = messages.filter(origin_domain=OuterRef("origin_domain"), global_id=OuterRef("global_id"))
    return SignedRequest.objects.filter(Exists(same))


def abuse_report(
    *, notifications: QuerySet[SignedRequest] | Iterable[int], reporter: str = "", limit: int = DEFAULT_LIMIT
) -> bytes:
    """The ARF report (RFC 5965) carrying these kept requests, and the withdrawals of the same messages.

    ``notifications`` is a queryset of SignedRequest or their ids; the report carries the
    newest ``limit`` of them. ``reporter`` is the address the report comes from (default:
    postmaster of our domain the first notification reached). Raises NoEvidence when
    nothing matches.
    """
    if isinstance(notifications, QuerySet):
        chosen = notifications
    else:
        chosen = SignedRequest.objects.filter(pk__in=list(notifications))
    pairs = chosen.filter(origin_domain=OuterRef("origin_domain"), global_id=OuterRef("global_id"))
    withdrawn = Q(kind=SignedRequest.Kind.WITHDRAWAL) & Q(Exists(pairs))
    matching = SignedRequest.objects.filter(Q(pk__in=chosen.values("pk")) | withdrawn)
    rows = list(matching.order_by("-received_at", "-pk")[:limit])
    if not rows:
        raise NoEvidence("no kept signed notification matches; evidence is deleted after PUSHMAIL_EVIDENCE_DAYS")
    return report_bytes(rows, reporter=reporter)


def report_bytes(rows: list[SignedRequest], *, reporter: str = "") -> bytes:
    """The ARF report of these kept requests, in this order (the first names the sender and arrival)."""
    return _report(rows, reporter=reporter).as_bytes(policy=POLICY)


def _report(rows: list[SignedRequest], *, reporter: str) -> EmailMessage:
    first = next((r for r in rows if r.kind == SignedRequest.Kind.NOTIFICATION), rows[0])
    origins = sorted({r.origin_domain for r in rows})
    ours = first.local_domain or min(discovery.local_domain_names(), default="localhost")
    report = EmailMessage(policy=POLICY)
    report["From"] = reporter or f"postmaster@{ours}"
    report["To"] = ", ".join(f"abuse@{origin}" for origin in origins)
    report["Subject"] = f"Abuse report: {_count(rows)} signed by {', '.join(origins)}"
    report["Date"] = format_datetime(timezone.now())
    report["Message-ID"] = make_msgid(domain=ours)
    report.set_content(_human_text(rows, origins=origins, ours=ours))
    report.make_mixed()
    # MIMEPart, not EmailMessage: a part has no MIME-Version of its own.
    report.attach(cast(EmailMessage, _feedback_part(rows, first=first, origins=origins, ours=ours)))
    report.attach(cast(EmailMessage, _evidence_part(rows, first=first)))
    report.set_type("multipart/report")
    report.set_param("report-type", "feedback-report")
    return report


def _count(rows: list[SignedRequest]) -> str:
    notes = sum(r.kind == SignedRequest.Kind.NOTIFICATION for r in rows)
    withdrawals = len(rows) - notes
    text = f"{notes} notification{'s' * (notes != 1)}"
    if withdrawals:
        text += f" and {withdrawals} withdrawal{'s' * (withdrawals != 1)}"
    return text


def _human_text(rows: list[SignedRequest], *, origins: list[str], ours: str) -> str:
    senders = sorted({r.sender for r in rows})
    verified = sum(evidence.verifies(r) for r in rows)
    oldest, newest = min(r.received_at for r in rows), max(r.received_at for r in rows)
    when = f"between {oldest:%Y-%m-%d %H:%M} and {newest:%Y-%m-%d %H:%M} UTC"
    if f"{oldest:%Y%m%d%H%M}" == f"{newest:%Y%m%d%H%M}":
        when = f"at {oldest:%Y-%m-%d %H:%M} UTC"
    shown = ", ".join(senders[:20]) + (f" and {len(senders) - 20} more" if len(senders) > 20 else "")
    return (
        f"This is an abuse report (RFC 5965) from the Pushmail instance of {ours}.\n\n"
        f"It carries {_count(rows)} that {', '.join(origins)} sent us {when}, from {len(senders)} "
        f"sender address{'es' * (len(senders) != 1)}: {shown}.\n"
        "We judge this mail unwanted (spam or abuse).\n\n"
        "Each was an HTTP request signed by its origin with HTTP Message Signatures\n"
        "(RFC 9421, Ed25519), and is kept exactly as we received it. The third part of\n"
        "this report holds each request as an application/http part (the body bytes,\n"
        "the signature headers and the request target) and the public keys the\n"
        f"signatures verified with (keys.json). {verified} of {len(rows)} signatures verify with those keys.\n\n"
        "To check one yourself:\n"
        "  1. Compare each key in keys.json with the origin's published document,\n"
        "     https://<origin>/.well-known/pushmail (a retired key may no longer be listed).\n"
        "  2. Check Content-Digest: sha-256=:BASE64(SHA-256(body)):\n"
        "  3. Rebuild the signature base: one line per component covered by the pm\n"
        '     member of Signature-Input: "@method": the method, "@authority": the Host\n'
        '     header, "@path": the request path, "@query": "?" and the query,\n'
        '     "content-digest": the header; then "@signature-params": followed by what\n'
        '     follows "pm=" in Signature-Input. Join with LF, no final newline.\n'
        "  4. Verify the Ed25519 signature in Signature: pm=:BASE64: over those bytes.\n"
        "The layout is specified in the Pushmail protocol, Appendix C (abuse reports).\n"
    )


def _feedback_part(rows: list[SignedRequest], *, first: SignedRequest, origins: list[str], ours: str) -> MIMEPart:
    fields: list[tuple[str, str]] = [
        ("Feedback-Type", "abuse"),
        ("User-Agent", USER_AGENT),
        ("Version", "1"),
        ("Original-Mail-From", f"<{first.sender}>"),
        ("Arrival-Date", format_datetime(first.received_at)),
        ("Reporting-MTA", f"dns; {ours}"),
    ]
    if first.source_ip:
        fields.append(("Source-IP", first.source_ip))
    fields.append(("Incidents", str(len(rows))))
    fields.extend(("Reported-Domain", origin) for origin in origins)
    text = "".join(f"{name}: {value}\r\n" for name, value in fields)
    part = MIMEPart(policy=POLICY)
    part["Content-Type"] = "message/feedback-report"
    part["Content-Transfer-Encoding"] = "7bit"
    part.set_payload(text)
    return part


def _evidence_part(rows: list[SignedRequest], *, first: SignedRequest) -> MIMEPart:
    original = MIMEPart(policy=POLICY)  # a MIMEPart, so that its own parts carry no MIME-Version
    headers = _first_headers(first)
    for name in ("From", "Subject", "Date", "Message-ID"):
        if headers.get(name):
            original[name] = headers[name]
    original["MIME-Version"] = "1.0"
    original.set_content(
        f"The signed requests this report is about, exactly as received: {_count(rows)}.\n"
        "Each application/http part is one HTTP request; keys.json holds the keys.\n"
    )
    for n, row in enumerate(rows, start=1):
        original.add_attachment(
            evidence.http_request_bytes(row),
            maintype="application",
            subtype="http",
            params={"msgtype": "request"},
            filename=f"{n:04d}-{row.kind}-{row.global_id}.http",
            headers=[f"Content-Description: {row.kind} received {row.received_at:%Y-%m-%dT%H:%M:%SZ}"],
        )
    original.add_attachment(
        json.dumps({"keys": _keys(rows)}, indent=2).encode(),
        maintype="application",
        subtype="json",
        filename="keys.json",
    )
    part = MIMEPart(policy=POLICY)
    part.set_content(original, cte="7bit")  # every part inside is encoded: 7-bit throughout
    return part


def _first_headers(row: SignedRequest) -> dict[str, str]:
    """From, Subject, Date and Message-ID as the notification states them (the withdrawal: From alone)."""
    try:
        data: Any = payloads.loads(bytes(row.body))
    except payloads.PayloadError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    found = {"From": row.sender}
    for name, key in (("Subject", "subject"), ("Message-ID", "message_id")):
        if isinstance(data.get(key), str):
            found[name] = _one_line(data[key])
    try:
        found["Date"] = format_datetime(payloads.parse_time(data.get("date"), "date"))
    except payloads.PayloadError:
        pass
    return found


def _one_line(value: str) -> str:
    return " ".join(value.split())[:900]


def _keys(rows: list[SignedRequest]) -> list[dict[str, str]]:
    seen: dict[str, dict[str, str]] = {}
    for row in rows:
        seen.setdefault(
            row.key_id,
            {"id": row.key_id, "domain": row.origin_domain, "algorithm": "ed25519", "public_key": row.public_key},
        )
    return [seen[key] for key in sorted(seen)]
