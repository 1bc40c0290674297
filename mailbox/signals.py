"""What the recipient side announces to the apps above it (Django signals; reputation receives them)."""

from django.dispatch import Signal

#: A reader here opened a message from another instance for the first time: ``message`` (the
#: RemoteMessage) and ``reader_id``. Sent while the page is answered: receivers must be quick.
message_read = Signal()
