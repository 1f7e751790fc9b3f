"""vmseal settings. Defaults: SQLite + django-q2's ORM broker, data under ./var.

Environment:
  VMSEAL_DATA_DIR        where the database, the secret key, the app's SSH key, per-host SSH files and SSH
                         control sockets live (./var); made 0700, its files 0600 (vmseal/private.py)
  VMSEAL_STATIC_ROOT     where collectstatic puts the public static files (./static), outside the data dir
  VMSEAL_SECRET_KEY      Django secret key (default: generated once into the data dir)
  VMSEAL_DEBUG           1 to enable DEBUG
  VMSEAL_ALLOWED_HOSTS   comma-separated (default: localhost,127.0.0.1)
  VMSEAL_SSH_KEY         the app's SSH private key (default: <data dir>/ssh/id_ed25519, made on first use)
  VMSEAL_DB_ENGINE       sqlite (default) or postgresql; then VMSEAL_DB_NAME/USER/PASSWORD/HOST/PORT
  VMSEAL_DB_NAME         for sqlite: the database file (default <data dir>/vmseal.sqlite3)
  VMSEAL_DB_CONN_MAX_AGE seconds a database connection is kept for the next request (default 60; 0: one per request)
  VMSEAL_DB_CONN_HEALTH_CHECKS  0: no SELECT 1 on a kept PostgreSQL connection before a request uses it (default 1)
  VMSEAL_REDIS_URL       use django-q2's Redis broker instead of the ORM broker (and Redis as Django's cache)
  VMSEAL_TEMPLATE_CREATE_RATE  template creations per user (default 30/min; DRF rate syntax)
  VMSEAL_HOST_VMS_RATE   GET /api/hosts/<id>/vms/ per user (default 30/min: each opens libvirt on the host)
  VMSEAL_Q_WORKERS       qcluster workers (default 4: work is mostly waiting on hosts)
  VMSEAL_MAX_PARALLEL_SEALS  virt-sysprep runs at once per host (default 2; Host.max_parallel_seals overrides)
  VMSEAL_HOST_SCAN_MINUTES  minutes between scans of every host's pool (default 10; read when migrating; 0: none)
  VMSEAL_WEBHOOK_TRIES   tries per webhook delivery before it is given up (default 6)
  VMSEAL_WEBHOOK_BACKOFF seconds before the first retry, doubled for each next one (default 60)
  VMSEAL_WEBHOOK_TIMEOUT seconds a receiver has to answer one POST (default 10)
  VMSEAL_METRICS_ALLOW   comma-separated client addresses/networks that may GET /metrics without a token
                         (default: none; a token of a user with metrics.view_metrics always may)
  VMSEAL_METRICS_DIR     the web workers' counter files (prometheus_client multiprocess mode; default
                         <data dir>/metrics, made 0700, emptied when gunicorn starts: vmseal/gunicorn_conf.py)
"""

import ipaddress
import os
import secrets
from pathlib import Path

from metrics import multiproc
from vmseal.private import private_dir

BASE_DIR = Path(__file__).resolve().parent.parent
# Private to the user vmseal runs as (0700), or refused if another user owns it or can write to it.
DATA_DIR = private_dir(Path(os.environ.get("VMSEAL_DATA_DIR", BASE_DIR / "var")).resolve(), parents=True)


def _secret_key() -> str:
    if os.environ.get("VMSEAL_SECRET_KEY"):
        return os.environ["VMSEAL_SECRET_KEY"]
    path = DATA_DIR / "secret_key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = os.environ.get("VMSEAL_DEBUG") == "1"
ALLOWED_HOSTS = os.environ.get("VMSEAL_ALLOWED_HOSTS", "localhost,127.0.0.1,testserver").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_q",
    "audit",  # before the apps whose commands it records (audit/management/commands run instead)
    "hostjobs",
    "volumes",
    "templates",
    "sealing",
    "webhooks",
    "vms",
    "metrics",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "audit.middleware.AuditMiddleware",  # X-Request-ID, who acts, and the API's audit events
]

