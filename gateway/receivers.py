"""The hooks the gateway answers for the apps below it; loaded by GatewayConfig.ready()."""

from outbox.smtp import send_by_smtp

from .outbound import send_delivery

# Mail for domains without a Pushmail instance leaves through this gateway, by SMTP.
send_by_smtp.register(send_delivery)
