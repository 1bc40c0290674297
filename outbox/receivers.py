"""What the sender side answers for the layers below (pushmail_site/hooks.py); loaded by OutboxConfig.ready()."""

from accounts import services as account_services
from federation import inbound

from . import complaints, services

account_services.send_mail.register(services.send_message)
inbound.serve_body.register(services.serve_body)
inbound.serve_attachment.register(services.serve_attachment)
inbound.accept_report.register(complaints.accept_report)