ROOT_URLCONF = "vmseal.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
WSGI_APPLICATION = "vmseal.wsgi.application"

if os.environ.get("VMSEAL_DB_ENGINE", "sqlite") == "postgresql":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("VMSEAL_DB_NAME", "vmseal"),
            "USER": os.environ.get("VMSEAL_DB_USER", "vmseal"),
            "PASSWORD": os.environ.get("VMSEAL_DB_PASSWORD", ""),
            "HOST": os.environ.get("VMSEAL_DB_HOST", "127.0.0.1"),
            "PORT": os.environ.get("VMSEAL_DB_PORT", "5432"),
            "CONN_MAX_AGE": int(os.environ.get("VMSEAL_DB_CONN_MAX_AGE", "60")),
            # a kept connection is checked (SELECT 1) before a request's first query: a restarted PostgreSQL
            # costs no failed request; VMSEAL_DB_CONN_HEALTH_CHECKS=0 saves that round trip per request
            "CONN_HEALTH_CHECKS": os.environ.get("VMSEAL_DB_CONN_HEALTH_CHECKS", "1") != "0",
            # one test database per test session (app processes started by the tests get its name)
            "TEST": {"NAME": f"test_vmseal_{os.getpid()}"},
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "vmseal.private_sqlite3",  # Django's, with the file (and so -wal/-shm) made 0600
            "NAME": os.environ.get("VMSEAL_DB_NAME", str(DATA_DIR / "vmseal.sqlite3")),
            # kept open across requests, as PostgreSQL's: opening one (and its PRAGMAs) cost a third of a
            # list page's time
            "CONN_MAX_AGE": int(os.environ.get("VMSEAL_DB_CONN_MAX_AGE", "60")),
            # The web process and the qcluster workers share the file: WAL, a busy timeout and
            # IMMEDIATE transactions keep concurrent writers from failing with "database is locked".
            "OPTIONS": {
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            # A file, not :memory:, so the end-to-end tests' qcluster sees the test database; one per
            # test session, so two sessions never share (or delete) each other's.
            "TEST": {"NAME": os.environ.get("VMSEAL_TEST_DB_NAME", str(DATA_DIR / f"test-{os.getpid()}.sqlite3"))},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
# Public content served by the reverse proxy: not in the private data directory (which the proxy's user
# cannot enter), and nothing secret is ever collected into it.
STATIC_ROOT = Path(os.environ.get("VMSEAL_STATIC_ROOT", BASE_DIR / "static"))

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # Authenticated users read; writes need the model's add/change/delete permission.
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.DjangoModelPermissions"],
    "DEFAULT_PAGINATION_CLASS": "vmseal.pagination.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": [
        "vmseal.filters.FilterBackend",
        "rest_framework.filters.OrderingFilter",
        "rest_framework.filters.SearchFilter",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # Template creation and listing a host's VMs are throttled per user (each one works on a host);
    # see TemplateViewSet and HostViewSet.vms.
    "DEFAULT_THROTTLE_RATES": {"template_create": os.environ.get("VMSEAL_TEMPLATE_CREATE_RATE", "30/min"),
                               "host_vms": os.environ.get("VMSEAL_HOST_VMS_RATE", "30/min")},
}
SPECTACULAR_SETTINGS = {
    "TITLE": "vmseal API",
    "DESCRIPTION": "Sealed VM templates for libvirt hosts.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",  # served by us: no CDN
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "JobStatusEnum": "hostjobs.models.JobStatus",
        "TemplateStatusEnum": "templates.models.TemplateStatus",
    },
}

