"""Mail arriving in inboxes: notifications from other instances, local mail, system notices."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from accounts.models import Domain, FetchPolicy, User
from accounts.validators import domain_of
from attachments.models import Blob
from federation import discovery, payloads
from federation.inbound import ConflictingNotification, RecipientResult
from outbox.models import Message
from outbox.threads import reply_prefixed
from pushmail_site.jobs import lock
from pushmail_site.transactions import retry_on_conflict

from . import search, spam, states
from .fetching import request_fetch
from .models import AttachmentFetchState, FetchState, Folder, InboxEntry, ReceivedAttachment, RemoteMessage, Transport
from .signals import mail_arrived, mails_arrived
from .threads import conversation_keys

log = logging.getLogger(__name__)

UNSERVED_DOMAIN = "domain not served by this instance"
UNKNOWN_MAILBOX = "unknown mailbox"


# --- Notifications from other instances ------------------------------------------------


@retry_on_conflict
def accept_notification(
    *, origin: str, notification: payloads.Notification, folder: str = Folder.INBOX, list_id: str = ""
) -> list[RecipientResult]:
    """Record a notification: one RemoteMessage per (origin, id), one entry per local recipient.

    Idempotent: a repeated notification creates nothing twice and gets the same answers.
    The first notification's metadata is kept for every entry: a repeat that differs
    from it in anything but its recipients and expiry raises ConflictingNotification
    and changes nothing (docs/protocol.md §5.4). All rows are committed before this returns.
    ``folder`` is where new copies go, ``list_id`` the list a list's issue came from (docs/protocol.md §13.3).
    """
    users = _local_recipients(notification.recipients)
    served = discovery.local_domain_names()
    results = [_answer(address, users, served) for address in notification.recipients]
    accepted = [users[result.address] for result in results if result.status == "accepted"]
    if not accepted:
        known = RemoteMessage.objects.filter(origin_domain=origin, global_id=notification.global_id).first()
        if known is not None:
            _check_repeat(known, notification)
        return results
    remote = _store(origin, notification, accepted, folder=folder, list_id=list_id)
    if _fetches_on_notify(remote, accepted):
        request_fetch(remote_id=remote.pk)
    return results


@retry_on_conflict
def accept_notifications(
    *, origin: str, notifications: list[payloads.Notification]
) -> list[list[RecipientResult] | ConflictingNotification]:
    """Record a batch of notifications from one origin: for each, what accept_notification answers.

    One transaction for the batch, its mailboxes looked up at once, its messages and their
    entries each inserted in one statement. When one of its ids is already known here (a retry,
    a split notification, the same message's batch for another domain here) or repeats in the
    batch, each notification is taken in turn instead, exactly as alone (each in its own
    transaction); a conflicting one is answered with its ConflictingNotification and the
    others are stored all the same. All rows are committed before this returns. Batches of the
    same messages for several domains here, arriving at once, may deadlock: the one PostgreSQL
    aborts runs again (``retry_on_conflict``).
    """
    users = _local_recipients(list({address for n in notifications for address in n.recipients}))
    served = discovery.local_domain_names()
    answers: list[list[RecipientResult] | ConflictingNotification] = [
        [_answer(address, users, served) for address in n.recipients] for n in notifications
    ]
    accepted = [
        [users[r.address] for r in results if r.status == "accepted"] if isinstance(results, list) else []
        for results in answers
    ]
    with transaction.atomic():
        if _store_new_batch(origin, notifications, accepted, answers):
            return answers
    # Each in its own transaction: the batches of one message for several domains here arrive at
    # once, and each holds a message's row only while it adds its own copies, not for its whole batch.
    for i, notification in enumerate(notifications):
        try:
            answers[i] = accept_notification(origin=origin, notification=notification)
        except ConflictingNotification as exc:
            answers[i] = exc
    return answers


def _store_new_batch(
    origin: str,
    notifications: list[payloads.Notification],
    accepted: list[list[User]],
    answers: list[list[RecipientResult] | ConflictingNotification],
) -> bool:
    """Store a batch whose messages are all new here in a few statements; False (nothing stored) if one is not."""
    ids = [n.global_id for n in notifications]
    if len(set(ids)) != len(ids):
        return False
    unreached = {n.global_id: i for i, n in enumerate(notifications) if not accepted[i]}
    if unreached:  # a notification reaching nobody here is still refused if it contradicts the first one
        for known in RemoteMessage.objects.filter(origin_domain=origin, global_id__in=list(unreached)):
            try:
                _check_repeat(known, notifications[unreached[known.global_id]])
            except ConflictingNotification as exc:
                answers[unreached[known.global_id]] = exc
    todo = [(n, users) for n, users in zip(notifications, accepted, strict=True) if users]
    if not todo:
        return True
    try:
        with transaction.atomic():
            remotes = RemoteMessage.objects.bulk_create(
                [
                    RemoteMessage(
                        origin_domain=origin,
                        global_id=n.global_id,
                        **_message_fields(n, local_domain=domain_of(users[0].email)),
                    )
                    for n, users in todo
                ]
            )
    except IntegrityError:
        return False
    pairs = list(zip(remotes, [users for _n, users in todo], strict=True))
    spam.classify_new_many(
        [remote for remote, _users in pairs], recipients=[[user.email for user in users] for _remote, users in pairs]
    )
    entries: list[InboxEntry] = []
    for remote, (_n, users) in zip(remotes, todo, strict=True):
        entries += _entries_of(remote, users)
    InboxEntry.objects.bulk_create(entries, ignore_conflicts=True)
    mails_arrived.send(
        sender=InboxEntry,
        arrivals=[(remote.pk, [u.pk for u in users]) for remote, users in pairs],
        owners=[user for _remote, users in pairs for user in users],
    )
    for remote, (_n, users) in zip(remotes, todo, strict=True):
        if _fetches_on_notify(remote, users):
            request_fetch(remote_id=remote.pk)
    return True


# What ingest reads of a recipient's mailbox, in the model's field order (Model.from_db takes them so).
_RECIPIENT_FIELDS = ("id", "email", "domain_id", "fetch_policy", "has_mail_rules")


def _local_recipients(addresses: list[str]) -> dict[str, User]:
    """The active mailboxes of these addresses, by address, with what ingest reads of them and of their
    domain (its default fetch policy); the other fields are deferred, as with ``only()``.

    One statement, written out rather than compiled by the ORM each time: it runs for every
    notification, and compiling the query cost more CPU than running it.
    """
    if not addresses:
        return {}
    fields = [f.attname for f in User._meta.concrete_fields if f.attname in _RECIPIENT_FIELDS]
    quote = connection.ops.quote_name
    marks = ", ".join(["%s"] * len(addresses))
    users, domains = quote(User._meta.db_table), quote(Domain._meta.db_table)
    sql = (
        f"SELECT {', '.join('u.' + quote(name) for name in fields)}, d.{quote('default_fetch_policy')} "  # noqa: S608 - names are ours, values bound
        f"FROM {users} u INNER JOIN {domains} d ON d.id = u.{quote('domain_id')} "
        f"WHERE u.{quote('is_active')} = %s AND u.{quote('email')} IN ({marks})"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [True, *addresses])
        rows = cursor.fetchall()
    db = connection.alias
    domain_of_user = User._meta.get_field("domain")
    found: dict[str, User] = {}
    for *values, default_fetch_policy in rows:
        row = dict(zip(fields, values, strict=True))
        row["has_mail_rules"] = bool(row["has_mail_rules"])  # SQLite answers 0 or 1
        user = User.from_db(db, fields, [row[name] for name in fields])
        domain = Domain.from_db(db, ["id", "default_fetch_policy"], [row["domain_id"], default_fetch_policy])
        domain_of_user.set_cached_value(user, domain)
        found[user.email] = user
    return found


def _answer(address: str, users: dict[str, User], served: Collection[str]) -> RecipientResult:
    if domain_of(address) not in served:
        return RecipientResult(address, "rejected", UNSERVED_DOMAIN)
    if address not in users:
        return RecipientResult(address, "rejected", UNKNOWN_MAILBOX)
    return RecipientResult(address, "accepted")


def _store(
    origin: str,
    notification: payloads.Notification,
    users: list[User],
    *,
    folder: str = Folder.INBOX,
    list_id: str = "",
) -> RemoteMessage:
    """The message's one row, with an entry for each of ``users``.

    Most notifications are new: insert first, and look the row up only when the
    unique constraint says it exists (a repeat, or a split notification).
    """
    fields = _message_fields(notification, local_domain=domain_of(users[0].email))
    if list_id:
        fields["list_id"] = list_id[:250]
    try:
        with transaction.atomic():
            remote = RemoteMessage.objects.create(origin_domain=origin, global_id=notification.global_id, **fields)
            spam.classify_new(remote, recipients=[user.email for user in users])
            _add_entries(remote, users, folder=folder)
        return remote
    except IntegrityError:
        pass
    with transaction.atomic():
        remote = _known(origin, notification, fields)
        # A repeat, or a notification split in parts: only mailboxes without their copy yet get one.
        present = set(InboxEntry.objects.filter(remote=remote, owner__in=users).values_list("owner_id", flat=True))
        _add_entries(remote, [user for user in users if user.pk not in present], folder=folder)
    return remote


def _known(origin: str, notification: payloads.Notification, fields: dict[str, Any]) -> RemoteMessage:
    """The stored row of a repeated notification, locked so new entries start in its current state."""
    found = lock(RemoteMessage.objects.all(), skip_locked=False).filter(
        origin_domain=origin, global_id=notification.global_id
    )
    remote = found.first()
    if remote is None:  # deleted since the insert found it
        remote = RemoteMessage.objects.create(origin_domain=origin, global_id=notification.global_id, **fields)
        spam.classify_new(remote)
        return remote
    _check_repeat(remote, notification)
    return remote


def _message_fields(notification: payloads.Notification, *, local_domain: str) -> dict[str, Any]:
    return {
        "message_id": notification.message_id,
        "sender": notification.sender,
        "sender_name": notification.sender_name,
        "subject": notification.subject,
        "date": notification.date,
        "size": notification.size,
        "digest": notification.digest,
        "in_reply_to": notification.in_reply_to,
        "references": notification.references,
        "expires_at": notification.expires,
        "local_domain": local_domain,
        "attachments": [a.to_json() for a in notification.attachments],
        "encrypted": notification.encrypted,
    }


def _check_repeat(remote: RemoteMessage, notification: payloads.Notification) -> None:
    conflict = notification.conflict_with(_as_first_notification(remote))
    if conflict is not None:
        log.warning(
            "refused a notification of %s from %s: its %s differs", remote.global_id, remote.origin_domain, conflict
        )
        raise ConflictingNotification(conflict)


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
        sender_name=remote.sender_name,
        encrypted=remote.encrypted,
    )


def _add_entries(
    remote: RemoteMessage,
    users: list[User],
    *,
    body: dict[str, Any] | None = None,
    imported: bool = False,
    folder: str = Folder.INBOX,
) -> None:
    """Entries for these users, from what the message's first notification said (or its verified body).

    ``body``: the body of a message that has none stored before (received whole by SMTP): each
    copy it may be read in is indexed on it as it is inserted, rather than updated after.
    New mail is announced (``mail_arrived``: filters, vacation replies); ``imported`` mail is not:
    it is filed read in the Archive.
    """
    if not users:
        return
    InboxEntry.objects.bulk_create(
        _entries_of(remote, users, body=body, imported=imported, folder=folder), ignore_conflicts=True
    )
    if not imported:
        mail_arrived.send(
            sender=InboxEntry, remote_id=remote.pk, local_id=None, owner_ids=[u.pk for u in users], owners=users
        )
    if remote.content is not None and body is None:
        # A recipient added after the body was fetched finds it by its text too.
        search.index_fetched_body(remote=remote, body=payloads.parse_body(bytes(remote.content)))


def _entries_of(
    remote: RemoteMessage,
    users: list[User],
    *,
    body: dict[str, Any] | None = None,
    imported: bool = False,
    folder: str = Folder.INBOX,
) -> list[InboxEntry]:
    """The new entries of ``remote`` for ``users`` (not saved): folder, thread, search document."""
    manifest = remote.attachments or []
    # A message already judged spam here goes straight to Spam (unread mail it is not).
    to_spam = spam.straight_to_spam(remote=remote, owner_ids=[user.pk for user in users])
    conversations = conversation_keys(
        owner_ids=[user.pk for user in users],
        message_id=remote.message_id,
        in_reply_to=remote.in_reply_to,
        references=list(remote.references),
        subject=remote.subject,
        sender=remote.sender,
        at=timezone.now(),
    )
    head = search.entry_document(subject=remote.subject, sender=remote.sender, sender_name=remote.sender_name)
    # A copy going straight to Spam is matched on its head only, as mailbox.search indexes it.
    whole = head if body is None else search.fetched_document(remote, body)
    return [
        InboxEntry(
            owner=user,
            remote=remote,
            sender=remote.sender,
            sender_name=remote.sender_name,
            subject=remote.subject,
            size=remote.size,
            state=states.remote_entry_start(remote),
            thread_key=conversations[user.pk],
            has_attachments=bool(manifest),
            attachments_size=sum(a["size"] for a in manifest),
            search_document=head if user.pk in to_spam else whole,
            **(
                {"folder": Folder.ARCHIVE, "read": True}
                if imported
                else {"folder": Folder.SPAM, "hidden_from": folder, "read": True}
                if user.pk in to_spam
                else {"folder": folder}
            ),
        )
        for user in users
    ]


def _fetches_on_notify(remote: RemoteMessage, users: list[User]) -> bool:
    """ "Fetch as soon as notified": the sender cannot tell when (or whether) anyone here reads it.

    One fetch per message for the whole instance, as for a fetch on open.
    """
    on_notify = any(user.effective_fetch_policy == FetchPolicy.ON_NOTIFY for user in users)
    return on_notify and remote.state == FetchState.NOTIFIED and not remote.spam_verdict


# --- Mail pushed whole by SMTP (the gateway app parses and checks it) -------------------


@dataclass(frozen=True)
class SmtpAttachment:
    """One attachment of a message received by SMTP, its bytes already stored once."""

    name: str
    content_type: str
    blob: Blob


@dataclass(frozen=True)
class SmtpDelivery:
    """A message received by SMTP, parsed: what its readers see, and how it arrived.

    Addresses are normalized, ids and text fit the body schema (docs/protocol.md §4.1):
    the gateway cleans them, and :func:`accept_smtp_message` checks them again.
    """

    origin_domain: str
    message_id: str
    sender: str
    to: list[str]
    cc: list[str]
    subject: str
    date: datetime
    text: str
    html: str | None
    in_reply_to: str
    references: list[str]
    raw: Blob
    authentication_results: str
    attachments: list[SmtpAttachment] = field(default_factory=list)
    #: Why the message goes to Spam at once (a DMARC quarantine policy), or "".
    spam_reason: str = ""
    #: The From header's display name, cleaned (accounts.validators.clean_display_name), or "".
    sender_name: str = ""
    #: Its List-Id identity, and why it is automated mail (gateway.mime), or "".
    list_id: str = ""
    automated: str = ""


@dataclass(frozen=True)
class SmtpFiling:
    """A message received by SMTP, checked and ready to file (:func:`smtp_filing`)."""

    delivery: SmtpDelivery
    users: list[User]
    global_id: uuid.UUID
    manifest: list[dict[str, Any]]
    content: bytes


def smtp_filing(*, delivery: SmtpDelivery, users: list[User]) -> SmtpFiling:
    """Check a message received by SMTP for ``users`` (active mailboxes here), before it is filed.

    Raises PayloadError when its body does not fit the schema; stores nothing.
    """
    global_id = uuid.uuid4()
    manifest = [
        {"name": a.name, "type": a.content_type, "size": a.blob.size, "digest": a.blob.digest}
        for a in delivery.attachments
    ]
    content = payloads.canonical_body(
        global_id=global_id,
        message_id=delivery.message_id,
        sender=delivery.sender,
        to=delivery.to,
        cc=delivery.cc,
        subject=delivery.subject,
        date=delivery.date,
        text=delivery.text,
        html=delivery.html,
        in_reply_to=delivery.in_reply_to,
        references=delivery.references,
        attachments=manifest,
        sender_name=delivery.sender_name,
    )
    payloads.check_body(content)
    return SmtpFiling(delivery=delivery, users=users, global_id=global_id, manifest=manifest, content=content)


def accept_smtp_message(*, delivery: SmtpDelivery, users: list[User], imported: bool = False) -> RemoteMessage:
    """Store a message received by SMTP for ``users`` (active mailboxes here) and return its row.

    Its body is here already, so the message starts ``fetched``: it reads,
    searches, threads and downloads like one fetched from another instance.
    Attachments are recorded as fetched with their stored bytes. Run inside the
    caller's transaction. Raises PayloadError when the body does not fit the
    schema (nothing stored). ``imported`` mail (the owner's own, from an mbox or
    .eml file) is filed read in the Archive, unjudged, and not announced as new
    mail (no filters, no replies).
    """
    return file_smtp_messages(filings=[smtp_filing(delivery=delivery, users=users)], imported=imported)[0]


def file_smtp_messages(*, filings: list[SmtpFiling], imported: bool = False) -> list[RemoteMessage]:
    """Store messages received by SMTP (:func:`smtp_filing`), together: their rows in one statement,
    their attachments in one, their entries in one (but where a message's thread is looked up among
    the entries before it), in the caller's transaction. Each is then what
    :func:`accept_smtp_message` makes of it; returns their rows, in order.
    """
    now = timezone.now()
    # No savepoint: nothing here is rolled back alone (the caller's block is the unit).
    with transaction.atomic(savepoint=False):
        remotes = RemoteMessage.objects.bulk_create([_smtp_remote(filing, now=now) for filing in filings])
        if not imported:
            # Its campaign, its sender's and origin's standing here, as for a notification.
            judged = [(r, f) for r, f in zip(remotes, filings, strict=True) if not f.delivery.spam_reason]
            spam.classify_new_many(
                [remote for remote, _ in judged], recipients=[[u.email for u in f.users] for _, f in judged]
            )
        ReceivedAttachment.objects.bulk_create(
            [
                ReceivedAttachment(
                    remote=remote,
                    position=position,
                    state=AttachmentFetchState.FETCHED,
                    blob=attachment.blob,
                    fetched_at=now,
                )
                for remote, filing in zip(remotes, filings, strict=True)
                for position, attachment in enumerate(filing.delivery.attachments)
            ]
        )
        pending: list[InboxEntry] = []
        for remote, filing in zip(remotes, filings, strict=True):
            if pending and _threads_by_lookup(remote):
                # Its conversation may be an earlier message of this batch: those entries go in first.
                InboxEntry.objects.bulk_create(pending, ignore_conflicts=True)
                pending = []
            body = payloads.parse_body(filing.content)  # indexed on the body too
            pending += _entries_of(remote, filing.users, body=body, imported=imported)
        InboxEntry.objects.bulk_create(pending, ignore_conflicts=True)
        if not imported:
            # One announcement for the batch: the filters' question (who has any) asked once for all.
            mails_arrived.send(
                sender=InboxEntry,
                arrivals=[(remote.pk, [u.pk for u in f.users]) for remote, f in zip(remotes, filings, strict=True)],
            )
            for remote, filing in zip(remotes, filings, strict=True):
                if filing.delivery.spam_reason:
                    # Every copy to Spam, known correspondent or not: a failed DMARC check means the
                    # From may be forged. Put back in the Inbox if the verdict is lifted, like any verdict.
                    InboxEntry.objects.filter(remote=remote).update(
                        folder=Folder.SPAM, hidden_from=Folder.INBOX, read=True
                    )
    return remotes


def _threads_by_lookup(remote: RemoteMessage) -> bool:
    """Whether the message's conversation is found among stored entries (mailbox.threads), not in its own ids."""
    return not remote.references and bool(remote.in_reply_to or reply_prefixed(remote.subject))


def _smtp_remote(filing: SmtpFiling, *, now: datetime) -> RemoteMessage:
    delivery = filing.delivery
    return RemoteMessage(
        origin_domain=delivery.origin_domain,
        global_id=filing.global_id,
        transport=Transport.SMTP,
        message_id=delivery.message_id,
        sender=delivery.sender,
        sender_name=delivery.sender_name,
        subject=delivery.subject,
        date=delivery.date,
        size=delivery.raw.size,
        digest=payloads.digest(filing.content),
        in_reply_to=delivery.in_reply_to,
        references=delivery.references,
        attachments=filing.manifest,
        # Nothing here expires: the message is this instance's to keep, like mail sent from it.
        expires_at=now,
        local_domain=domain_of(filing.users[0].email),
        state=states.SMTP_MESSAGE_START,
        content=filing.content,
        fetched_at=now,
        raw=delivery.raw,
        authentication_results=delivery.authentication_results,
        spam_verdict=delivery.spam_reason[:300],
        list_id=delivery.list_id[:250],
        automated=delivery.automated[:100],
    )


# --- Mail between mailboxes of this instance, and system notices ------------------------


def deliver_local_entries(*, message: Message, users: list[User], folder: str = Folder.INBOX) -> None:
    """Create the inbox entries of a message sent to mailboxes of this instance (active ones, found by outbox).

    ``folder``: where they go (a list's issue: Newsletters).
    """
    files = list(message.attachments.all()) if users else []
    names = [a.name for a in files]
    document = search.entry_document(
        subject=message.subject,
        sender=message.sender_address,
        sender_name=message.sender_name,
        text=search.body_text({"text": message.text, "html": message.html, "encrypted": message.encrypted}),
        attachments=names,
    )
    conversations = conversation_keys(
        owner_ids=[user.pk for user in users],
        message_id=message.message_id,
        in_reply_to=message.in_reply_to,
        references=list(message.references),
        subject=message.subject,
        sender=message.sender_address,
        at=timezone.now(),
    )
    InboxEntry.objects.bulk_create(
        [
            InboxEntry(
                owner=user,
                local=message,
                sender=message.sender_address,
                sender_name=message.sender_name,
                subject=message.subject,
                size=message.size,
                state=states.LOCAL_ENTRY_START,
                thread_key=conversations[user.pk],
                has_attachments=bool(names),
                attachments_size=sum(a.size for a in files),
                search_document=document,
                folder=folder,
            )
            for user in users
        ],
        ignore_conflicts=True,
    )
    if users:
        mail_arrived.send(sender=InboxEntry, remote_id=None, local_id=message.pk, owner_ids=[u.pk for u in users])


def post_notice(*, owner: User, subject: str, text: str) -> InboxEntry:
    """A system message in a user's own inbox, e.g. a delivery failure."""
    sender = f"postmaster@{owner.domain.name}"
    return InboxEntry.objects.create(
        owner=owner,
        sender=sender,
        subject=subject,
        size=len(text.encode()),
        state=states.NOTICE_ENTRY_START,
        notice_text=text,
        search_document=search.entry_document(subject=subject, sender=sender, text=text),
    )
