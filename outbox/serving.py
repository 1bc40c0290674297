"""What recipient domains may fetch: the body of a message addressed to them, and its attachments, while offered."""

from __future__ import annotations

import uuid

from attachments.models import Blob
from federation.inbound import BodyGone, NoAcceptedRecipient, NotOffered

from .bodies import canonical_content
from .models import AttachmentFetch, BodyFetch, Delivery, Message, MessageAttachment, Recipient, RecipientStatus

__all__ = ["BodyGone", "NoAcceptedRecipient", "NotOffered", "offered_message", "serve_attachment", "serve_body"]


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
    if message.list_address:
        # A list's issue has no recipients here: the domain's subscribers of record are its readers.
        return message
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


def serve_attachment(*, global_id: uuid.UUID, digest: str, to_domain: str) -> Blob:
    """The bytes of an attachment a recipient domain may fetch, with its fetch recorded.

    The access rule is the body's (docs/protocol.md §5.7): ``to_domain`` must
    be a remote recipient domain of the message and ``digest`` in its manifest,
    else NotOffered; a domain whose recipients were all rejected gets
    NoAcceptedRecipient; a withdrawn message, or one past its ``expires``,
    raises BodyGone. Unlike the body, attachments stay available until
    ``expires`` even after every domain fetched the body, so a reader can still
    open one later.
    """
    message = offered_message(global_id=global_id, to_domain=to_domain)
    attachment = (
        MessageAttachment.objects.filter(message=message, blob__sha256=digest.removeprefix("sha-256:"))
        .select_related("blob")
        .order_by("position")
        .first()
    )
    if attachment is None or not digest.startswith("sha-256:"):
        raise NotOffered()
    end = message.offer_end(attachments=True)
    if end is not None:
        raise BodyGone(end.reason)
    AttachmentFetch.objects.create(attachment=attachment, domain=to_domain, bytes=attachment.size)
    return attachment.blob
