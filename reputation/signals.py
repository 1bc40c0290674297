"""What the reputation app announces about reports and verdicts (Django signals).

Sent inside the transaction that records the report or reaches or overturns the
verdict, so what the receivers write commits or rolls back with it. A verdict may
cover one message or several (a campaign): ``remote_ids`` are the
mailbox.RemoteMessage primary keys.
"""

from django.dispatch import Signal

#: The messages ``remote_ids`` were judged spam here (reputation.feedback tells their origins).
verdict_reached = Signal()

#: A domain admin overturned the verdict on ``remote_ids`` (their origins are told to take the complaint back).
verdict_overturned = Signal()
#: A local reader's "Report spam" (``spam=True``) or "Not spam" on a remote message was recorded:
#: ``remote_id`` and ``spam``. Sent inside the report's transaction, after any verdict it reached;
#: receivers queue their own work (the content filter learns from it) rather than do it inline.
report_recorded = Signal()
