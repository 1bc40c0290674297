"""The Celery app. Workers wake up on broker messages; the database holds the truth."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pushmail_site.settings")

app = Celery("pushmail_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
