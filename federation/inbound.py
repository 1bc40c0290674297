"""What the server-to-server endpoints (federation/views.py) ask of the apps above.

This package knows the wire; what a notification or a fetch means is decided
above it: mailbox accepts notifications and withdrawals, outbox serves bodies
and attachments, reputation admits or refuses a peer domain. Each answers its
hooks here at start-up (its ``receivers`` module, see pushmail_site/hooks.py),
so federation never imports them. The exceptions and results are the answers
the endpoints turn into status codes and JSON (docs/protocol.md §5 and §7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pushmail_site.hooks import Hook


class OriginRefused(Exception):
    """A peer domain may not deliver now. ``retry_after`` is set when it may try later."""

    def __init__(self, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class PoorReputation(OriginRefused):
    """The origin's mail is so often reported here that its notifications are refused until an admin lifts it."""


class ConflictingNotification(Exception):
    """A notification repeats a known (origin, id) with other content; ``field`` names the first difference."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field} differs from the first notification")
        self.field = field


class NotOffered(Exception):
    """The message does not exist or is not addressed to the asking domain."""


class NoAcceptedRecipient(Exception):
    """Every recipient of the message at the asking domain was rejected: nobody there may read it."""


class BodyGone(Exception):
    """The message is no longer offered: ``reason`` is "withdrawn", "expired" or "fetched" (the 410's reason)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RecipientResult:
    """One recipient's answer to a notification (§5.3)."""

    address: str
    status: str  # "accepted" or "rejected"
    reason: str = ""

    def to_json(self) -> dict[str, str]:
        data = {"address": self.address, "status": self.status}
        if self.reason:
            data["reason"] = self.reason
        return data


@dataclass(frozen=True)
class WithdrawalResult:
    fetched_before: bool


class StoredFile(Protocol):
    """An attachment's stored bytes, as served to a peer: its storage file, size and SHA-256 (hex)."""

    @property
    def file(self) -> Any: ...

    @property
    def size(self) -> int: ...

    @property
    def sha256(self) -> str: ...


#: ``check_origin(domain=..., count=1)``: how many of ``count`` notifications the peer domain may deliver now
#: (the first ones); raises OriginRefused when it may deliver none.
check_origin: Hook[..., int] = Hook("federation.inbound.check_origin")
#: ``accept_notification(origin=..., notification=...)``: one result per recipient; may raise ConflictingNotification.
accept_notification: Hook[..., list[RecipientResult]] = Hook("federation.inbound.accept_notification")
#: ``accept_notifications(origin=..., notifications=[...])``: a batch in one transaction; for each notification
#: its results, or the ConflictingNotification it would have raised alone.
accept_notifications: Hook[..., list[list[RecipientResult] | ConflictingNotification]] = Hook(
    "federation.inbound.accept_notifications"
)
#: ``accept_withdrawal(origin=..., withdrawal=...)``: None when the message is unknown here.
accept_withdrawal: Hook[..., WithdrawalResult | None] = Hook("federation.inbound.accept_withdrawal")
#: ``serve_body(global_id=..., to_domain=...)``: the canonical body; NotOffered, NoAcceptedRecipient or BodyGone.
serve_body: Hook[..., bytes] = Hook("federation.inbound.serve_body")
#: ``serve_attachment(global_id=..., digest=..., to_domain=...)``: the bytes, or the exceptions of serve_body.
serve_attachment: Hook[..., StoredFile] = Hook("federation.inbound.serve_attachment")


# --- Spam reports from recipient domains (docs/protocol.md §5.8) ---------------------------------


class UnknownMessage(Exception):
    """No message with this global id was ever sent from this instance."""


class NotARecipient(Exception):
    """The reporting domain never had an accepted recipient of the message."""


@dataclass(frozen=True)
class ReportResult:
    """What the origin did with a report: ``status`` is "recorded", "duplicate" or "superseded"."""

    status: str
    complaint: str  # "active" or "retracted": where the complaint of this domain now stands


#: ``accept_report(reporter=..., report=...)``: a ReportResult; raises UnknownMessage or NotARecipient.
accept_report: Hook[..., ReportResult] = Hook("federation.inbound.accept_report")


# --- Lists (docs/protocol.md §13) -------------------------------------------------------------


class UnknownList(Exception):
    """No list with this address is hosted here."""


class NotSubscribed(Exception):
    """No user here is subscribed to this list (or every one of them left or paused it)."""


@dataclass(frozen=True)
class SubscriptionResult:
    """Where a subscriber stands with a list after a request: ``status`` is "recorded" or "superseded"."""

    state: str  # "active", "paused" or "unsubscribed"
    status: str


#: ``accept_subscription(origin=..., subscription=...)``: a SubscriptionResult; raises UnknownList.
accept_subscription: Hook[..., SubscriptionResult] = Hook("federation.inbound.accept_subscription")
#: ``accept_list_notification(origin=..., notification=...)``: how many subscribers here got the issue;
#: raises NotSubscribed, or ConflictingNotification as accept_notification does.
accept_list_notification: Hook[..., int] = Hook("federation.inbound.accept_list_notification")
