"""What the reputation app announces about verdicts (Django signals).

Sent inside the transaction that reaches or overturns the verdict, so what the
receivers write commits or rolls back with it. A verdict may cover one message
or several (a campaign): ``remote_ids`` are the mailbox.RemoteMessage primary keys.
"""

from django.dispatch import Signal

#: The messages ``remote_ids`` were judged spam here (reputation.feedback tells their origins).
verdict_reached = Signal()

#: A domain admin overturned the verdict on ``remote_ids`` (their origins are told to take the complaint back).
verdict_overturned = Signal()
