"""What mail access remembers between sessions."""

from __future__ import annotations

from django.db import models

from mailbox.models import InboxEntry


class DownloadSize(models.Model):
    """The exact octets of an entry's download (CRLF line ends, before dot-stuffing), as last sent.

    POP3 ``LIST`` and ``STAT`` give it once a message has been downloaded, so their sizes are what
    ``RETR`` sends (RFC 1939); before the first download the size comes from the notification.
    """

    entry = models.OneToOneField(InboxEntry, on_delete=models.CASCADE, primary_key=True, related_name="+")
    size = models.PositiveIntegerField()
    updated_at = models.DateTimeField(auto_now=True)
