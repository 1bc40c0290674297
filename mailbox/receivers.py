"""What the recipient side answers and does for the layers below; loaded by MailboxConfig.ready().

Hooks (pushmail_site/hooks.py) are questions a lower app asks; signals are
events it announces. Both reach this app only through here.
"""

from attachments import selectors as attachment_selectors
from attachments import services as attachment_services
from federation import inbound

from . import selectors, services

inbound.accept_notification.register(services.accept_notification)
inbound.accept_withdrawal.register(services.accept_withdrawal)
attachment_selectors.usage_bytes.register(selectors.usage_bytes)
attachment_services.named_by_received_manifest.register(selectors.manifest_names)
