"""What the reputation app announces (Django signals)."""

from django.dispatch import Signal

#: A local reader's "Report spam" (``spam=True``) or "Not spam" on a remote message was recorded:
#: ``remote_id`` and ``spam``. Sent inside the report's transaction, after any verdict it reached;
#: receivers queue their own work (the content filter learns from it) rather than do it inline.
report_recorded = Signal()
