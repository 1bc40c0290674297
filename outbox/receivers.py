"""What the sender side answers for the layers below (pushmail_site/hooks.py); loaded by OutboxConfig.ready()."""

from federation import inbound

from . import services

inbound.serve_body.register(services.serve_body)
inbound.serve_attachment.register(services.serve_attachment)
