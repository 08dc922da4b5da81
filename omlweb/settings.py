"""omlweb settings: one module, read from environment variables whose defaults need no server.

Every variable is listed in the README's settings table.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from omlweb.env import (
    broker_transport_options,
    database,
    env_bool,
    env_date,
    env_float,
    env_int,
    env_list,
    env_str,
    secret_key,
)

BASE_DIR = Path(__file__).resolve().parent.parent

DATA_DIR = Path(env_str("OMLWEB_DATA_DIR", str(BASE_DIR / "var"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = secret_key(DATA_DIR)
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "django_htmx",
    "template_partials",
    "axes",
    "scripts_app",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "scripts_app.api.middleware.OmlApiMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "scripts_app.audit_middleware.AuditRequestMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last: it turns a sign-in refused for a lockout into the lockout answer (JSON 429 or a page).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "omlweb.urls"
WSGI_APPLICATION = "omlweb.wsgi.application"

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
                "scripts_app.context_processors.roles",
            ],
        },
    },
]

DATABASES = {"default": database(env_str("DATABASE_URL", ""), DATA_DIR)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
MEDIA_URL = "media/"
# Run images and dataset files. Every web and worker host must see the same folder (docs/deployment.md):
# mount the shared folder here, or name it with OMLWEB_MEDIA_DIR.
MEDIA_ROOT = Path(env_str("OMLWEB_MEDIA_DIR", str(DATA_DIR / "media"))).resolve()
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Password guessing (docs/security.md): django-axes counts failed sign-ins, on the login page, the
# admin and the token endpoint alike, per username *and* client address, so that an attacker can
# lock a user out from their own address only. Past the limit that pair is refused, a correct password
# included, until the cool-off has passed since the last failure.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("OMLWEB_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(seconds=env_int("OMLWEB_LOGIN_COOLOFF_SECONDS", 900, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# The address is REMOTE_ADDR, as everywhere in omlweb: never a client-supplied X-Forwarded-For.
AXES_CLIENT_IP_CALLABLE = "scripts_app.views.base.client_address"
AXES_LOCKOUT_CALLABLE = "scripts_app.views.base.login_locked_out"
AXES_VERBOSE = False
# Failures are recorded (they expire with the cool-off); successes are not: one row per token request
# would grow without bound, and runs already record who ran what from where.
AXES_DISABLE_ACCESS_LOG = True
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

# Security headers: the seed's response headers, and HSTS whenever the request came over HTTPS.
X_FRAME_OPTIONS = "SAMEORIGIN"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_HSTS_SECONDS = env_int("OMLWEB_HSTS_SECONDS", 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
if env_bool("OMLWEB_BEHIND_HTTPS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True

# The REST API. Errors always leave as {"errorMessage", "errorCode"} (scripts_app.api.errors).
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "scripts_app.api.auth.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["scripts_app.api.parsers.StrictJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "scripts_app.api.errors.oml_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "omlweb API",
    "DESCRIPTION": "OML4Py-compatible Embedded Python Execution, plus script management.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    # OpenAPI 3.1, so that nullable fields are plain JSON Schema (["string", "null"]).
    "OAS_VERSION": "3.1.0",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "scripts_app.api.schema.postprocess",
    ],
    "COMPONENT_SPLIT_REQUEST": True,
}

# Oracle retires /py-scripts/v1 on this date (its notice: "DEPRECATED@2026-03-31"). v1 keeps working
# here; its answers carry Deprecation and Sunset headers and its metadata says DEPRECATED. Empty: v1
# is ACTIVE, without those headers.
OMLWEB_V1_SUNSET_DATE = env_date("OMLWEB_V1_SUNSET_DATE", "2026-03-31")

# Largest request body the API reads; larger ones get a JSON 413.
OMLWEB_MAX_BODY_BYTES = env_int("OMLWEB_MAX_BODY_BYTES", 10 * 1024**2, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = OMLWEB_MAX_BODY_BYTES

# OML tokens: 60 minutes each, refreshable up to 8 hours after first issue (as Oracle).
OMLWEB_TOKEN_LIFETIME_SECONDS = env_int("OMLWEB_TOKEN_LIFETIME_SECONDS", 3600, minimum=60)
OMLWEB_TOKEN_MAX_AGE_SECONDS = env_int("OMLWEB_TOKEN_MAX_AGE_SECONDS", 8 * 3600, minimum=60)

# Limits of one run (scripts_app.runner.Limits).
# A sync client waits for its answer as long as the model runs: Oracle documents no sync limit, so the
# default lets a 10-minute model finish. The CPU limit follows the wall clock unless set apart.
OMLWEB_RUN_WALL_SECONDS = env_float("OMLWEB_RUN_WALL_SECONDS", 900.0)
OMLWEB_RUN_CPU_SECONDS = env_int("OMLWEB_RUN_CPU_SECONDS", max(1, int(OMLWEB_RUN_WALL_SECONDS)), minimum=1)
OMLWEB_RUN_MEMORY_MB = env_int("OMLWEB_RUN_MEMORY_MB", 2048, minimum=64)
OMLWEB_RUN_MAX_PROCESSES = env_int("OMLWEB_RUN_MAX_PROCESSES", 64, minimum=1)
OMLWEB_RUN_MAX_FILE_MB = env_int("OMLWEB_RUN_MAX_FILE_MB", 100, minimum=1)
OMLWEB_RUN_MAX_STREAM_KB = env_int("OMLWEB_RUN_MAX_STREAM_KB", 1024, minimum=1)
OMLWEB_RUN_MAX_RESULT_MB = env_int("OMLWEB_RUN_MAX_RESULT_MB", 50, minimum=1)
OMLWEB_RUN_MAX_IMAGE_MB = env_int("OMLWEB_RUN_MAX_IMAGE_MB", 10, minimum=1)
OMLWEB_OUTPUT_SZLIMIT = env_int("OMLWEB_OUTPUT_SZLIMIT", 5000, minimum=1)
OMLWEB_RUN_NETWORK = env_bool("OMLWEB_RUN_NETWORK", False)

# The runner (docs/runner.md): warm templates fork one isolated child per run.
OMLWEB_RUNNER_MODE = env_str("OMLWEB_RUNNER_MODE", "zygote")
OMLWEB_RUNNER_ISOLATION = env_str("OMLWEB_RUNNER_ISOLATION", "auto")
OMLWEB_RUNNER_PRELOAD = env_list("OMLWEB_RUNNER_PRELOAD", ["numpy", "pandas", "matplotlib.pyplot", "pyarrow.parquet"])
OMLWEB_RUNNER_MAX_CONCURRENT = env_int("OMLWEB_RUNNER_MAX_CONCURRENT", 4, minimum=1)
OMLWEB_RUNNER_QUEUE_TIMEOUT = env_float("OMLWEB_RUNNER_QUEUE_TIMEOUT", 5.0)
# Most pieces of one apply run at once, whatever its service level: the levels promise LOW 2,
# MEDIUM 4, HIGH 8; an operator may lower that here (the run's record and the status endpoint say so).
OMLWEB_APPLY_MAX_DEGREE = env_int("OMLWEB_APPLY_MAX_DEGREE", 8, minimum=1)
# An environment's warm template stops after this long without runs (0: never); the default one stays.
OMLWEB_RUNNER_TEMPLATE_IDLE_SECONDS = env_float("OMLWEB_RUNNER_TEMPLATE_IDLE_SECONDS", 600.0)
# Size of each run's own /tmp (its working directory) and /dev/shm, a tmpfs each.
OMLWEB_RUNNER_TMP_MB = env_int("OMLWEB_RUNNER_TMP_MB", 512, minimum=1)
# A memory and pids cgroup per run where the host delegates them; off: rlimits and sized tmpfs only.
OMLWEB_RUNNER_CGROUPS = env_bool("OMLWEB_RUNNER_CGROUPS", True)

# Environments (docs/environments.md): admins define them; each worker host builds them here.
# How long a preload (POST /py-scripts/v2/preload/conda) lasts; Oracle's have lasted 30 and 60 minutes.
OMLWEB_PRELOAD_MINUTES = env_int("OMLWEB_PRELOAD_MINUTES", 60, minimum=1)
OMLWEB_ENVS_DIR = Path(env_str("OMLWEB_ENVS_DIR", str(DATA_DIR / "envs"))).resolve()
# "auto": uv when installed, else venv and pip; "uv" or "pip" to force one.
OMLWEB_ENV_BUILDER = env_str("OMLWEB_ENV_BUILDER", "auto")
# Interpreters offered besides those found on the host (/usr/bin, /usr/local/bin, pyenv, the service's own).
OMLWEB_ENV_PYTHONS = env_list("OMLWEB_ENV_PYTHONS", [])
# What the runner needs in every environment, pinned to the versions the service itself runs.
# pyarrow reads the rows of apply runs (table, row and group apply).
OMLWEB_ENV_RUNNER_PACKAGES = env_list("OMLWEB_ENV_RUNNER_PACKAGES", ["numpy", "pandas", "matplotlib", "pyarrow"])
# Package sources of builds: extra folders or URLs of wheels, and whether to use only those.
OMLWEB_ENV_FIND_LINKS = env_list("OMLWEB_ENV_FIND_LINKS", [])
OMLWEB_ENV_NO_INDEX = env_bool("OMLWEB_ENV_NO_INDEX", False)
OMLWEB_ENV_BUILD_TIMEOUT = env_float("OMLWEB_ENV_BUILD_TIMEOUT", 1800.0)
# Installing from source distributions runs their setup code in the worker, with its rights.
OMLWEB_ENV_SOURCE_BUILDS = env_bool("OMLWEB_ENV_SOURCE_BUILDS", False)
# Package lines that name their own source (`name @ https://...`, `name @ file:///...`) install from
# wherever they point, a file of the worker host included; off, only index requirements are accepted.
OMLWEB_ENV_ALLOW_DIRECT_REFERENCES = env_bool("OMLWEB_ENV_ALLOW_DIRECT_REFERENCES", False)

# Datasets and the input queries of apply runs (docs/datasets.md).
OMLWEB_DATASET_MAX_UPLOAD_MB = env_int("OMLWEB_DATASET_MAX_UPLOAD_MB", 500, minimum=1)
OMLWEB_QUERY_TIMEOUT_SECONDS = env_float("OMLWEB_QUERY_TIMEOUT_SECONDS", 30.0)
OMLWEB_QUERY_MEMORY_MB = env_int("OMLWEB_QUERY_MEMORY_MB", 1024, minimum=64)
OMLWEB_QUERY_THREADS = env_int("OMLWEB_QUERY_THREADS", 2, minimum=1)
OMLWEB_QUERY_MAX_ROWS = env_int("OMLWEB_QUERY_MAX_ROWS", 10_000_000, minimum=1)
# The rows of a query are built in the web or worker process, outside DuckDB's memory limit: bounded here.
OMLWEB_QUERY_MAX_RESULT_MB = env_int("OMLWEB_QUERY_MAX_RESULT_MB", OMLWEB_QUERY_MEMORY_MB, minimum=1)
OMLWEB_APPLY_MAX_PIECES = env_int("OMLWEB_APPLY_MAX_PIECES", 10_000, minimum=1)

# Celery. The Run row is the truth; Celery carries only run ids.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS = broker_transport_options(CELERY_BROKER_URL, DATA_DIR)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_IGNORE_RESULT = True
# At least once: a message is acked only after its task returns. Each worker process is one `--pool solo`
# worker (serve.worker_command says why), supervised by `manage.py serve`, which hands back the run of a
# process that died; the task's claim on the Run row makes a second delivery harmless.
CELERY_TASK_ACKS_LATE = True
# One message reserved per process, so a dying worker takes no waiting job with it.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A solo worker runs its task in its own process and cannot answer AMQP heartbeats meanwhile: RabbitMQ would
# drop the connection of every job longer than two heartbeats. TCP keepalive and the supervisor's probes
# find a dead connection instead.
CELERY_BROKER_HEARTBEAT = 0
# Publishing an async job when the broker is down must fail within a second or two (a 503), not hang.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
CELERY_BROKER_CONNECTION_TIMEOUT = 2.0
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Unset, Celery's Django fix-up closes every database connection before and after each task: a new
# PostgreSQL connection (a backend process) per job, 5 to 50 ms of each job's slot. Set, it leaves them
# be, and tasks.py applies Django's own rule around each task instead, as around a web request
# (CONN_MAX_AGE, CONN_HEALTH_CHECKS; a connection that failed is closed).
CELERY_DB_REUSE_MAX = 1_000_000_000

# Async jobs. Each service level has its own Celery queue and its own workers, so a flood of LOW jobs
# never takes the slots HIGH jobs run in. Concurrency is the worker processes `manage.py serve` starts
# for that level on this machine (0: none here); memory is the limit of one run of that level.
OMLWEB_QUEUE_PREFIX = env_str("OMLWEB_QUEUE_PREFIX", "omlweb")
# Environment builds go to their own queue, which every worker also serves.
OMLWEB_BUILD_QUEUE = f"{OMLWEB_QUEUE_PREFIX}.builds"
CELERY_TASK_ROUTES = {"omlweb.build_environment": {"queue": OMLWEB_BUILD_QUEUE}}
OMLWEB_SERVICE_LEVELS = {
    "LOW": {
        "concurrency": env_int("OMLWEB_LOW_CONCURRENCY", 2, minimum=0),
        "memory_mb": env_int("OMLWEB_LOW_MEMORY_MB", OMLWEB_RUN_MEMORY_MB, minimum=64),
    },
    "MEDIUM": {
        "concurrency": env_int("OMLWEB_MEDIUM_CONCURRENCY", 1, minimum=0),
        "memory_mb": env_int("OMLWEB_MEDIUM_MEMORY_MB", 2 * OMLWEB_RUN_MEMORY_MB, minimum=64),
    },
    "HIGH": {
        "concurrency": env_int("OMLWEB_HIGH_CONCURRENCY", 1, minimum=0),
        "memory_mb": env_int("OMLWEB_HIGH_MEMORY_MB", 4 * OMLWEB_RUN_MEMORY_MB, minimum=64),
    },
}
# Oracle's default async timeout; a request may ask for 1800 to 43200 seconds.
OMLWEB_ASYNC_TIMEOUT_SECONDS = env_int("OMLWEB_ASYNC_TIMEOUT_SECONDS", 1800, minimum=1)
# A worker writes a heartbeat on each run it holds this often, and checks for a cancel request.
OMLWEB_HEARTBEAT_SECONDS = env_float("OMLWEB_HEARTBEAT_SECONDS", 10.0)
OMLWEB_CANCEL_POLL_SECONDS = env_float("OMLWEB_CANCEL_POLL_SECONDS", 0.5)
# Live output: the process running a job writes what it printed since the last time this often
# (only when there is something new); its page polls for it at OMLWEB_LIVE_POLL_SECONDS.
OMLWEB_LIVE_FLUSH_SECONDS = env_float("OMLWEB_LIVE_FLUSH_SECONDS", 0.5)
OMLWEB_LIVE_POLL_SECONDS = env_float("OMLWEB_LIVE_POLL_SECONDS", 1.0)
# The reaper takes back a run whose heartbeat is older than this (its worker is gone), and requeues
# it until it has been tried OMLWEB_RUN_MAX_ATTEMPTS times; then the run fails with a clear message.
OMLWEB_HEARTBEAT_STALE_SECONDS = env_float("OMLWEB_HEARTBEAT_STALE_SECONDS", 60.0)
OMLWEB_RUN_MAX_ATTEMPTS = env_int("OMLWEB_RUN_MAX_ATTEMPTS", 3, minimum=1)
# `manage.py serve` sends each worker process a probe message this often; a worker that is idle and has
# not taken its probe after OMLWEB_WORKER_WEDGED_SECONDS is wedged: it is killed and restarted.
OMLWEB_WORKER_PROBE_SECONDS = env_float("OMLWEB_WORKER_PROBE_SECONDS", 10.0)
OMLWEB_WORKER_WEDGED_SECONDS = env_float("OMLWEB_WORKER_WEDGED_SECONDS", 30.0)
OMLWEB_REAPER_INTERVAL_SECONDS = env_float("OMLWEB_REAPER_INTERVAL_SECONDS", 30.0)
# Schedules (docs/schedules.md): the scheduler looks for due schedules this often (and sleeps less when
# one is due sooner); an occurrence later than the grace is "missed" and its schedule's missed-runs
# policy decides; no schedule may run more often than the minimum interval.
OMLWEB_SCHEDULER_POLL_SECONDS = env_float("OMLWEB_SCHEDULER_POLL_SECONDS", 1.0)
OMLWEB_SCHEDULE_MISSED_GRACE_SECONDS = env_float("OMLWEB_SCHEDULE_MISSED_GRACE_SECONDS", 60.0)
OMLWEB_SCHEDULE_MIN_INTERVAL_SECONDS = env_int("OMLWEB_SCHEDULE_MIN_INTERVAL_SECONDS", 60, minimum=1)
# Scheduler processes `manage.py serve` runs on this host (any number is safe; more fire a burst faster).
OMLWEB_SCHEDULER_PROCESSES = env_int("OMLWEB_SCHEDULER_PROCESSES", 1, minimum=1)
# A queued job whose message may have been lost (published before a crash, or reserved by a killed
# worker) is published again after this long, when its queue holds fewer messages than queued jobs.
OMLWEB_REQUEUE_AFTER_SECONDS = env_float("OMLWEB_REQUEUE_AFTER_SECONDS", 120.0)
# Fair shares (services/shares.py), per user; an admin may override each per group (GroupLimits).
# Sync runs at once, counted across every web process: below the web threads
# (OMLWEB_WEB_WORKERS x OMLWEB_WEB_THREADS = 8 by default), so one user never takes them all.
OMLWEB_USER_MAX_CONCURRENT_RUNS = env_int("OMLWEB_USER_MAX_CONCURRENT_RUNS", 2, minimum=1)
# Async jobs of one user running at once per service level; the rest wait in the queue.
OMLWEB_USER_MAX_RUNNING_JOBS = env_int("OMLWEB_USER_MAX_RUNNING_JOBS", 1, minimum=1)
# Async jobs one user may have queued or running; one more is a 429 at submission.
OMLWEB_USER_MAX_QUEUED_JOBS = env_int("OMLWEB_USER_MAX_QUEUED_JOBS", 100, minimum=1)
# Results, streams and figures one user's runs keep (until retention deletes them), and their datasets.
OMLWEB_USER_QUOTA_MB = env_int("OMLWEB_USER_QUOTA_MB", 1024, minimum=1)
# Finished runs (and their images) are deleted this many days after they finished: 6 months, as Oracle.
OMLWEB_RUN_RETENTION_DAYS = env_int("OMLWEB_RUN_RETENTION_DAYS", 183, minimum=1)
# Metrics and worker health (docs/metrics.md). /metrics answers a scraper that sends
# `Authorization: Bearer <OMLWEB_METRICS_TOKEN>` or connects from an address in OMLWEB_METRICS_ALLOW
# (addresses or networks, comma-separated); with neither set it refuses everyone.
OMLWEB_METRICS_TOKEN = env_str("OMLWEB_METRICS_TOKEN", "")
OMLWEB_METRICS_ALLOW = env_list("OMLWEB_METRICS_ALLOW", [])
# Runs are counted once they finished this long ago: a run recorded late (a slow commit, a worker host's
# clock a little behind) is still counted once.
OMLWEB_METRICS_FOLD_LAG_SECONDS = env_float("OMLWEB_METRICS_FOLD_LAG_SECONDS", 15.0)
# Each worker and web process writes its heartbeat row this often; one silent for
# OMLWEB_WORKER_GONE_SECONDS is shown as gone.
OMLWEB_WORKER_HEARTBEAT_SECONDS = env_float("OMLWEB_WORKER_HEARTBEAT_SECONDS", 10.0)
OMLWEB_WORKER_GONE_SECONDS = env_float("OMLWEB_WORKER_GONE_SECONDS", 35.0)
# The worker health page warns when a queue's oldest job has waited longer than this.
OMLWEB_QUEUE_WAIT_WARN_SECONDS = env_float("OMLWEB_QUEUE_WAIT_WARN_SECONDS", 300.0)
if OMLWEB_HEARTBEAT_STALE_SECONDS < 3 * OMLWEB_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured("OMLWEB_HEARTBEAT_STALE_SECONDS must be at least 3 x OMLWEB_HEARTBEAT_SECONDS")

# Notifications (docs/notifications.md): e-mail through Django's e-mail backend, and signed webhooks,
# sent by the workers from their own queue, never by the run or the web request.
# The address the links in notifications start with (the run's page and API).
OMLWEB_BASE_URL = env_str("OMLWEB_BASE_URL", "http://localhost:8000").rstrip("/")
EMAIL_BACKEND = env_str("OMLWEB_EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env_str("OMLWEB_SMTP_HOST", "localhost")
EMAIL_PORT = env_int("OMLWEB_SMTP_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("OMLWEB_SMTP_USER", "")
EMAIL_HOST_PASSWORD = env_str("OMLWEB_SMTP_PASSWORD", "")
EMAIL_USE_TLS = env_bool("OMLWEB_SMTP_STARTTLS", False)
EMAIL_USE_SSL = env_bool("OMLWEB_SMTP_SSL", False)
EMAIL_TIMEOUT = env_float("OMLWEB_SMTP_TIMEOUT_SECONDS", 10.0)
DEFAULT_FROM_EMAIL = env_str("OMLWEB_EMAIL_FROM", "omlweb@localhost")
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("OMLWEB_SMTP_STARTTLS and OMLWEB_SMTP_SSL exclude each other: set one")
# A failed delivery is tried again after OMLWEB_NOTIFY_BACKOFF_SECONDS, then twice that, four times...
OMLWEB_NOTIFY_MAX_ATTEMPTS = env_int("OMLWEB_NOTIFY_MAX_ATTEMPTS", 5, minimum=1)
OMLWEB_NOTIFY_BACKOFF_SECONDS = env_float("OMLWEB_NOTIFY_BACKOFF_SECONDS", 30.0)
OMLWEB_WEBHOOK_TIMEOUT_SECONDS = env_float("OMLWEB_WEBHOOK_TIMEOUT_SECONDS", 10.0)
# Webhooks to private, loopback, link-local and other non-public addresses are refused (SSRF), except
# to these networks (CIDR, e.g. 10.20.0.0/16, or one address).
OMLWEB_WEBHOOK_ALLOWED_NETWORKS = env_list("OMLWEB_WEBHOOK_ALLOWED_NETWORKS", [])

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("OMLWEB_LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
