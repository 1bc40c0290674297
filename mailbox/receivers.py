"""What the recipient side answers and does for the layers below; loaded by MailboxConfig.ready().

Hooks (pushmail_site/hooks.py) are questions a lower app asks; signals are
events it announces. Both reach this app only through here.
"""

from federation import inbound

from . import services

inbound.accept_notification.register(services.accept_notification)
inbound.accept_withdrawal.register(services.accept_withdrawal)
