"""What recipient domains may fetch: the body of a message addressed to them, while it is offered."""

from __future__ import annotations

import uuid

from .bodies import canonical_content
from .models import BodyFetch, Delivery, Message, Recipient, RecipientStatus


class NotOffered(Exception):
    """The message does not exist or is not addressed to the asking domain."""


class NoAcceptedRecipient(Exception):
    """Every recipient of the message at the asking domain was rejected: nobody there may read it."""


class BodyGone(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def offered_message(*, global_id: uuid.UUID, to_domain: str) -> Message:
    """The message a recipient domain asks for, if that domain may fetch it at all.

    Raises NotOffered when the message is unknown or ``to_domain`` is not one of
    its remote recipient domains, and NoAcceptedRecipient when every recipient
    there was rejected (a recipient still pending may yet be accepted, so it counts).
    Withdrawal, retention and "every domain fetched" are the caller's to check.
    """
    message = Message.objects.filter(pk=global_id).first()
    if message is None or not Delivery.objects.filter(message=message, domain=to_domain, local=False).exists():
        raise NotOffered()
    readers = Recipient.objects.filter(message=message, domain=to_domain).exclude(status=RecipientStatus.REJECTED)
    if not readers.exists():
        raise NoAcceptedRecipient()
    return message


def serve_body(*, global_id: uuid.UUID, to_domain: str) -> bytes:
    """Return the canonical body for a recipient domain and record the fetch.

    Raises NotOffered, NoAcceptedRecipient (see :func:`offered_message`) or
    BodyGone once the message is withdrawn, every recipient domain has fetched
    it, or its retention ended. The sender's own copy is not affected by any of these.
    """
    message = offered_message(global_id=global_id, to_domain=to_domain)
    end = message.offer_end()
    if end is not None:
        raise BodyGone(end.reason)
    content = canonical_content(message)
    BodyFetch.objects.create(message=message, domain=to_domain, bytes=len(content))
    return content
