"""Recipient side: accept notifications, pull bodies on read, withdraw, expire."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from accounts.models import FetchPolicy, User
from accounts.validators import domain_of
from federation import client, discovery, payloads
from pushmail_site.jobs import backoff, claim_until, enqueue, lock, overdue_before

from . import search
from .models import EntryState, FetchState, InboxEntry, RemoteMessage
from .threads import thread_key

log = logging.getLogger(__name__)

# Remote states an unopened entry mirrors; an opened entry keeps "fetched".
_PENDING_FETCH = (FetchState.NOTIFIED, FetchState.FETCHING, FetchState.UNAVAILABLE)


# --- Delivery into inboxes ------------------------------------------------------------


def deliver_local_entries(*, message, addresses: list[str]) -> set[str]:  # type: ignore[no-untyped-def]
    """Create entries for local recipients of a locally sent message; return the accepted addresses."""
    users = {u.email: u for u in User.objects.filter(email__in=addresses, is_active=True)}
    files = list(message.attachments.all()) if users else []
    names = [a.name for a in files]
    InboxEntry.objects.bulk_create(
        [
            InboxEntry(
                owner=user,
                local=message,
                sender=message.sender_address,
                subject=message.subject,
                size=message.size,
                state=EntryState.FETCHED,
                thread_key=message.thread_key,
                has_attachments=bool(names),
                attachments_size=sum(a.size for a in files),
                search_document=search.entry_document(
                    subject=message.subject,
                    sender=message.sender_address,
                    text=search.body_text({"text": message.text, "html": message.html}),
                    attachments=names,
                ),
            )
            for user in users.values()
        ],
        ignore_conflicts=True,
    )
    return set(users)


def post_notice(*, owner: User, subject: str, text: str) -> InboxEntry:
    """A system message in a user's own inbox, e.g. a delivery failure."""
    return InboxEntry.objects.create(
        owner=owner,
        sender=f"postmaster@{owner.domain.name}",
        subject=subject,
        size=len(text.encode()),
        state=EntryState.NOTICE,
        notice_text=text,
        search_document=search.entry_document(subject=subject, sender=f"postmaster@{owner.domain.name}", text=text),
    )


@dataclass(frozen=True)
class RecipientResult:
    address: str
    status: str  # "accepted" or "rejected"
    reason: str = ""

    def to_json(self) -> dict[str, str]:
        data = {"address": self.address, "status": self.status}
        if self.reason:
            data["reason"] = self.reason
        return data


