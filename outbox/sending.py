"""Sending: a message is stored once, with one Delivery per recipient domain.

Recipients hosted here get their inbox entry in the same transaction; every
remote domain's notification is queued for the delivery worker (outbox/delivery.py).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import Domain, User
from accounts.validators import clean_display_name, domain_of
from attachments.services import AttachmentInput, check_attachments
from federation import payloads
from pushmail_site.hooks import Hook
from pushmail_site.states import transition

from .bodies import canonical_content
from .complaints import check_not_paused
from .delivery import queue_deliveries
from .models import (
    Delivery,
    DeliveryState,
    Message,
    MessageAttachment,
    Recipient,
    RecipientKind,
    RecipientStatus,
    Transport,
)
from .rules import (
    check_characters,
    check_encrypted,
    check_in_reply_to,
    check_recipient_count,
    check_subject,
    clean_addresses,
    clean_content_type,
    clean_filename,
)
from .signals import sent_to_local_mailboxes
from .states import DELIVERY
from .threads import thread_key

UNKNOWN_MAILBOX_REASON = "unknown mailbox"

#: ``received_references(message_id)``: the References of a message received here under that
#: Message-ID, or None when none was; the mailbox app answers. A reply continues its parent's chain.
received_references: Hook[[str], list[str] | None] = Hook("outbox.sending.received_references")
#: ``issue_of_list(sender=..., to=..., cc=..., bcc=..., subject=..., text=..., html=..., files=...)``: a draft
#: written to one of the sender's lists goes out as an issue of it (the newsletters app answers): the sent
#: Message, or None when the draft is ordinary mail. Raises ValidationError for what an issue cannot be.
issue_of_list: Hook[..., Message | None] = Hook("outbox.sending.issue_of_list")


def send_message(
    *,
    sender: User,
    to: list[str],
    cc: list[str] | None = None,
    bcc: list[str] | None = None,
    subject: str,
    text: str,
    html: str | None = None,
    in_reply_to: str = "",
    attachments: Sequence[AttachmentInput] = (),
    auto_submitted: str = "",
    encrypted: bool = False,
) -> Message:
    """Store a message once and queue one notification per remote recipient domain.

    Local recipients get their inbox entry in the same transaction. Raises
    ValidationError naming the field for malformed input; unknown or legacy
    recipients are not errors, they are answered per recipient.
    ``attachments`` are stored blobs; their manifest goes into the body (and so
    its digest) and the notifications. The per-file, per-message and quota
    limits are checked here, so every path (web, API) gets them.
    ``auto_submitted`` marks mail a program sent for the user (RFC 3834: "auto-replied").
    ``encrypted``: the sender's browser encrypted it (docs/protocol.md §4.6): ``subject`` is the
    placeholder, ``text`` one armored OpenPGP message, no ``html``, and the attachments ciphertext.
    """
    check_not_paused(sender)  # SendingPaused: too many spam complaints (outbox.complaints)
    to_list, cc_list, bcc_list = (clean_addresses(to, "to"), clean_addresses(cc, "cc"), clean_addresses(bcc, "bcc"))
    if not (to_list or cc_list or bcc_list):
        check_recipient_count(0)
    check_subject(subject)
    check_in_reply_to(in_reply_to)
    check_characters(subject=subject, in_reply_to=in_reply_to, text=text, html=html)
    if encrypted:
        check_encrypted(subject=subject, text=text, html=html or None)
    kinds = _recipient_kinds(to_list, cc_list, bcc_list)
    check_recipient_count(len(kinds))
    files = _checked_files(sender, attachments)
    message = _new_message(
        sender=sender,
        to=to_list,
        cc=cc_list,
        bcc=bcc_list,
        subject=subject,
        text=text,
        html=html,
        in_reply_to=in_reply_to,
        files=files,
        encrypted=encrypted,
    )
    message.auto_submitted = auto_submitted
    with transaction.atomic():
        _store(message, files, kinds)
        _deliver(message, kinds)
    return message


def send_list_issue(
    *,
    sender: User,
    list_address: str,
    list_name: str,
    subject: str,
    text: str,
    html: str | None = None,
    domains: list[str],
    by_smtp: dict[str, list[str]] | None = None,
) -> Message:
    """Store an issue of a list once and queue ONE list notification per subscriber domain (docs/protocol.md §13.3).

    The issue comes from the list's address (``sender`` is its owner); it has no recipients here:
    each domain delivers it to its own subscribers of record. Domains hosted here are left out
    (a list's readers are on other instances). ``by_smtp`` names the subscribers at ordinary mail
    domains, by domain: each such domain gets one delivery by SMTP (transport ``smtp`` from the
    start, the same states and retries), with those subscribers as its recipients (Bcc: nobody
    sees another). A domain in ``domains`` is not also sent to by SMTP. Raises ValidationError
    naming the field.
    """
    check_not_paused(sender)
    check_subject(subject)
    check_characters(subject=subject, in_reply_to="", text=text, html=html)
    message = _new_message(
        sender=sender, to=[list_address], cc=[], bcc=[], subject=subject, text=text, html=html, in_reply_to="", files=[]
    )
    message.list_address = list_address
    _from_list(message, list_address=list_address, list_name=list_name)
    local = set(Domain.objects.filter(name__in=domains).values_list("name", flat=True))
    legacy = {domain: addresses for domain, addresses in (by_smtp or {}).items() if domain not in set(domains)}
    with transaction.atomic():
        message.save(force_insert=True)
        deliveries = _create_deliveries(message, sorted(set(domains) - local), message.date)
        deliveries += Delivery.objects.bulk_create(
            Delivery(message=message, domain=domain, transport=Transport.SMTP, next_attempt_at=message.date)
            for domain in sorted(legacy)
        )
        Recipient.objects.bulk_create(
            Recipient(message=message, address=address, domain=domain, kind=RecipientKind.BCC)
            for domain in sorted(legacy)
            for address in legacy[domain]
        )
        queue_deliveries([d.pk for d in deliveries])
    return message


def send_from_list(*, sender: User, list_address: str, list_name: str, to: str, subject: str, text: str) -> Message:
    """Mail a list sends one reader on its own, such as the link confirming a subscription: from the
    list's address, to ``to`` alone, marked ``Auto-Submitted: auto-generated`` (RFC 3834), delivered
    as any message (by SMTP to an ordinary mail domain). ``sender`` is the list's owner.

    Raises SendingPaused when the owner's sending is paused, ValidationError naming the field.
    """
    check_not_paused(sender)
    to_list = clean_addresses([to], "to")
    check_subject(subject)
    check_characters(subject=subject, in_reply_to="", text=text, html=None)
    kinds: dict[str, str] = {to_list[0]: RecipientKind.TO}
    message = _new_message(
        sender=sender, to=to_list, cc=[], bcc=[], subject=subject, text=text, html=None, in_reply_to="", files=[]
    )
    message.auto_submitted = "auto-generated"
    _from_list(message, list_address=list_address, list_name=list_name)
    with transaction.atomic():
        _store(message, [], kinds)
        _deliver(message, kinds)
    return message


def _from_list(message: Message, *, list_address: str, list_name: str) -> None:
    """The message comes from the list's address and name: its Message-ID, thread and digest follow."""
    message.sender_address = list_address
    message.sender_name = clean_display_name(list_name)
    message.message_id = f"<{message.id}@{domain_of(list_address)}>"
    message.thread_key = thread_key(message_id=message.message_id, in_reply_to="", references=[])
    content = canonical_content(message, manifest=[])
    message.size, message.digest = len(content), payloads.digest(content)


def _recipient_kinds(to: list[str], cc: list[str], bcc: list[str]) -> dict[str, str]:
    """Each recipient once, with the first field that names it (To before Cc before Bcc)."""
    kinds: dict[str, str] = {}
    for kind, addresses in ((RecipientKind.TO, to), (RecipientKind.CC, cc), (RecipientKind.BCC, bcc)):
        for address in addresses:
            kinds.setdefault(address, kind)
    return kinds


def _checked_files(sender: User, attachments: Sequence[AttachmentInput]) -> list[AttachmentInput]:
    files = [
        dataclasses.replace(a, name=clean_filename(a.name), content_type=clean_content_type(a.content_type))
        for a in attachments
    ]
    if files:
        check_attachments(user=sender, attachments=files)
    return files


def _new_message(
    *,
    sender: User,
    to: list[str],
    cc: list[str],
    bcc: list[str],
    subject: str,
    text: str,
    html: str | None,
    in_reply_to: str,
    files: list[AttachmentInput],
    encrypted: bool = False,
) -> Message:
    """The message row, not yet saved, with its body's size and digest."""
    now = timezone.now().replace(microsecond=0)
    global_id = uuid.uuid4()
    message = Message(
        id=global_id,
        sender=sender,
        sender_address=sender.email,
        sender_name=clean_display_name(sender.display_name),
        subject=subject,
        text=text,
        html=html or None,
        to=list(dict.fromkeys(to)),
        cc=list(dict.fromkeys(cc)),
        bcc=list(dict.fromkeys(bcc)),
        message_id=f"<{global_id}@{sender.domain.name}>",
        in_reply_to=in_reply_to,
        references=_references_for(in_reply_to),
        date=now,
        expires_at=now + settings.PUSHMAIL_RETENTION,
        size=0,
        digest="",
        encrypted=encrypted,
    )
    message.thread_key = thread_key(
        message_id=message.message_id, in_reply_to=message.in_reply_to, references=message.references
    )
    manifest = [{"name": a.name, "type": a.content_type, "size": a.blob.size, "digest": a.blob.digest} for a in files]
    content = canonical_content(message, manifest=manifest)
    message.size, message.digest = len(content), payloads.digest(content)
    return message


def _references_for(in_reply_to: str) -> list[str]:
    """The parent's references plus the parent, when the parent is known here."""
    if not in_reply_to:
        return []
    parent = Message.objects.filter(message_id=in_reply_to).values_list("references", flat=True).first()
    if parent is None:
        parent = received_references(in_reply_to)
    # Only ids a peer would take (docs/protocol.md §5.4): one stored by an older version may not be.
    chain = [r for r in parent or [] if isinstance(r, str) and len(r) <= 400 and not payloads.unfit_character(r)]
    if len(chain) > 20:
        chain = chain[:1] + chain[-19:]  # keep the root: it names the thread
    return [*chain, in_reply_to]


def _store(message: Message, files: list[AttachmentInput], kinds: dict[str, str]) -> None:
    message.save(force_insert=True)
    MessageAttachment.objects.bulk_create(
        MessageAttachment(
            message=message, blob=a.blob, position=i, name=a.name, content_type=a.content_type, size=a.blob.size
        )
        for i, a in enumerate(files)
    )
    Recipient.objects.bulk_create(
        Recipient(message=message, address=a, domain=domain_of(a), kind=k) for a, k in kinds.items()
    )


def _deliver(message: Message, kinds: dict[str, str]) -> None:
    """One delivery per recipient domain: done at once here for local ones, queued for the others."""
    by_domain: dict[str, list[str]] = defaultdict(list)
    for address in kinds:
        by_domain[domain_of(address)].append(address)
    deliveries = _create_deliveries(message, sorted(by_domain), message.date)
    for delivery in deliveries:
        if delivery.local:
            _deliver_locally(message, delivery, by_domain[delivery.domain])
    queue_deliveries([d.pk for d in deliveries if not d.local])


def _create_deliveries(message: Message, domains: list[str], now: datetime) -> list[Delivery]:
    local_domains = set(Domain.objects.filter(name__in=domains).values_list("name", flat=True))
    return Delivery.objects.bulk_create(
        Delivery(
            message=message,
            domain=domain,
            local=domain in local_domains,
            next_attempt_at=None if domain in local_domains else now,
        )
        for domain in domains
    )


def _deliver_locally(message: Message, delivery: Delivery, addresses: list[str]) -> None:
    """Same-instance mail: the entry points at the stored message; nothing travels."""
    users = list(User.objects.filter(email__in=addresses, is_active=True))
    sent_to_local_mailboxes.send(sender=Message, message=message, users=users)
    accepted = {user.email for user in users}
    Recipient.objects.filter(message=message, address__in=accepted).update(status=RecipientStatus.ACCEPTED)
    Recipient.objects.filter(message=message, address__in=set(addresses) - accepted).update(
        status=RecipientStatus.REJECTED, reason=UNKNOWN_MAILBOX_REASON
    )
    transition(delivery, DELIVERY, DeliveryState.NOTIFIED, fields={"notified_at": timezone.now(), "attempts": 1})
