"""Pushmail settings, read from the environment.

Development defaults need no server: SQLite in ``var/`` and kombu's filesystem
broker. Production sets DATABASE_URL (PostgreSQL), CELERY_BROKER_URL (Redis or
RabbitMQ), CACHE_URL (Redis), SECRET_KEY, DEBUG=0 and ALLOWED_HOSTS.
"""

from __future__ import annotations

import ipaddress
import os
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("PUSHMAIL_DATA_DIR", BASE_DIR / "var"))

DEFAULT_SECRET_KEY = "insecure-development-key-change-me"  # noqa: S105 - refused below unless DEBUG


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def parse_peers(value: str) -> dict[str, str]:
    """Parse ``domain=base_url,domain=base_url`` into a mapping."""
    peers: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        domain, sep, base = item.partition("=")
        if not sep or not domain.strip() or not base.strip():
            raise ImproperlyConfigured(f"PUSHMAIL_PEERS entry {item!r} is not domain=base_url")
        base = base.strip().rstrip("/")
        if urlsplit(base).scheme not in {"http", "https"}:
            raise ImproperlyConfigured(f"PUSHMAIL_PEERS base URL {base!r} must be http or https")
        peers[domain.strip().lower()] = base
    return peers


def parse_networks(name: str, value: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Parse a comma-separated list of CIDRs (``10.0.0.0/8, ::1``); a bad one stops the start, naming it."""
    networks = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ImproperlyConfigured(f"{name}: {item!r} is not an IP network ({exc})") from exc
    return networks


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(value: str, *, debug: bool) -> str:
    """PUSHMAIL_BASE_URL without its trailing slash; refused when it cannot be this instance's public URL.

    With DEBUG off it is required and must be https, except on a loopback address: instances side by
    side on one machine (tools/cluster.py), which their peers list in PUSHMAIL_PEERS anyway.
    """
    base = value.strip().rstrip("/")
    if not base:
        if debug:
            return ""
        raise ImproperlyConfigured(
            "PUSHMAIL_BASE_URL is not set while DEBUG is off; set it to this instance's public https URL, "
            "e.g. https://mail.example.org (discovery publishes it to every peer)."
        )
    try:
        parts = urlsplit(base)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ImproperlyConfigured(f"PUSHMAIL_BASE_URL {base!r} is not a URL") from exc
    if parts.scheme not in {"http", "https"} or not host or parts.query or parts.fragment or "@" in parts.netloc:
        raise ImproperlyConfigured(f"PUSHMAIL_BASE_URL {base!r} must be an http(s) URL with a host, and nothing else")
    if parts.scheme != "https" and not debug and not _is_loopback(host):
        raise ImproperlyConfigured(
            f"PUSHMAIL_BASE_URL {base!r} must use https while DEBUG is off (peers refuse plain http)"
        )
    return base


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = os.environ.get("SECRET_KEY", DEFAULT_SECRET_KEY)
if not DEBUG and SECRET_KEY == DEFAULT_SECRET_KEY:
    raise ImproperlyConfigured(
        "SECRET_KEY is the default development key while DEBUG is off; set SECRET_KEY (or DEBUG=1 for development)."
    )

# Encrypts the domains' private signing keys at rest (federation/keys.py). Keep it out of the
# database and its backups: a dump alone then gives away no key.
PUSHMAIL_KEY_ENCRYPTION_KEY = os.environ.get("PUSHMAIL_KEY_ENCRYPTION_KEY", "")
if not PUSHMAIL_KEY_ENCRYPTION_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "PUSHMAIL_KEY_ENCRYPTION_KEY is not set while DEBUG is off; set it to a long random value, e.g. "
            '`python -c "import secrets; print(secrets.token_urlsafe(32))"` (or DEBUG=1 for development).'
        )
    # Development only: derived from SECRET_KEY (through HKDF, with its own purpose).
    PUSHMAIL_KEY_ENCRYPTION_KEY = SECRET_KEY
elif not DEBUG and (len(PUSHMAIL_KEY_ENCRYPTION_KEY) < 32 or PUSHMAIL_KEY_ENCRYPTION_KEY == SECRET_KEY):
    raise ImproperlyConfigured(
        "PUSHMAIL_KEY_ENCRYPTION_KEY must be at least 32 characters long and differ from SECRET_KEY."
    )

# Previous values, comma-separated, still accepted for reading keys while `manage.py reencryptkeys` rotates them.
PUSHMAIL_KEY_ENCRYPTION_OLD_KEYS = [
    k.strip() for k in os.environ.get("PUSHMAIL_KEY_ENCRYPTION_OLD_KEYS", "").split(",") if k.strip()
]

ALLOWED_HOSTS = [
    h.strip() for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",") if h.strip()
]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "accounts.apps.PushmailAdminConfig",  # django.contrib.admin, guarding secret fields
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",  # allauth's passkey and session lists use naturaltime
    "rest_framework",
    "drf_spectacular",
    "django_htmx",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "allauth.usersessions",
    "csp",
    "accounts",
    "federation",
    "encryption",
    "outbox",
    "mailbox",
    "reputation",
    "attachments",
    "gateway",
    "mailaccess",
    "mailsettings",
    "newsletters",
    "webmail",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "pushmail_site.middleware.LeanFederationPaths",
    "pushmail_site.middleware.JsonApiErrors",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "allauth.usersessions.middleware.UserSessionsMiddleware",
    "csp.middleware.CSPMiddleware",
]

ROOT_URLCONF = "pushmail_site.urls"
WSGI_APPLICATION = "pushmail_site.wsgi.application"
ASGI_APPLICATION = "pushmail_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "webmail.context_processors.mail_shell",
                "webmail.context_processors.undo_notice",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{DATA_DIR / 'pushmail.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        # A kept connection is checked before each request and task reuses it: after the database
        # restarts, the first request of each process reconnects instead of failing with a 500.
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # select_for_update() is a no-op on SQLite: IMMEDIATE transactions take the
    # write lock up front, so a claim (read, check, update) cannot interleave.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000;",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Caches ----------------------------------------------------------------
# "default" is shared by every process (nonces, rate limits); "local" is a
# per-process cache for discovery documents.
CACHE_URL = os.environ.get("CACHE_URL", "")
if CACHE_URL.startswith(("redis://", "rediss://")):
    _shared_cache: dict[str, Any] = {"BACKEND": "pushmail_site.cache.SharedRedisCache", "LOCATION": CACHE_URL}
    # Sessions are read from Redis and written through to the database, which
    # keeps them across a cache flush: one query fewer on every page.
    SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
else:
    _shared_cache = {
        "BACKEND": "django.core.cache.backends.db.DatabaseCache",
        "LOCATION": "pushmail_cache",
        # Nonces must outlive their signature window: never cull live entries
        # (expired ones are still removed as the table is written).
        "OPTIONS": {"MAX_ENTRIES": 10_000_000, "CULL_FREQUENCY": 10},
    }
CACHES = {
    "default": _shared_cache,
    "local": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "pushmail-local"},
}

# --- Accounts --------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_EMAIL_VERIFICATION = "none"
ACCOUNT_ADAPTER = "accounts.adapter.AccountAdapter"
LOGIN_REDIRECT_URL = "/"
ACCOUNT_LOGOUT_REDIRECT_URL = "/accounts/login/"
ACCOUNT_PREVENT_ENUMERATION = True
ACCOUNT_SESSION_REMEMBER = None
# Rate limits are counted in the shared "default" cache, so every process sees them.
ACCOUNT_RATE_LIMITS = {
    "login": "30/m/ip",
    "login_failed": "10/m/ip,5/5m/key",
    "reset_password": "20/m/ip,5/m/key",
    "reset_password_from_key": "20/m/ip",
    "change_password": "5/m/user",
}
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes", "webauthn"]
MFA_PASSKEY_LOGIN_ENABLED = True
MFA_TOTP_ISSUER = os.environ.get("MFA_TOTP_ISSUER", "Pushmail")
# WebAuthn needs a secure context: https, or http://localhost and http://*.localhost, which browsers and
# fido2's origin check both accept (passkeys work on the demo's alpha.localhost with DEBUG off). On, this
# flag makes the server accept a passkey from ANY origin: for development only.
MFA_WEBAUTHN_ALLOW_INSECURE_ORIGIN = env_bool("MFA_WEBAUTHN_ALLOW_INSECURE_ORIGIN", False)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 14 * 86400)
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

# --- Internationalisation, static ---------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / "staticfiles"))
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", DATA_DIR / "media"))
# Attachment bytes go through Django's storage API: the filesystem by default,
# object storage (django-storages) when STORAGE_BACKEND names one, e.g.
# "storages.backends.s3.S3Storage" with its AWS_* settings in the environment.
STORAGES = {
    "default": {"BACKEND": os.environ.get("STORAGE_BACKEND", "django.core.files.storage.FileSystemStorage")},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# WhiteNoise serves static files from the app processes. Production runs
# `manage.py collectstatic` into STATIC_ROOT; until that exists (development,
# the demo, tests) files are served straight from the apps' static folders.
WHITENOISE_USE_FINDERS = not STATIC_ROOT.exists()
if not WHITENOISE_USE_FINDERS:
    # Collected files get content-hashed names, so browsers may cache them for ever.
    STORAGES["staticfiles"] = {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"}
else:
    # ...and WhiteNoise need not warn that STATIC_ROOT is missing.
    warnings.filterwarnings("ignore", message="No directory at", category=UserWarning)

SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_NAME = os.environ.get("SESSION_COOKIE_NAME", "pushmail_session")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# No page may be framed, except the two this instance frames itself: a message's sanitized HTML and an
# attachment preview answer with SAMEORIGIN (webmail/views/content.py, webmail/views/attachments.py).
X_FRAME_OPTIONS = "DENY"

# --- Content-Security-Policy (django-csp) -------------------------------------------
# Every page: only this origin's scripts and styles, no inline script, no plugins.
# Views that serve message HTML or attachments replace it with a stricter sandboxing policy.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "frame-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}
# Request bodies the user API reads into memory (a message with its text and HTML).
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("PUSHMAIL_MAX_API_BODY_BYTES", 12 * 1024 * 1024)
# Every multipart upload is counted as it arrives and stopped at the attachment limits.
FILE_UPLOAD_HANDLERS = [
    "attachments.uploads.LimitedUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]

# --- HTTPS ---------------------------------------------------------------------
# Behind a TLS-terminating proxy (which must set X-Forwarded-Proto and drop a client's own).
BEHIND_TLS_PROXY = env_bool("BEHIND_TLS_PROXY", False)
if BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Plain http requests are redirected to https, except the health check a load balancer may send directly.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", BEHIND_TLS_PROXY and not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
# HSTS (sent on https responses only): browsers then refuse plain http to this host for a year.
SECURE_HSTS_SECONDS = env_int("PUSHMAIL_HSTS_SECONDS", 0 if DEBUG else 365 * 86400)
# Off by default: the mail domain's own host proxies /.well-known/pushmail here, so the header also reaches
# browsers for that host (often the organisation's apex), whose other subdomains this instance cannot vouch
# for. Turn it (and preloading, which needs it) on when every subdomain of every such host serves https.
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("PUSHMAIL_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("PUSHMAIL_HSTS_PRELOAD", False)
# `check --deploy` asks for both; leaving them off is the documented choice above, not an oversight.
SILENCED_SYSTEM_CHECKS = [
    *(["security.W005"] if not SECURE_HSTS_INCLUDE_SUBDOMAINS else []),
    *(["security.W021"] if not SECURE_HSTS_PRELOAD else []),
]

# --- REST API ----------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "pushmail_site.errors.api_exception_handler",
    "DEFAULT_PARSER_CLASSES": ["pushmail_site.parsers.LimitedJSONParser"],
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Pushmail user API",
    "DESCRIPTION": "Send, read and withdraw pull-on-read mail.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
}

# --- Celery -----------------------------------------------------------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = Path(os.environ.get("PUSHMAIL_BROKER_DIR", DATA_DIR / "broker"))
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    # kombu's filesystem transport, writing each message atomically (see broker.py).
    CELERY_BROKER_TRANSPORT = "pushmail_site.broker:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
        "polling_interval": 0.1,
    }
else:
    # An unacknowledged task comes back after this long; the sweep below
    # re-queues due rows far sooner, so this only bounds duplicates.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_DEFAULT_QUEUE = "pushmail"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
PUSHMAIL_SWEEP_SECONDS = float(os.environ.get("PUSHMAIL_SWEEP_SECONDS", "5"))
# The sweep re-queues rows overdue by this much: the broker had its chance, and a
# backlog that is merely being worked through is not queued twice.
PUSHMAIL_SWEEP_GRACE_SECONDS = float(os.environ.get("PUSHMAIL_SWEEP_GRACE_SECONDS", "15"))
# A row queued on the broker is not queued again by the sweep for this long past its due time
# (pushmail_site.jobs): a backlog waits its turn instead of growing with copies. Only a message the
# broker lost (a restart without persistence) waits this long for its retry.
PUSHMAIL_QUEUED_MARK_SECONDS = float(os.environ.get("PUSHMAIL_QUEUED_MARK_SECONDS", "300"))
# How often the reputation sweeps run: scores (reads, replies) and origins' reachability
# (the other reputation settings are with PUSHMAIL_SPAM_REPORTS below).
PUSHMAIL_REPUTATION_SWEEP_SECONDS = float(os.environ.get("PUSHMAIL_REPUTATION_SWEEP_SECONDS", "60"))
PUSHMAIL_REACHABILITY_SWEEP_SECONDS = float(os.environ.get("PUSHMAIL_REACHABILITY_SWEEP_SECONDS", "300"))
_sweep = {"schedule": PUSHMAIL_SWEEP_SECONDS, "options": {"expires": PUSHMAIL_SWEEP_SECONDS * 2}}
CELERY_BEAT_SCHEDULE = {
    "requeue-due-deliveries": {"task": "outbox.requeue_due", **_sweep},
    "requeue-due-fetches": {"task": "mailbox.requeue_due", **_sweep},
    "requeue-due-attachment-fetches": {"task": "mailbox.requeue_due_attachments", **_sweep},
    "send-due-drafts": {"task": "outbox.send_due_drafts", **_sweep},
    "requeue-due-spam-feedback": {"task": "reputation.requeue_due_feedback", **_sweep},
    "requeue-due-content-checks": {"task": "reputation.requeue_due_content_checks", **_sweep},
    "requeue-due-learned-domains": {"task": "federation.requeue_due_learned_domains", **_sweep},
    "requeue-due-auto-sends": {"task": "mailsettings.requeue_due", **_sweep},
    "requeue-due-subscription-requests": {"task": "newsletters.requeue_due", **_sweep},
    "requeue-unfingerprinted": {
        "task": "reputation.requeue_unfingerprinted",
        "schedule": 60.0,
        "options": {"expires": 60.0},
    },
    "mark-fetched-by-all": {"task": "outbox.mark_fetched_by_all", "schedule": 300.0, "options": {"expires": 300.0}},
    "mailbox-housekeeping": {"task": "mailbox.housekeeping", "schedule": 60.0, "options": {"expires": 60.0}},
    "empty-trash": {"task": "mailbox.empty_trash", "schedule": 3600.0, "options": {"expires": 3600.0}},
    "prune-expired-cache": {"task": "federation.prune_expired_cache", "schedule": 600.0, "options": {"expires": 600.0}},
    "purge-expired-evidence": {
        "task": "federation.purge_expired_evidence",
        "schedule": 3600.0,
        "options": {"expires": 3600.0},
    },
    "refresh-reputation-scores": {
        "task": "reputation.refresh_scores",
        "schedule": PUSHMAIL_REPUTATION_SWEEP_SECONDS,
        "options": {"expires": PUSHMAIL_REPUTATION_SWEEP_SECONDS},
    },
    "check-origin-reachability": {
        "task": "reputation.check_reachability",
        "schedule": PUSHMAIL_REACHABILITY_SWEEP_SECONDS,
        "options": {"expires": PUSHMAIL_REACHABILITY_SWEEP_SECONDS},
    },
    "purge-unused-blobs": {
        "task": "attachments.purge_unused_blobs",
        "schedule": 3600.0,
        "options": {"expires": 3600.0},
    },
}

# --- Pushmail -----------------------------------------------------------------
PUSHMAIL_PEERS = parse_peers(os.environ.get("PUSHMAIL_PEERS", ""))
# The base URL other instances use to reach this one; discovery publishes it. Required with DEBUG off;
# in development without it, discovery derives it from the request (federation/discovery.py).
PUSHMAIL_BASE_URL = check_base_url(os.environ.get("PUSHMAIL_BASE_URL", ""), debug=DEBUG)
PUSHMAIL_HTTP_TIMEOUT = float(os.environ.get("PUSHMAIL_HTTP_TIMEOUT", "10"))
# A batch of notifications is given this much longer per notification in it: a busy receiver
# storing a full batch is waited for, not abandoned (and the whole batch sent again) at the
# timeout of a lone request.
PUSHMAIL_BATCH_SECONDS_PER_NOTIFICATION = float(os.environ.get("PUSHMAIL_BATCH_SECONDS_PER_NOTIFICATION", "0.2"))
# The longest this instance keeps a peer's discovery document without asking again (a peer's
# Cache-Control max-age can shorten it).
PUSHMAIL_DISCOVERY_TTL = env_int("PUSHMAIL_DISCOVERY_TTL", 3600)
# The max-age this instance's own discovery document is served with.
PUSHMAIL_DISCOVERY_MAX_AGE = env_int("PUSHMAIL_DISCOVERY_MAX_AGE", 3600)
# How long a request waits for a peer's keys before it is answered 503 "try again later".
PUSHMAIL_KEY_LOOKUP_BUDGET_SECONDS = float(os.environ.get("PUSHMAIL_KEY_LOOKUP_BUDGET_SECONDS", "2"))
PUSHMAIL_MAX_NOTIFICATION_BYTES = env_int("PUSHMAIL_MAX_NOTIFICATION_BYTES", 256 * 1024)
PUSHMAIL_MAX_RECIPIENTS = env_int("PUSHMAIL_MAX_RECIPIENTS", 1000)
# Notification batches (docs/protocol.md §5.4.1): the most notifications, and bytes, in one; 0 takes none.
PUSHMAIL_MAX_BATCH_NOTIFICATIONS = env_int("PUSHMAIL_MAX_BATCH_NOTIFICATIONS", 100)
PUSHMAIL_MAX_BATCH_BYTES = env_int("PUSHMAIL_MAX_BATCH_BYTES", 1024 * 1024)
PUSHMAIL_MAX_BODY_BYTES = env_int("PUSHMAIL_MAX_BODY_BYTES", 25 * 1024 * 1024)
PUSHMAIL_SIGNATURE_WINDOW = timedelta(seconds=env_int("PUSHMAIL_SIGNATURE_WINDOW_SECONDS", 300))
PUSHMAIL_RETENTION = timedelta(days=float(os.environ.get("PUSHMAIL_RETENTION_DAYS", "30")))
PUSHMAIL_DELIVERY_WINDOW = timedelta(seconds=float(os.environ.get("PUSHMAIL_DELIVERY_WINDOW_SECONDS", 5 * 86400)))
# How long discovery of a domain heard of in an SMTP message's Pushmail header is retried.
PUSHMAIL_LEARNING_WINDOW = timedelta(seconds=float(os.environ.get("PUSHMAIL_LEARNING_WINDOW_SECONDS", 86400)))
# Mail settings (mailsettings): a vacation reply or a filter's forward that cannot be sent is
# retried this long; an mbox or .eml import is at most this large.
PUSHMAIL_AUTO_SEND_WINDOW = timedelta(seconds=float(os.environ.get("PUSHMAIL_AUTO_SEND_WINDOW_SECONDS", 86400)))
PUSHMAIL_IMPORT_MAX_BYTES = env_int("PUSHMAIL_IMPORT_MAX_BYTES", 100 * 1024 * 1024)
PUSHMAIL_RETRY_BASE_SECONDS = float(os.environ.get("PUSHMAIL_RETRY_BASE_SECONDS", "2"))
PUSHMAIL_RETRY_CAP_SECONDS = float(os.environ.get("PUSHMAIL_RETRY_CAP_SECONDS", "600"))
# A claimed row whose worker died is taken up again after this long.
PUSHMAIL_CLAIM_SECONDS = float(os.environ.get("PUSHMAIL_CLAIM_SECONDS", "30"))
PUSHMAIL_KEY_GRACE = timedelta(days=float(os.environ.get("PUSHMAIL_KEY_GRACE_DAYS", "7")))
# Size of the RSA keys the domains sign their SMTP mail with (DKIM); 2048 is what receivers expect.
PUSHMAIL_DKIM_KEY_BITS = env_int("PUSHMAIL_DKIM_KEY_BITS", 2048)
# Notifications accepted per origin domain per minute.
PUSHMAIL_ORIGIN_RATE_PER_MINUTE = env_int("PUSHMAIL_ORIGIN_RATE_PER_MINUTE", 6000)
# A remote message is judged spam for the whole instance at this many local reports, or when
# at least two reports make up this share of the local users who opened or reported it.
PUSHMAIL_SPAM_REPORTS = env_int("PUSHMAIL_SPAM_REPORTS", 3)
PUSHMAIL_SPAM_RATIO = float(os.environ.get("PUSHMAIL_SPAM_RATIO", "0.3"))
# ...and never when the reports are fewer than this share of those readers: mail most of its
# readers open without complaint is not hidden from everyone by the few who report it.
PUSHMAIL_SPAM_MIN_SHARE = float(os.environ.get("PUSHMAIL_SPAM_MIN_SHARE", "0.05"))
# A reader may make this many "Report spam" / "Not spam" reports an hour (each message of a selection
# counts); past it, reports are refused (429) until the hour is over: a flood from one account sways nothing.
PUSHMAIL_SPAM_REPORTS_PER_HOUR = env_int("PUSHMAIL_SPAM_REPORTS_PER_HOUR", 120)
# Origin side of spam feedback (docs/protocol.md §5.8): a local sender is paused when the complaints
# received for their mail pass this share of their last PUSHMAIL_COMPLAINT_WINDOW recipients (a
# sender with fewer recipients is counted as if they had that many), or reach
# PUSHMAIL_COMPLAINTS_PER_DAY in 24 hours.
PUSHMAIL_COMPLAINT_RATE = float(os.environ.get("PUSHMAIL_COMPLAINT_RATE", "0.003"))
PUSHMAIL_COMPLAINT_WINDOW = env_int("PUSHMAIL_COMPLAINT_WINDOW", 1000)
PUSHMAIL_COMPLAINTS_PER_DAY = env_int("PUSHMAIL_COMPLAINTS_PER_DAY", 10)
# The content filter (rspamd, README "Content filter (rspamd)"): unset, no body is checked. Checks go to
# RSPAMD_URL (its normal worker, e.g. http://127.0.0.1:11333); lessons from reports and verdicts to its
# controller (default: the same host, port 11334) with RSPAMD_PASSWORD.
RSPAMD_URL = os.environ.get("RSPAMD_URL", "").strip().rstrip("/")
RSPAMD_CONTROLLER_URL = os.environ.get("RSPAMD_CONTROLLER_URL", "").strip().rstrip("/")
RSPAMD_PASSWORD = os.environ.get("RSPAMD_PASSWORD", "")
RSPAMD_TIMEOUT = float(os.environ.get("RSPAMD_TIMEOUT", "10"))
# A score at or over this judges a message spam like a verdict; empty: only rspamd's "reject" action does.
RSPAMD_SPAM_SCORE = float(os.environ["RSPAMD_SPAM_SCORE"]) if os.environ.get("RSPAMD_SPAM_SCORE") else None
# What rspamd's "add header" / "rewrite subject" counts for towards a verdict, in reports.
RSPAMD_SUSPECT_WEIGHT = float(os.environ.get("RSPAMD_SUSPECT_WEIGHT", "0.5"))
# The fuzzy_check flag that a verdict adds a message's hashes under (deploy/rspamd/override.d/fuzzy_check.conf).
RSPAMD_FUZZY_FLAG = env_int("RSPAMD_FUZZY_FLAG", 1)
# How long a check or lesson keeps being retried while rspamd does not answer.
RSPAMD_RETRY_WINDOW_SECONDS = float(os.environ.get("RSPAMD_RETRY_WINDOW_SECONDS", str(2 * 86400)))
# Accepted notifications (and withdrawals) are kept exactly as received, signature and all, this long:
# the evidence an abuse report (ARF) carries. A sweep deletes older ones.
PUSHMAIL_EVIDENCE = timedelta(days=float(os.environ.get("PUSHMAIL_EVIDENCE_DAYS", "90")))
# Reports count by their reporter's trust (reputation.trust): accounts younger than this count less.
PUSHMAIL_SPAM_TRUSTED_AFTER_DAYS = float(os.environ.get("PUSHMAIL_SPAM_TRUSTED_AFTER_DAYS", "7"))
# Notifications alike in origin, sender or subject and size join one campaign within this many days.
PUSHMAIL_CAMPAIGN_WINDOW_DAYS = float(os.environ.get("PUSHMAIL_CAMPAIGN_WINDOW_DAYS", "3"))
# Reputation of senders and origins (reputation/scores.py). An origin with no history may send this
# many notifications per minute; the rate grows as its mail is read and not reported, up to
# PUSHMAIL_ORIGIN_RATE_PER_MINUTE.
PUSHMAIL_NEW_ORIGIN_RATE_PER_MINUTE = env_int("PUSHMAIL_NEW_ORIGIN_RATE_PER_MINUTE", 60)
# A sender or origin whose score falls below this has its new mail filed to Spam on arrival (an
# origin's rate is lowered too); below the second, the origin's notifications are refused. Neither
# happens before this many spam reports against it (the refusal: twice as many), counted since an
# admin last lifted its decisions.
PUSHMAIL_REPUTATION_SPAM_BELOW = float(os.environ.get("PUSHMAIL_REPUTATION_SPAM_BELOW", "0.35"))
PUSHMAIL_REPUTATION_REFUSE_BELOW = float(os.environ.get("PUSHMAIL_REPUTATION_REFUSE_BELOW", "0.2"))
PUSHMAIL_REPUTATION_MIN_REPORTS = env_int("PUSHMAIL_REPUTATION_MIN_REPORTS", 5)
# An origin unreachable this long while holding unopened mail for local users is flagged as gone.
PUSHMAIL_ORIGIN_GONE_AFTER_HOURS = float(os.environ.get("PUSHMAIL_ORIGIN_GONE_AFTER_HOURS", "24"))
# The SMTP gateway (gateway/, `manage.py smtpd`): ordinary email in from any mail server.
PUSHMAIL_SMTP_LISTEN = os.environ.get("PUSHMAIL_SMTP_LISTEN", "127.0.0.1:2525")
# The name the gateway greets with and signs its Authentication-Results with (default: the base URL's host).
PUSHMAIL_SMTP_HOSTNAME = os.environ.get("PUSHMAIL_SMTP_HOSTNAME", "")
# The largest message taken (the SIZE extension announces it; more is refused 552).
PUSHMAIL_SMTP_MAX_BYTES = env_int("PUSHMAIL_SMTP_MAX_BYTES", 35 * 1024 * 1024)
# The gateway measures a mailbox's quota usage at most this often (seconds; it adds what it takes meanwhile).
PUSHMAIL_SMTP_USAGE_SECONDS = float(os.environ.get("PUSHMAIL_SMTP_USAGE_SECONDS", "5"))
# Messages answered 250 are filed in batches of up to this many (gateway/filing.py), one transaction each.
PUSHMAIL_SMTP_FILING_BATCH = env_int("PUSHMAIL_SMTP_FILING_BATCH", 200)
# A spooled message that keeps failing to be filed (a passing error) is retried this long, then given up.
PUSHMAIL_SMTP_FILING_WINDOW = timedelta(seconds=float(os.environ.get("PUSHMAIL_SMTP_FILING_WINDOW_SECONDS", 86400)))
# STARTTLS is offered when both are set (PEM files).
PUSHMAIL_SMTP_TLS_CERT = os.environ.get("PUSHMAIL_SMTP_TLS_CERT", "")
PUSHMAIL_SMTP_TLS_KEY = os.environ.get("PUSHMAIL_SMTP_TLS_KEY", "")
# Per client address: connections open at once (more get 421), and messages a minute (more get 450).
PUSHMAIL_SMTP_MAX_CONNECTIONS_PER_CLIENT = env_int("PUSHMAIL_SMTP_MAX_CONNECTIONS_PER_CLIENT", 20)
PUSHMAIL_SMTP_MESSAGES_PER_MINUTE = env_int("PUSHMAIL_SMTP_MESSAGES_PER_MINUTE", 600)
# Mail to domains without a Pushmail instance goes by SMTP (gateway/outbound.py), DKIM-signed; off: such
# recipients are rejected as "legacy domain".
PUSHMAIL_SMTP_OUTBOUND = env_bool("PUSHMAIL_SMTP_OUTBOUND", True)
# The port of the recipient domains' mail servers (25; tests use a loopback port).
PUSHMAIL_SMTP_OUTBOUND_PORT = env_int("PUSHMAIL_SMTP_OUTBOUND_PORT", 25)
# Send everything through this smarthost instead of the MX: smtp://user:pass@host:587 (STARTTLS, AUTH).
PUSHMAIL_SMTP_RELAY = os.environ.get("PUSHMAIL_SMTP_RELAY", "")
# Recipient domains whose mail servers may be on loopback or private addresses (local test servers only;
# every other domain's MX must resolve to public addresses, like federation peers not in PUSHMAIL_PEERS).
PUSHMAIL_SMTP_ALLOW_PRIVATE_DOMAINS = [
    d.strip().lower() for d in os.environ.get("PUSHMAIL_SMTP_ALLOW_PRIVATE_DOMAINS", "").split(",") if d.strip()
]
PUSHMAIL_SMTP_TIMEOUT = float(os.environ.get("PUSHMAIL_SMTP_TIMEOUT", "60"))
# A list's subscriber at an ordinary mail domain confirms by the link of a mail (double opt-in): the link
# works this long, and the public page sends another to the same address at most this often.
PUSHMAIL_LIST_CONFIRM_SECONDS = env_int("PUSHMAIL_LIST_CONFIRM_SECONDS", 3 * 86400)
PUSHMAIL_LIST_CONFIRM_RESEND_SECONDS = env_int("PUSHMAIL_LIST_CONFIRM_RESEND_SECONDS", 600)
# An issue's copies to one ordinary mail domain are sent this many per attempt (one SMTP session), the
# next batch due at once: an attempt must end within PUSHMAIL_CLAIM_SECONDS, or another worker takes it up.
PUSHMAIL_LIST_SMTP_BATCH = env_int("PUSHMAIL_LIST_SMTP_BATCH", 100)
# The DNS server SPF, DKIM and DMARC ask, as host:port; empty: the system's resolvers.
PUSHMAIL_DNS_RESOLVER = os.environ.get("PUSHMAIL_DNS_RESOLVER", "")
PUSHMAIL_DNS_TIMEOUT = float(os.environ.get("PUSHMAIL_DNS_TIMEOUT", "5"))
# Submission for mail programs (gateway/submission_server.py, `manage.py submission`): SMTP AUTH with an
# app password (an API token). STARTTLS on PUSHMAIL_SUBMISSION_LISTEN (587 in production) and implicit TLS on
# PUSHMAIL_SUBMISSION_TLS_LISTEN (465; empty: not served) with this certificate (default: the gateway's).
PUSHMAIL_SUBMISSION_LISTEN = os.environ.get("PUSHMAIL_SUBMISSION_LISTEN", "127.0.0.1:5870")
PUSHMAIL_SUBMISSION_TLS_LISTEN = os.environ.get("PUSHMAIL_SUBMISSION_TLS_LISTEN", "")
PUSHMAIL_SUBMISSION_TLS_CERT = os.environ.get("PUSHMAIL_SUBMISSION_TLS_CERT", PUSHMAIL_SMTP_TLS_CERT)
PUSHMAIL_SUBMISSION_TLS_KEY = os.environ.get("PUSHMAIL_SUBMISSION_TLS_KEY", PUSHMAIL_SMTP_TLS_KEY)
# The largest message a mail program may submit (SIZE; more is refused 552).
PUSHMAIL_SUBMISSION_MAX_BYTES = env_int("PUSHMAIL_SUBMISSION_MAX_BYTES", 35 * 1024 * 1024)
# Failed logins allowed per client address and per account in PUSHMAIL_SUBMISSION_AUTH_WINDOW seconds;
# past either, AUTH is answered 454 without checking the password until the window ends.
PUSHMAIL_SUBMISSION_AUTH_FAILURES_PER_CLIENT = env_int("PUSHMAIL_SUBMISSION_AUTH_FAILURES_PER_CLIENT", 10)
PUSHMAIL_SUBMISSION_AUTH_FAILURES_PER_ACCOUNT = env_int("PUSHMAIL_SUBMISSION_AUTH_FAILURES_PER_ACCOUNT", 20)
PUSHMAIL_SUBMISSION_AUTH_WINDOW = env_int("PUSHMAIL_SUBMISSION_AUTH_WINDOW", 15 * 60)
# Mail access for mail programs (mailaccess/, `manage.py mailaccess`): POP3 signed in with an app password.
# STLS on PUSHMAIL_POP3_LISTEN (110 in production) and implicit TLS on PUSHMAIL_POP3_TLS_LISTEN (995; empty:
# not served) with this certificate (default: the submission server's). Without a certificate only a program
# on this machine (loopback) may sign in. Failed sign-ins count with submission's (PUSHMAIL_SUBMISSION_AUTH_*).
PUSHMAIL_POP3_LISTEN = os.environ.get("PUSHMAIL_POP3_LISTEN", "127.0.0.1:1110")
PUSHMAIL_POP3_TLS_LISTEN = os.environ.get("PUSHMAIL_POP3_TLS_LISTEN", "")
PUSHMAIL_MAILACCESS_TLS_CERT = os.environ.get("PUSHMAIL_MAILACCESS_TLS_CERT", PUSHMAIL_SUBMISSION_TLS_CERT)
PUSHMAIL_MAILACCESS_TLS_KEY = os.environ.get("PUSHMAIL_MAILACCESS_TLS_KEY", PUSHMAIL_SUBMISSION_TLS_KEY)
# IMAP in the same process: STARTTLS on PUSHMAIL_IMAP_LISTEN (143 in production) and implicit TLS on
# PUSHMAIL_IMAP_TLS_LISTEN (993; empty: not served), with the same certificate and sign-in rules as POP3.
PUSHMAIL_IMAP_LISTEN = os.environ.get("PUSHMAIL_IMAP_LISTEN", "127.0.0.1:1143")
PUSHMAIL_IMAP_TLS_LISTEN = os.environ.get("PUSHMAIL_IMAP_TLS_LISTEN", "")
# How often an IMAP session in IDLE looks for new mail and changes (seconds).
PUSHMAIL_IMAP_IDLE_POLL = float(os.environ.get("PUSHMAIL_IMAP_IDLE_POLL", "2"))
# The largest message an IMAP APPEND may send (octets); a larger literal is refused before it is read.
PUSHMAIL_IMAP_MAX_LITERAL = env_int("PUSHMAIL_IMAP_MAX_LITERAL", PUSHMAIL_SUBMISSION_MAX_BYTES)
# How long a mail program's download of a body still at the sender's waits for the fetch (seconds);
# past it POP3 answers -ERR [SYS/TEMP] and IMAP NO [UNAVAILABLE], and the program tries again later.
PUSHMAIL_LEGACY_FETCH_WAIT = float(os.environ.get("PUSHMAIL_LEGACY_FETCH_WAIT", "20"))
# Threads that run the ORM for the mail-access process (each holds at most one database connection).
PUSHMAIL_MAILACCESS_THREADS = env_int("PUSHMAIL_MAILACCESS_THREADS", 10)
# Webmail: attachment limits and the image proxy.
PUSHMAIL_MAX_ATTACHMENT_BYTES = env_int("PUSHMAIL_MAX_ATTACHMENT_BYTES", 20 * 1024 * 1024)
PUSHMAIL_MAX_MESSAGE_ATTACHMENTS_BYTES = env_int("PUSHMAIL_MAX_MESSAGE_ATTACHMENTS_BYTES", 25 * 1024 * 1024)
PUSHMAIL_TRASH_DAYS = float(os.environ.get("PUSHMAIL_TRASH_DAYS", "30"))
PUSHMAIL_UNDO_SEND_SECONDS = float(os.environ.get("PUSHMAIL_UNDO_SEND_SECONDS", "10"))
# How long archive, delete, move, spam and label changes offer Undo.
PUSHMAIL_UNDO_SECONDS = float(os.environ.get("PUSHMAIL_UNDO_SECONDS", "10"))
PUSHMAIL_IMAGE_PROXY_MAX_BYTES = env_int("PUSHMAIL_IMAGE_PROXY_MAX_BYTES", 5 * 1024 * 1024)
# Hosts the image proxy may reach although they resolve to private addresses (local test servers only).
PUSHMAIL_IMAGE_PROXY_ALLOW_HOSTS = [
    h.strip().lower() for h in os.environ.get("PUSHMAIL_IMAGE_PROXY_ALLOW_HOSTS", "").split(",") if h.strip()
]
# File types refused as attachments: programs and scripts that run when opened
# on common systems (Windows executables and installers, scripts, Java archives,
# shortcuts). Kept as written: attachments.filenames.blocked_extensions is the one
# reader (separated by spaces, commas or semicolons; the dot and the case do not matter).
PUSHMAIL_BLOCKED_ATTACHMENT_EXTENSIONS = os.environ.get(
    "PUSHMAIL_BLOCKED_ATTACHMENT_EXTENSIONS",
    ".exe .com .bat .cmd .scr .pif .cpl .msi .msp .msc .jar .js .jse .vbs .vbe .wsf .wsh .ps1 .hta .lnk .reg",
)
# How long before expiry an unopened message from a known correspondent is fetched.
PUSHMAIL_PREFETCH_BEFORE_EXPIRY = timedelta(days=float(os.environ.get("PUSHMAIL_PREFETCH_DAYS", "3")))

# --- Observability (docs/operations.md) ----------------------------------------------------
# GET /metrics (Prometheus) answers a scraper that sends this bearer token, or one from these
# networks (CIDRs, comma-separated; the address the web server sees). With neither: 404.
PUSHMAIL_METRICS_TOKEN = os.environ.get("PUSHMAIL_METRICS_TOKEN", "").strip()
PUSHMAIL_METRICS_ALLOWED_NETWORKS = parse_networks(
    "PUSHMAIL_METRICS_ALLOWED_NETWORKS", os.environ.get("PUSHMAIL_METRICS_ALLOWED_NETWORKS", "")
)
# Where every process (web workers, Celery pool) keeps its counters for /metrics to add up.
# prometheus-client reads it from the environment; made here so that no process fails to start.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)

# LOG_FORMAT=json: one JSON object a line, with the message id and peer domain of the lines about them.
LOG_FORMAT = os.environ.get("LOG_FORMAT", "text").strip().lower()
if LOG_FORMAT not in {"text", "json"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be text or json, not {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "pushmail_site.logs.ContextFilter"}},
    "formatters": {"json": {"()": "pushmail_site.logs.JsonFormatter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["context"],
            **({"formatter": "json"} if LOG_FORMAT == "json" else {}),
        }
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.request": {"level": "ERROR"}},
}

DATA_DIR.mkdir(parents=True, exist_ok=True)
