"""What the recipient side announces to the apps above it (Django signals; reputation receives them)."""

from django.dispatch import Signal

#: A reader here opened messages from another instance for the first time: ``messages`` (the
#: RemoteMessages, one or a conversation's worth: one signal per open) and ``reader_id``. Sent
#: while the page is answered: receivers must be quick, and should not cost a query per message.
message_read = Signal()

#: A remote message's body was fetched and verified here: ``remote_id``. Sent once the fetch has
#: committed; receivers queue their own work (fingerprints, content checks) rather than do it inline.
body_fetched = Signal()

#: The origin did not hand over a body this time (unreachable, 5xx, timeout): ``remote_id``, ``origin``
#: and ``error``. Sent once the failed attempt has committed; the fetch itself is retried as usual.
body_unavailable = Signal()

#: A received attachment's fetch ended (fetched and verified, or given up for good): ``remote_id``
#: and ``position``. Sent once its row has committed; receivers queue their own work.
attachment_settled = Signal()

#: New mail reached inboxes here: the entries of ``owner_ids`` just created for one message, either
#: ``remote_id`` (a notification, a message received by SMTP) or ``local_id`` (mail from this
#: instance); never imported mail nor notices. Sent inside the transaction that created them, so
#: what receivers write (filters' moves, replies' job rows) commits with them. A notification's also
#: gives ``owners``, the owners' rows as read on arrival (with ``has_mail_rules``), so that receivers
#: need not read them again.
mail_arrived = Signal()

#: Several messages reached inboxes here together (a batch of notifications): ``arrivals``, a list of
#: ``(remote_id, owner_ids)``, each what one ``mail_arrived`` would say. Sent in place of those, inside
#: the transaction, so that receivers can ask their questions once for the batch; ``owners`` as for
#: ``mail_arrived``.
mails_arrived = Signal()

#: A reader left a list: ``list_address`` (the list, the sender of its issues) and ``reader`` (their
#: address). Sent by the reader's own instance when they unsubscribe (at once, before the list
#: acknowledges), and by the list's instance for a reader at an ordinary mail domain who used the
#: one-click link (they have no instance of their own to count it). Sent inside the transaction;
#: reputation counts it against the list and its domain.
list_left = Signal()
