"""What the newsletters app answers for the layers below (pushmail_site/hooks.py); loaded by ready()."""

from federation import inbound

from . import services

inbound.accept_subscription.register(services.accept_subscription)
inbound.accept_list_notification.register(services.accept_list_notification)
