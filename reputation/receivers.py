"""What reputation answers for the layers below (pushmail_site/hooks.py); loaded by ReputationConfig.ready()."""

from federation import inbound

from . import services

inbound.check_origin.register(services.check_origin)
