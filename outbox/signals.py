"""What the sender side announces to the apps above it (Django signals; the mailbox receives them).

Every one is sent inside the transaction that does the work, so what the
receivers write commits or rolls back with it.
"""

from django.dispatch import Signal

#: ``message`` was sent to mailboxes of this instance: ``users``, the active mailboxes among its
#: recipients. Nothing travels: each gets an inbox entry that points at the stored message.
sent_to_local_mailboxes = Signal()

#: The sender withdrew ``message``: its readers here who had not opened it lose it.
message_withdrawn = Signal()

#: ``owner`` must be told about mail they sent (``subject``, ``text``): a delivery that failed for
#: good, a scheduled send that was refused. It arrives as a notice in their inbox.
notice_for_sender = Signal()
