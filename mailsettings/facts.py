"""What filters and the vacation reply look at in a new message, and whether a filter matches it."""

from __future__ import annotations

from dataclasses import dataclass

from federation import payloads
from mailbox.models import InboxEntry

from .models import Filter


@dataclass(frozen=True)
class Arrival:
    """What filters and the vacation reply look at in a new message (all lowercase but the subject)."""

    sender: str
    #: The addresses it was sent to as far as this instance knows: its To and Cc once its body is
    #: here (mail by SMTP, mail from this instance), else the recipient's own address.
    recipients: tuple[str, ...]
    subject: str
    list_id: str
    #: Why it is automated mail (RFC 3834 Auto-Submitted, Precedence, List-*), or "".
    automated: str
    message_id: str


def arrival_of(entry: InboxEntry) -> Arrival:
    remote, local = entry.remote, entry.local
    owner_address = entry.owner.email.lower()
    if local is not None:
        recipients = tuple(a.lower() for a in [*(local.to or []), *(local.cc or [])]) or (owner_address,)
        return Arrival(
            sender=local.sender_address.lower(),
            recipients=recipients,
            subject=local.subject,
            list_id="",
            automated=f"Auto-Submitted: {local.auto_submitted}" if local.auto_submitted else "",
            message_id=local.message_id,
        )
    assert remote is not None
    recipients = (owner_address,)
    if remote.content is not None:
        from_body = _body_recipients(bytes(remote.content))
        recipients = from_body or recipients
    return Arrival(
        sender=remote.sender.lower(),
        recipients=recipients,
        subject=remote.subject,
        list_id=remote.list_id.lower(),
        automated=remote.automated,
        message_id=remote.message_id,
    )


def _body_recipients(content: bytes) -> tuple[str, ...]:
    try:
        body = payloads.parse_body(content)
    except payloads.PayloadError:
        return ()
    return tuple(str(a).lower() for a in [*(body.get("to") or []), *(body.get("cc") or [])])


def matches(rule: Filter, arrival: Arrival) -> bool:
    """Every condition the rule gives is found in the message (words in order, case ignored)."""
    checks = (
        (rule.from_contains, (arrival.sender,)),
        (rule.to_contains, arrival.recipients),
        (rule.subject_contains, (arrival.subject,)),
        (rule.list_id_contains, (arrival.list_id,)),
    )
    given = [(wanted.strip().lower(), values) for wanted, values in checks if wanted.strip()]
    return bool(given) and all(any(wanted in value.lower() for value in values) for wanted, values in given)
