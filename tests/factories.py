"""factory_boy factories. Domains and mailboxes go through the account services,
so every domain has its signing key and every mailbox a verified address."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import factory
from django.utils import timezone

from accounts.models import Domain, User
from accounts.services import create_domain, create_mailbox
from federation import payloads
from mailbox.models import EntryState, FetchState, InboxEntry, RemoteMessage
from outbox.models import Message
from outbox.services import send_message


def _now() -> datetime:
    return timezone.now().replace(microsecond=0)


class DomainFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Domain

    name = factory.Sequence(lambda n: f"d{n}.test")

    @classmethod
    def _create(cls, model_class: type[Domain], *args: Any, name: str, **kwargs: Any) -> Domain:
        return create_domain(name=name)


class MailboxFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User

    domain = factory.SubFactory(DomainFactory)
    local_part = factory.Sequence(lambda n: f"user{n}")
    password = "correct horse battery staple"  # noqa: S105 - test data

    @classmethod
    def _create(
        cls, model_class: type[User], *args: Any, domain: Domain, local_part: str, password: str, **kwargs: Any
    ) -> User:
        return create_mailbox(address=f"{local_part}@{domain.name}", password=password, **kwargs)


class SentMessageFactory(factory.django.DjangoModelFactory):
    """A message sent through the outbox service, as the API would send it."""

    class Meta:
        model = Message

    sender = factory.SubFactory(MailboxFactory)
    to = factory.LazyFunction(lambda: ["carol@peer.test"])
    cc = factory.LazyFunction(list)
    bcc = factory.LazyFunction(list)
    subject = factory.Sequence(lambda n: f"Subject {n}")
    text = factory.Sequence(lambda n: f"Body text {n}")
    html = None
    in_reply_to = ""

    @classmethod
    def _create(cls, model_class: type[Message], *args: Any, **kwargs: Any) -> Message:
        return send_message(**kwargs)


@dataclass
class PeerMessage:
    """A message held by a remote instance: what it notifies and what it serves on fetch."""

    global_id: uuid.UUID
    sender: str
    to: list[str]
    cc: list[str]
    subject: str
    text: str
    html: str | None
    date: datetime
    expires: datetime
    in_reply_to: str = ""
    references: list[str] = field(default_factory=list)
    sender_name: str = ""

    @property
    def message_id(self) -> str:
        return f"<{self.global_id}@{self.sender.rpartition('@')[2]}>"

    def content(self) -> bytes:
        return payloads.canonical_body(
            global_id=self.global_id,
            message_id=self.message_id,
            sender=self.sender,
            to=self.to,
            cc=self.cc,
            subject=self.subject,
            date=self.date,
            text=self.text,
            html=self.html,
            in_reply_to=self.in_reply_to,
            references=self.references,
            sender_name=self.sender_name,
        )

    def notification(self, recipients: list[str] | None = None) -> payloads.Notification:
        content = self.content()
        return payloads.Notification(
            global_id=self.global_id,
            message_id=self.message_id,
            sender=self.sender,
            recipients=list(recipients if recipients is not None else [*self.to, *self.cc]),
            subject=self.subject,
            date=self.date,
            size=len(content),
            digest=payloads.digest(content),
            in_reply_to=self.in_reply_to,
            references=self.references,
            expires=self.expires,
            sender_name=self.sender_name,
        )

    def payload(self, **overrides: Any) -> dict[str, Any]:
        """The notification JSON, with fields replaced (or removed, with the value ``...``)."""
        data = self.notification().to_json()
        for key, value in overrides.items():
            if value is ...:
                data.pop(key, None)
            else:
                data[key] = value
        return data


class PeerMessageFactory(factory.Factory):
    class Meta:
        model = PeerMessage

    global_id = factory.LazyFunction(uuid.uuid4)
    sender = "carol@peer.test"
    to = factory.LazyFunction(lambda: ["alice@alpha.test"])
    cc = factory.LazyFunction(list)
    subject = factory.Sequence(lambda n: f"Hello {n}")
    text = factory.Sequence(lambda n: f"Unique body token {uuid.uuid4().hex} #{n}")
    html = None
    date = factory.LazyFunction(_now)
    expires = factory.LazyAttribute(lambda o: o.date + timedelta(days=30))


class RemoteMessageFactory(factory.django.DjangoModelFactory):
    """A notified remote message, for tests that only need inbox rows."""

    class Meta:
        model = RemoteMessage

    origin_domain = "peer.test"
    global_id = factory.LazyFunction(uuid.uuid4)
    message_id = factory.LazyAttribute(lambda o: f"<{o.global_id}@{o.origin_domain}>")
    sender = "carol@peer.test"
    subject = factory.Sequence(lambda n: f"Remote {n}")
    date = factory.LazyFunction(_now)
    size = 100
    digest = payloads.digest(b"")
    expires_at = factory.LazyAttribute(lambda o: o.date + timedelta(days=30))
    local_domain = "alpha.test"
    state = FetchState.NOTIFIED


class InboxEntryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = InboxEntry

    owner = factory.SubFactory(MailboxFactory)
    remote = factory.SubFactory(RemoteMessageFactory)
    sender = factory.LazyAttribute(lambda o: o.remote.sender)
    subject = factory.LazyAttribute(lambda o: o.remote.subject)
    size = factory.LazyAttribute(lambda o: o.remote.size)
    state = EntryState.NOTIFIED
