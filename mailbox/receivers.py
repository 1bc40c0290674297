"""What the recipient side answers and does for the layers below; loaded by MailboxConfig.ready().

Hooks (pushmail_site/hooks.py) are questions a lower app asks; signals are
events it announces. Both reach this app only through here.
"""

from typing import Any

from django.dispatch import receiver

from accounts.models import User
from attachments import selectors as attachment_selectors
from attachments import services as attachment_services
from federation import inbound
from outbox import sending
from outbox.models import Message
from outbox.signals import message_withdrawn, notice_for_sender, sent_to_local_mailboxes

from . import selectors, services

inbound.accept_notification.register(services.accept_notification)
inbound.accept_notifications.register(services.accept_notifications)
inbound.accept_withdrawal.register(services.accept_withdrawal)
attachment_selectors.usage_bytes.register(selectors.usage_bytes)
attachment_services.named_by_received_manifest.register(selectors.manifest_names)
sending.received_references.register(selectors.received_references)


@receiver(sent_to_local_mailboxes, dispatch_uid="mailbox.deliver_local_entries")
def _deliver_local_entries(*, message: Message, users: list[User], **kwargs: Any) -> None:
    services.deliver_local_entries(message=message, users=users)


@receiver(message_withdrawn, dispatch_uid="mailbox.withdraw_local_entries")
def _withdraw_local_entries(*, message: Message, **kwargs: Any) -> None:
    services.withdraw_local_entries(message=message)


@receiver(notice_for_sender, dispatch_uid="mailbox.post_notice")
def _post_notice(*, owner: User, subject: str, text: str, **kwargs: Any) -> None:
    services.post_notice(owner=owner, subject=subject, text=text)