class ConflictingNotification(Exception):
    """A notification repeats a known (origin, id) with other content; ``field`` names the first difference."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field} differs from the first notification")
        self.field = field


def _as_first_notification(remote: RemoteMessage) -> payloads.Notification:
    """What the first notification of a stored message said (its recipients aside)."""
    return payloads.Notification(
        global_id=remote.global_id,
        message_id=remote.message_id,
        sender=remote.sender,
        recipients=[],
        subject=remote.subject,
        date=remote.date,
        size=remote.size,
        digest=remote.digest,
        in_reply_to=remote.in_reply_to,
        references=list(remote.references),
        expires=remote.expires_at,
        attachments=tuple(
            payloads.ManifestEntry(name=a["name"], type=a["type"], size=a["size"], digest=a["digest"])
            for a in remote.attachments or ()
        ),
    )


def _check_repeat(remote: RemoteMessage, notification: payloads.Notification) -> None:
    conflict = notification.conflict_with(_as_first_notification(remote))
    if conflict is not None:
        log.warning(
            "refused a notification of %s from %s: its %s differs", remote.global_id, remote.origin_domain, conflict
        )
        raise ConflictingNotification(conflict)


def accept_notification(*, origin: str, notification: payloads.Notification) -> list[RecipientResult]:
    """Record a notification: one RemoteMessage per (origin, id), one entry per local recipient.

    Idempotent: a repeated notification creates nothing twice and gets the same answers.
    The first notification's metadata is kept for every entry: a repeat that differs
    from it in anything but its recipients and expiry raises ConflictingNotification
    and changes nothing (docs/protocol.md §5.4). All rows are committed before this returns.
    """
    recipients = notification.recipients
    local_domains = discovery.local_domain_names()
    users = {
        u.email: u
        for u in User.objects.filter(email__in=recipients, is_active=True)
        .select_related("domain")
        .only("id", "email", "fetch_policy", "domain__default_fetch_policy")
    }
    results: list[RecipientResult] = []
    accepted: list[User] = []
    for address in recipients:
        if domain_of(address) not in local_domains:
            results.append(RecipientResult(address, "rejected", "domain not served by this instance"))
        elif address not in users:
            results.append(RecipientResult(address, "rejected", "unknown mailbox"))
        else:
            results.append(RecipientResult(address, "accepted"))
            accepted.append(users[address])
    if not accepted:
        known = RemoteMessage.objects.filter(origin_domain=origin, global_id=notification.global_id).first()
        if known is not None:
            _check_repeat(known, notification)
        return results
    fields = {
        "message_id": notification.message_id,
        "sender": notification.sender,
        "subject": notification.subject,
        "date": notification.date,
        "size": notification.size,
        "digest": notification.digest,
        "in_reply_to": notification.in_reply_to,
        "references": notification.references,
        "expires_at": notification.expires,
        "local_domain": domain_of(accepted[0].email),
        "attachments": [a.to_json() for a in notification.attachments],
    }
    # Most notifications are new: insert first, and look the row up only when the
    # unique constraint says it exists (a repeat, or a split notification).
    for repeat in (False, True):
        try:
            with transaction.atomic():
                if repeat:
                    remote, created = RemoteMessage.objects.get_or_create(
                        origin_domain=origin, global_id=notification.global_id, defaults=fields
                    )
                else:
                    remote = RemoteMessage.objects.create(
                        origin_domain=origin, global_id=notification.global_id, **fields
                    )
                    created = True
                if not created:
                    _check_repeat(remote, notification)
                _add_entries(remote, accepted)
                if not created and remote.content is not None:
                    # A recipient added after the body was fetched finds it by its text too.
                    search.index_fetched_body(remote=remote, body=payloads.parse_body(bytes(remote.content)))
            break
        except IntegrityError:
            if repeat:
                raise
    if remote.state == FetchState.NOTIFIED and any(
        user.effective_fetch_policy == FetchPolicy.ON_NOTIFY for user in accepted
    ):
        # "Fetch as soon as notified": the sender cannot tell when (or whether) anyone here reads it.
        # One fetch per message for the whole instance, as for a fetch on open.
        request_fetch(remote_id=remote.pk)
    return results


def _add_entries(remote: RemoteMessage, users: list[User]) -> None:
    """Entries for these users, from what the message's first notification said (or its verified body)."""
    manifest = remote.attachments or []
    conversation = thread_key(
        message_id=remote.message_id, in_reply_to=remote.in_reply_to, references=list(remote.references)
    )
    InboxEntry.objects.bulk_create(
        [
            InboxEntry(
                owner=user,
                remote=remote,
                sender=remote.sender,
                subject=remote.subject,
                size=remote.size,
                state=remote.state,
                thread_key=conversation,
                has_attachments=bool(manifest),
                attachments_size=sum(a["size"] for a in manifest),
                search_document=search.entry_document(subject=remote.subject, sender=remote.sender),
            )
            for user in users
        ],
        ignore_conflicts=True,
    )


# --- Pull on read ----------------------------------------------------------------------


def open_entry(*, entry: InboxEntry) -> InboxEntry:
    """The owner opens an entry: mark it read, and make sure its body is here or on its way."""
    from reputation.services import record_read

    now = timezone.now()
    fields = []
    if not entry.read:
        entry.read = True
        fields.append("read")
    remote = entry.remote
    if entry.state == EntryState.WITHDRAWN and entry.opened_at is None:
        pass  # withdrawn before this reader saw it
    elif remote is None or remote.content is not None:
        if entry.opened_at is None and entry.state in (EntryState.FETCHED, EntryState.NOTICE):
            entry.opened_at = now
            fields.append("opened_at")
            if remote is not None:
                record_read(message=remote, reader_id=entry.owner_id)
    elif remote.state in _PENDING_FETCH:
        request_fetch(remote_id=remote.pk)
    if fields:
        entry.save(update_fields=fields)
    return entry


def request_fetch(*, remote_id: int, now: bool = False) -> None:
    """Make sure exactly one fetch is queued for a message (per instance, so per domain).

    ``now`` skips a pending backoff: the "try again now" action.
    """
    with transaction.atomic():
        remote = lock(RemoteMessage.objects, skip_locked=False).filter(pk=remote_id).first()
        if remote is None:
            return
        if remote.state == FetchState.NOTIFIED:
            _request_fetch(remote)
        elif remote.state == FetchState.UNAVAILABLE and now:
            remote.next_attempt_at = timezone.now()
            remote.save(update_fields=["next_attempt_at"])
            _queue_fetch(remote.pk)


