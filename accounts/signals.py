"""What the accounts app announces to the apps above it (Django signals; see pushmail_site/hooks.py)."""

from django.dispatch import Signal

#: A hosted domain was created (``domain``), inside the creating transaction: federation gives it its
#: first signing key.
domain_created = Signal()