Q_CLUSTER = {
    "name": "vmseal",
    "workers": int(os.environ.get("VMSEAL_Q_WORKERS", "4")),
    # A flow's own host commands are bounded (see VMSEAL_*_TIMEOUT); retry must exceed timeout or
    # django-q2 hands a still-running task to a second worker.
    "timeout": 3600,
    "retry": 3700,
    "max_attempts": 3,
    "ack_failures": True,
    "catch_up": False,
    "poll": 0.2,
    "label": "Tasks",
}
if os.environ.get("VMSEAL_REDIS_URL"):
    Q_CLUSTER["redis"] = os.environ["VMSEAL_REDIS_URL"]
    # shared by every web worker, so a throttle counts a user's requests across them
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                          "LOCATION": os.environ["VMSEAL_REDIS_URL"], "KEY_PREFIX": "vmseal"}}
else:
    Q_CLUSTER["orm"] = "default"

# vmseal
VMSEAL_SSH_KEY = Path(os.environ.get("VMSEAL_SSH_KEY", DATA_DIR / "ssh" / "id_ed25519"))
VMSEAL_SSH_CONNECT_TIMEOUT = int(os.environ.get("VMSEAL_SSH_CONNECT_TIMEOUT", "5"))
VMSEAL_COPY_TIMEOUT = int(os.environ.get("VMSEAL_COPY_TIMEOUT", "1800"))
VMSEAL_SEAL_TIMEOUT = int(os.environ.get("VMSEAL_SEAL_TIMEOUT", "1800"))
VMSEAL_STORAGE_TIMEOUT = int(os.environ.get("VMSEAL_STORAGE_TIMEOUT", "120"))  # update_volume, delete
# how long a flow retries a host it cannot reach (libvirt calls) before the step fails, seconds
VMSEAL_HOST_RETRY = int(os.environ.get("VMSEAL_HOST_RETRY", "120"))
# virt-sysprep runs at once per host, unless the Host says otherwise (Host.max_parallel_seals)
VMSEAL_MAX_PARALLEL_SEALS = int(os.environ.get("VMSEAL_MAX_PARALLEL_SEALS", "2"))
# Minutes between scans of every host's pool against the database (sealing.tasks.scan_hosts): the
# schedule the migration creates; 0 creates none (and the task then does nothing).
VMSEAL_HOST_SCAN_MINUTES = int(os.environ.get("VMSEAL_HOST_SCAN_MINUTES", "10"))
# Where hosts push job and libvirt events, e.g. http://10.0.0.5:8000/api/callbacks/ (a Host may override).
# Empty: push is off and jobs complete by polling.
VMSEAL_CALLBACK_URL = os.environ.get("VMSEAL_CALLBACK_URL", "")

# Event webhooks (webhooks.tasks): tries per delivery, the backoff's base (try n+1 comes
# BACKOFF * 2**(n-1) seconds after try n) and each POST's timeout, seconds.
VMSEAL_WEBHOOK_TRIES = int(os.environ.get("VMSEAL_WEBHOOK_TRIES", "6"))
VMSEAL_WEBHOOK_BACKOFF = float(os.environ.get("VMSEAL_WEBHOOK_BACKOFF", "60"))
VMSEAL_WEBHOOK_TIMEOUT = float(os.environ.get("VMSEAL_WEBHOOK_TIMEOUT", "10"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"vmseal": {"handlers": ["console"], "level": os.environ.get("VMSEAL_LOG_LEVEL", "INFO")}},
}

# GET /metrics (metrics/): who may read it without a token, and where the web workers' counters are kept.
# PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client is first imported (here, before any app).
VMSEAL_METRICS_ALLOW = [n.strip() for n in os.environ.get("VMSEAL_METRICS_ALLOW", "").split(",") if n.strip()]
for _net in VMSEAL_METRICS_ALLOW:
    ipaddress.ip_network(_net, strict=False)  # a typo refuses to start, never silently allows nobody/anybody
VMSEAL_METRICS_DIR = private_dir(multiproc.directory(), parents=True)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(VMSEAL_METRICS_DIR)