def _request_fetch(remote: RemoteMessage) -> None:
    remote.state = FetchState.FETCHING
    remote.next_attempt_at = timezone.now()
    remote.save(update_fields=["state", "next_attempt_at"])
    InboxEntry.objects.filter(remote=remote, state=EntryState.NOTIFIED).update(state=EntryState.FETCHING)
    _queue_fetch(remote.pk)


def _queue_fetch(remote_id: int) -> None:
    from .tasks import fetch_body

    enqueue(fetch_body, remote_id)


def _set_state(remote: RemoteMessage, state: str, *, only_unopened: bool = False, **fields: object) -> None:
    remote.state = state
    for name, value in fields.items():
        setattr(remote, name, value)
    remote.save(update_fields=["state", *fields])
    entries = InboxEntry.objects.filter(remote=remote).exclude(state=EntryState.WITHDRAWN)
    if only_unopened:
        entries = entries.filter(opened_at__isnull=True)
    entries.update(state=state)


def fetch_body(remote_id: int) -> None:
    """Pull one body from the sender's instance, verify its digest, store it once."""
    now = timezone.now()
    with transaction.atomic():
        remote = (
            lock(RemoteMessage.objects)
            .filter(pk=remote_id, state__in=[FetchState.FETCHING, FetchState.UNAVAILABLE], next_attempt_at__lte=now)
            .first()
        )
        if remote is None:
            return  # done already, or someone else holds it
        remote.attempts += 1
        remote.last_attempt_at = now
        remote.next_attempt_at = claim_until()
        remote.save(update_fields=["attempts", "last_attempt_at", "next_attempt_at"])
    try:
        instance = discovery.discover(remote.origin_domain)
        if instance is None:
            raise client.PeerError(f"{remote.origin_domain} no longer runs Pushmail", retryable=True)
        content = client.fetch_body(instance=instance, as_domain=remote.local_domain, global_id=remote.global_id)
    except client.Gone as gone:
        with transaction.atomic():
            state = FetchState.WITHDRAWN if gone.reason == "withdrawn" else FetchState.EXPIRED
            _set_state(remote, state, only_unopened=True, next_attempt_at=None, last_error="")
        return
    except (discovery.DiscoveryError, client.PeerError) as exc:
        _fetch_failed(remote, str(exc), retry_after=exc.retry_after)
        return
    with transaction.atomic():
        current = lock(RemoteMessage.objects, skip_locked=False).get(pk=remote.pk)
        if current.state not in (FetchState.FETCHING, FetchState.UNAVAILABLE):
            return  # withdrawn while we were fetching
        if payloads.digest(content) != current.digest or len(content) != current.size:
            log.warning("digest mismatch for %s from %s", current.global_id, current.origin_domain)
            _set_state(
                current,
                FetchState.TAMPERED,
                next_attempt_at=None,
                last_error=f"body digest {payloads.digest(content)} does not match the notified {current.digest}",
            )
            return
        try:
            body = payloads.check_body(content)
        except payloads.PayloadError as exc:
            # The sender notified these very bytes, so fetching again cannot help.
            log.warning("malformed body for %s from %s: %s", current.global_id, current.origin_domain, exc)
            _set_state(
                current, FetchState.MALFORMED, next_attempt_at=None, last_error=f"body is malformed: {exc}"[:500]
            )
            return
        mismatch = payloads.body_mismatch(
            body,
            {
                "id": str(current.global_id),
                "from": current.sender,
                "subject": current.subject,
                "message_id": current.message_id,
                "date": payloads.format_time(current.date),
                "attachments": current.attachments,
            },
        )
        if mismatch:
            _set_state(
                current,
                FetchState.TAMPERED,
                next_attempt_at=None,
                last_error=f"body does not match its notification: {mismatch} differs",
            )
            return
        _set_state(
            current, FetchState.FETCHED, content=content, fetched_at=timezone.now(), next_attempt_at=None, last_error=""
        )
        # Every reader sees the verified body's subject and sender from now on.
        InboxEntry.objects.filter(remote=current).exclude(subject=body["subject"], sender=body["from"]).update(
            subject=body["subject"], sender=body["from"]
        )
        search.index_fetched_body(remote=current, body=body)


