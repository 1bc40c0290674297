"""What the newsletters app answers for the layers below (pushmail_site/hooks.py); loaded by ready()."""

from federation import inbound
from gateway import outbound
from gateway import services as gateway
from outbox import sending

from . import legacy, services

inbound.accept_subscription.register(services.accept_subscription)
inbound.accept_list_notification.register(services.accept_list_notification)
sending.issue_of_list.register(services.issue_from_compose)
outbound.list_links.register(legacy.links_for)
gateway.is_list_unsubscribe_address.register(legacy.is_unsubscribe_address)
gateway.unsubscribe_by_mail.register(legacy.unsubscribe_by_mail)
