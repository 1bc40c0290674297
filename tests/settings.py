"""Settings for the test run: the project's settings with test defaults.

Unit tests use DATABASE_URL when it is set (CI: PostgreSQL) and SQLite
otherwise; Celery gets an in-memory broker so nothing leaves the process.
Two-instance tests start real instances with their own settings (tools/cluster.py).
"""

import os
import tempfile

os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("SECRET_KEY", "test-only-secret-key")
os.environ.setdefault("CELERY_BROKER_URL", "memory://")
os.environ.setdefault("PUSHMAIL_DATA_DIR", os.path.join(tempfile.gettempdir(), "pushmail-unit-tests"))

from pushmail_site.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CACHES["local"] = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "tests-local"}  # noqa: F405
# Fake peers answer at once; a busy test machine must not turn a key lookup into a 503.
PUSHMAIL_KEY_LOOKUP_BUDGET_SECONDS = 30.0
# Unit tests never send mail over the network: a legacy domain's recipients are rejected unless a
# test turns SMTP on (the SMTP tests run their own DNS and mail servers). 1024-bit DKIM keys are
# quicker to make for the many domains tests create, and still verify.
PUSHMAIL_SMTP_OUTBOUND = False
PUSHMAIL_DKIM_KEY_BITS = 1024