def _fetch_failed(remote: RemoteMessage, error: str, *, retry_after: float | None) -> None:
    now = timezone.now()
    if now >= remote.expires_at:
        with transaction.atomic():
            _set_state(remote, FetchState.EXPIRED, only_unopened=True, next_attempt_at=None, last_error=error[:500])
        return
    delay = timedelta(seconds=retry_after) if retry_after else backoff(remote.attempts)
    with transaction.atomic():
        current = lock(RemoteMessage.objects, skip_locked=False).get(pk=remote.pk)
        if current.state not in (FetchState.FETCHING, FetchState.UNAVAILABLE):
            return
        _set_state(current, FetchState.UNAVAILABLE, next_attempt_at=now + delay, last_error=error[:500])
    from .tasks import fetch_body as task

    enqueue(task, remote.pk, countdown=delay.total_seconds())


# --- Withdrawal ----------------------------------------------------------------------


@dataclass(frozen=True)
class WithdrawalResult:
    fetched_before: bool


def accept_withdrawal(*, origin: str, withdrawal: payloads.Withdrawal) -> WithdrawalResult | None:
    """Hide a withdrawn message from everyone who has not opened it; None if unknown here."""
    with transaction.atomic():
        remote = (
            lock(RemoteMessage.objects, skip_locked=False)
            .filter(origin_domain=origin, global_id=withdrawal.global_id)
            .first()
        )
        if remote is None:
            return None
        fetched_before = remote.fetched_at is not None
        if remote.state == FetchState.WITHDRAWN:
            return WithdrawalResult(fetched_before=fetched_before)
        # Whoever had not opened it can no longer find it by its body either.
        InboxEntry.objects.filter(remote=remote, opened_at__isnull=True).update(
            state=EntryState.WITHDRAWN,
            search_document=search.entry_document(subject=remote.subject, sender=remote.sender),
        )
        remote.state = FetchState.WITHDRAWN
        remote.withdrawn_at = timezone.now()
        remote.next_attempt_at = None
        fields = ["state", "withdrawn_at", "next_attempt_at"]
        if not InboxEntry.objects.filter(remote=remote, opened_at__isnull=False).exists():
            remote.content = None  # a cached body nobody opened is deleted
            fields.append("content")
        remote.save(update_fields=fields)
    return WithdrawalResult(fetched_before=fetched_before)


def withdraw_local_entries(*, message) -> int:  # type: ignore[no-untyped-def]
    return InboxEntry.objects.filter(local=message, opened_at__isnull=True).update(
        state=EntryState.WITHDRAWN,
        search_document=search.entry_document(subject=message.subject, sender=message.sender_address),
    )


# --- Sweeps ----------------------------------------------------------------------------------


def requeue_due(*, limit: int = 1000) -> int:
    from .tasks import fetch_body as task

    due = list(
        RemoteMessage.objects.filter(
            state__in=[FetchState.FETCHING, FetchState.UNAVAILABLE], next_attempt_at__lte=overdue_before()
        )
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
    for remote_id in due:
        enqueue(task, remote_id)
    return len(due)


def expire_unfetched() -> int:
    """Messages whose expiry passed before anyone fetched them become "expired"."""
    count = 0
    for remote in RemoteMessage.objects.filter(state__in=_PENDING_FETCH, expires_at__lte=timezone.now()):
        with transaction.atomic():
            _set_state(remote, FetchState.EXPIRED, only_unopened=True, next_attempt_at=None)
        count += 1
    return count


def prefetch_from_correspondents() -> int:
    """Fetch unopened mail from people a recipient has written to, before it expires.

    Mail from unknown senders is never prefetched.
    """
    from outbox.models import Recipient

    horizon = timezone.now() + settings.PUSHMAIL_PREFETCH_BEFORE_EXPIRY
    written_to = Recipient.objects.filter(
        address=OuterRef("sender"), message__sender__inbox_entries__remote=OuterRef("pk")
    )
    ids = list(
        RemoteMessage.objects.filter(state=FetchState.NOTIFIED, expires_at__lte=horizon, expires_at__gt=timezone.now())
        .filter(Exists(written_to))
        .values_list("pk", flat=True)[:500]
    )
    for remote_id in ids:
        request_fetch(remote_id=remote_id)
    return len(ids)


def retry_fetch_now(*, entry: InboxEntry) -> InboxEntry:
    if entry.remote_id is not None:
        request_fetch(remote_id=entry.remote_id, now=True)
        entry.refresh_from_db()
    return entry
