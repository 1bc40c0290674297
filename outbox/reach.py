"""How each recipient domain is reached, for the sender to see before and after sending.

While composing, a recipient at a legacy domain (no Pushmail instance) is
marked: the message would go by ordinary email (SMTP), be stored at the
recipient's, and could not be withdrawn. :func:`reach_of` answers from
discovery's caches and, for a domain not asked about yet, waits for it only a
short budget (``federation.discovery.lookup``), so no keystroke waits on a slow
server. After sending, :func:`withdrawal_scope` says which domains a withdrawal
reaches: only Pushmail domains (and this instance's own).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from django.core.exceptions import ValidationError

from accounts.validators import domain_of, normalize_address
from federation import discovery

from .delivery import LEGACY_REASON
from .models import Delivery, DeliveryState, Message, RecipientStatus, Transport

__all__ = [
    "CHECK_BUDGET_SECONDS",
    "DomainReach",
    "NOT_WITHDRAWABLE",
    "SMTP_NOTE",
    "WithdrawalScope",
    "by_smtp",
    "domains_in",
    "reach_of",
    "withdrawal_scope",
]

LOCAL, PUSHMAIL, SMTP, UNKNOWN = "local", "pushmail", "smtp", "unknown"
SMTP_NOTE = "will go by ordinary email (SMTP): stored at the recipient's, cannot be withdrawn"
NOT_WITHDRAWABLE = "sent by ordinary email (SMTP): stored at the recipient's, cannot be withdrawn"
# All the domains of one check together wait at most this long for servers not asked about yet.
CHECK_BUDGET_SECONDS = 2.0
MAX_DOMAINS = 50


@dataclass(frozen=True)
class DomainReach:
    domain: str
    kind: str  # local, pushmail, smtp, unknown
    detail: str = ""  # why a domain could not be checked

    @property
    def note(self) -> str:
        if self.kind == SMTP:
            return SMTP_NOTE
        if self.kind == UNKNOWN:
            return "could not be checked now; it will go by Pushmail or by ordinary email as it turns out"
        return ""


def domains_in(value: str) -> dict[str, list[str]]:
    """The complete addresses of a comma-separated field by domain, in order, each once.

    An address still being typed (no domain yet, or a domain without a dot that
    is not hosted here) is left out, so a half-typed name is never looked up.
    """
    found: dict[str, list[str]] = {}
    for item in value.split(","):
        try:
            address = normalize_address(item.strip())
        except (ValidationError, ValueError):
            continue
        domain = domain_of(address)
        if domain not in found:
            if len(found) == MAX_DOMAINS or ("." not in domain and not discovery.is_local(domain)):
                continue
            found[domain] = []
        if address not in found[domain]:
            found[domain].append(address)
    return found


def reach_of(domains: list[str], *, budget: float = CHECK_BUDGET_SECONDS) -> list[DomainReach]:
    """How each domain would be reached: hosted here, Pushmail, SMTP (legacy) or unknown for now.

    Answers come from discovery's caches when it has them (shared by every
    process); a domain not known yet is looked up within what is left of
    ``budget``, and one that does not answer in time, or failed a moment ago, is
    "unknown" (its lookup goes on, so the next check knows).
    """
    deadline = time.monotonic() + budget
    answers = []
    for domain in domains:
        if discovery.is_local(domain):
            answers.append(DomainReach(domain, LOCAL))
            continue
        try:
            instance = discovery.lookup(domain, budget=max(0.0, deadline - time.monotonic()))
        except discovery.DiscoveryError as exc:
            answers.append(DomainReach(domain, UNKNOWN, str(exc)))
            continue
        answers.append(DomainReach(domain, PUSHMAIL if instance is not None else SMTP))
    return answers


def by_smtp(delivery: Delivery) -> bool:
    """Whether the domain of ``delivery`` is reached by ordinary email, where nothing can be withdrawn.

    A legacy domain: its recipients get (or were refused) a copy stored at
    their server, never a notification. The one place that says so.
    """
    if delivery.local:
        return False
    return delivery.transport == Transport.SMTP or delivery.last_error == LEGACY_REASON


@dataclass(frozen=True)
class WithdrawalScope:
    """Which recipient domains a withdrawal of a message reaches, and which it cannot."""

    pushmail: list[str] = field(default_factory=list)
    smtp: list[str] = field(default_factory=list)
    #: Pushmail domains that took the message for nobody (the delivery failed, or every recipient
    #: there was refused): nothing is offered there, so there is nothing to withdraw.
    failed: list[str] = field(default_factory=list)

    @property
    def withdrawable(self) -> bool:
        return bool(self.pushmail)

    @property
    def summary(self) -> str:
        """What Withdraw does for this message, in a sentence or two."""
        if not self.pushmail and not self.smtp and self.failed:
            return f"Nothing to withdraw: {', '.join(self.failed)} did not take the message."
        if not self.smtp:
            return "Withdrawal reaches every recipient domain."
        copies = f"Copies sent by ordinary email (SMTP) to {', '.join(self.smtp)} are stored at the recipients' servers"
        if not self.pushmail:
            return f"Nothing to withdraw: every recipient got it by ordinary email. {copies} and cannot be withdrawn."
        return (
            f"Withdrawal reaches Pushmail domains only: {', '.join(self.pushmail)}. {copies} and cannot be withdrawn."
        )


def withdrawal_scope(message: Message) -> WithdrawalScope:
    """The message's recipient domains split into Pushmail ones (withdrawable) and SMTP ones (not)."""
    deliveries = sorted(message.deliveries.all(), key=lambda d: d.domain)
    taken = set(message.recipients.exclude(status=RecipientStatus.REJECTED).values_list("domain", flat=True).distinct())
    pushmail = [d for d in deliveries if not by_smtp(d)]
    failed = [d.domain for d in pushmail if d.state == DeliveryState.FAILED or d.domain not in taken]
    return WithdrawalScope(
        pushmail=[d.domain for d in pushmail if d.domain not in failed],
        smtp=[d.domain for d in deliveries if by_smtp(d)],
        failed=failed,
    )
