"""What the newsletters app answers for the layers below (pushmail_site/hooks.py); loaded by ready()."""

from federation import inbound
from gateway import outbound
from outbox import sending

from . import legacy, services

inbound.accept_subscription.register(services.accept_subscription)
inbound.accept_list_notification.register(services.accept_list_notification)
sending.issue_of_list.register(services.issue_from_compose)
outbound.list_links.register(legacy.links_for)
