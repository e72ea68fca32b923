"""FactLoop settings: the only module that reads the process environment.

Every variable is listed, with its default, in docs/settings.md and in
deploy/.env.example. A missing or malformed value stops start-up with a message that
names the variable (webapp.env.ConfigError).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from contract.comparison import parse_gate
from contract.launch import LAUNCHERS
from contract.methods import DEFAULT_GATE
from contract.protocols import FACTLOOP, PROTOCOLS, check_gate
from webapp.env import ConfigError, Env, is_placeholder, parse_broker_url, parse_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
env = Env(os.environ)

# Where the zero-setup default keeps its state: the SQLite file, the embedded broker's
# messages, uploaded media and model versions.
VAR_DIR = env.path("FACTLOOP_VAR_DIR", BASE_DIR / "var", base=BASE_DIR)

DEBUG = env.flag("DEBUG", False)

if DEBUG:
    # Only for a local demo or development; start-up refuses a missing key otherwise.
    SECRET_KEY = env.text("SECRET_KEY", "factloop-insecure-debug-key-do-not-deploy")
else:
    SECRET_KEY = env.text("SECRET_KEY", required=True)
    if len(SECRET_KEY) < 32:
        raise ConfigError("SECRET_KEY", "must be at least 32 characters long when DEBUG is off")
    # The placeholders of deploy/ and of DEBUG: public, so never a production key.
    if is_placeholder(SECRET_KEY):
        raise ConfigError("SECRET_KEY", "is an example value from deploy/; set a long random one")

ALLOWED_HOSTS = env.csv("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
if not DEBUG and not ALLOWED_HOSTS:
    raise ConfigError("ALLOWED_HOSTS", "is required when DEBUG is off (comma-separated host names)")
CSRF_TRUSTED_ORIGINS = env.csv("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "annotation.apps.FactLoopAdminConfig",  # Django's admin, the loop dashboard its index
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's and Redoc's files, served from here (no CDN)
    "axes",
    "annotation",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "webapp.middleware.RejectNulMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # After authentication (who sends a body decides its cap); runs before any view or
    # CsrfViewMiddleware's process_view reads the body.
    "webapp.middleware.BodyLimitMiddleware",
    "annotation.rules.audit.AuditActorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "webapp.middleware.ContentSecurityPolicyMiddleware",
    # Last, as django-axes asks: it turns a locked-out sign-in into its 429 answer.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "webapp.urls"
WSGI_APPLICATION = "webapp.wsgi.application"
ASGI_APPLICATION = "webapp.asgi.application"

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
                "annotation.rules.roles.role_context",
            ],
        },
    },
]

# VAR_DIR is absolute, so the default reads sqlite:////abs/path (four slashes).
DATABASES = {
    "default": parse_database_url(
        "DATABASE_URL", env.text("DATABASE_URL", f"sqlite:///{VAR_DIR / 'factloop.sqlite3'}"), base=BASE_DIR
    )
}
if not DEBUG and DATABASES["default"].get("PASSWORD") and is_placeholder(DATABASES["default"]["PASSWORD"]):
    raise ConfigError("DATABASE_URL", "its password is an example value from deploy/; set the database's real one")
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # SQLite creates the file but not its folder (var/ on a fresh clone).
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Sign-in throttling (django-axes) for the sign-in page, the admin's and the API token
# endpoint alike: after FACTLOOP_LOGIN_FAILURE_LIMIT failures for one user name from one
# address, that pair is refused (429) for FACTLOOP_LOGIN_COOLOFF_MINUTES.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
FACTLOOP_LOGIN_FAILURE_LIMIT = env.integer("FACTLOOP_LOGIN_FAILURE_LIMIT", 10, minimum=1, maximum=1000)
FACTLOOP_LOGIN_COOLOFF_MINUTES = env.integer("FACTLOOP_LOGIN_COOLOFF_MINUTES", 15, minimum=1, maximum=7 * 24 * 60)
AXES_FAILURE_LIMIT = FACTLOOP_LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(minutes=FACTLOOP_LOGIN_COOLOFF_MINUTES)
# Keyed by (name, address), so a guesser elsewhere never locks the account out for its owner,
# and by address alone, so one address spraying a password over many names is stopped too.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"], "ip_address"]
# The client's address, for the lockout and the API's throttles alike: REMOTE_ADDR, or behind
# FACTLOOP_TRUSTED_PROXIES proxies (an ingress, a load balancer) the address the outermost
# of them saw, from X-Forwarded-For. Unset behind a proxy, every client shares its address.
FACTLOOP_TRUSTED_PROXIES = env.integer("FACTLOOP_TRUSTED_PROXIES", 0, minimum=0, maximum=16)
AXES_CLIENT_IP_CALLABLE = "annotation.web.authentication.client_address"
AXES_RESET_ON_SUCCESS = True
AXES_HTTP_RESPONSE_CODE = 429
AXES_LOCKOUT_CALLABLE = "annotation.web.authentication.lockout_response"
AXES_VERBOSE = False
# API tokens expire this many hours after they are issued (signing in again issues a new
# one); a password change or a deactivation deletes them at once.
FACTLOOP_TOKEN_HOURS = env.integer("FACTLOOP_TOKEN_HOURS", 168, minimum=1, maximum=24 * 366)

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.text("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
# Serve straight from the apps' static folders while developing, without collectstatic.
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG
if DEBUG:
    STORAGES["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}

MEDIA_ROOT = env.path("MEDIA_ROOT", VAR_DIR / "media", base=BASE_DIR)
MEDIA_URL = "media/"

# Model versions (base models, LoRA adapters, manifests): models.registry works under it.
FACTLOOP_MODEL_DIR = env.path("FACTLOOP_MODEL_DIR", VAR_DIR / "models", base=BASE_DIR)

# Serving: the vLLM server FactLoop asks for candidates (OpenAI-compatible API), the
# interpreter of its separate venv (to start one for the demo and tests), and how many
# requests a generation job keeps in flight.
FACTLOOP_VLLM_URL = env.text("FACTLOOP_VLLM_URL", "http://127.0.0.1:8100")
# Several replicas of the policy (models/replicas.py): comma-separated URLs; requests spread
# over the healthy ones and each round's adapter is loaded on every one. Empty: FACTLOOP_VLLM_URL.
FACTLOOP_VLLM_URLS = env.csv("FACTLOOP_VLLM_URLS", [])
FACTLOOP_SERVING_PYTHON = env.path("FACTLOOP_SERVING_PYTHON", BASE_DIR / ".venv-serving/bin/python", base=BASE_DIR)
FACTLOOP_GENERATE_CONCURRENCY = env.integer("FACTLOOP_GENERATE_CONCURRENCY", 8, minimum=1, maximum=256)
# AI feedback (annotation/loop/ai_labels.py): a chat model served on the vLLM server that splits
# candidates into claims, as RLAIF-V does; empty: the rule-based splitter.
FACTLOOP_AI_SPLITTER = env.text("FACTLOOP_AI_SPLITTER", "")

# Annotation: how long an annotator holds a task before it goes back to the pool.
FACTLOOP_LEASE_MINUTES = env.integer("FACTLOOP_LEASE_MINUTES", 15, minimum=1, maximum=24 * 60)

# Quality control (annotation.labeling.quality): an annotator is flagged when their gold accuracy or
# agreement with peers, each over at least FACTLOOP_QC_MIN_ITEMS labels, is under these.
FACTLOOP_QC_MIN_GOLD_ACCURACY = env.fraction("FACTLOOP_QC_MIN_GOLD_ACCURACY", 0.8)
FACTLOOP_QC_MIN_AGREEMENT = env.fraction("FACTLOOP_QC_MIN_AGREEMENT", 0.6)
FACTLOOP_QC_MIN_ITEMS = env.integer("FACTLOOP_QC_MIN_ITEMS", 5, minimum=1)

# Where exports started from the admin are written (one folder per export job).
FACTLOOP_EXPORT_DIR = env.path("FACTLOOP_EXPORT_DIR", VAR_DIR / "exports", base=BASE_DIR)

# Training (manage.py train_round): each run's files (export, checkpoints, evaluation) go in
# a folder under FACTLOOP_TRAIN_DIR; a new version is deployed only if it is not worse than
# the serving one on any of FACTLOOP_GATE_METRICS ("metric[:margin],...", each beyond its margin,
# FACTLOOP_GATE_MARGIN where none is given, and the paired bootstrap interval), both measured
# through the server on the first FACTLOOP_EVAL_ITEMS held-out prompts.
FACTLOOP_TRAIN_DIR = env.path("FACTLOOP_TRAIN_DIR", VAR_DIR / "training", base=BASE_DIR)
if os.environ.get("FACTLOOP_GATE_METRIC"):  # the single-metric setting it replaced: refused, not ignored
    raise ConfigError("FACTLOOP_GATE_METRIC", "is now FACTLOOP_GATE_METRICS, a list (default chair_i,coverage)")
FACTLOOP_GATE_METRICS = env.text("FACTLOOP_GATE_METRICS", DEFAULT_GATE)
FACTLOOP_GATE_MARGIN = env.number("FACTLOOP_GATE_MARGIN", 0.0, minimum=-1.0, maximum=1.0)
try:
    parse_gate(FACTLOOP_GATE_METRICS, margin=FACTLOOP_GATE_MARGIN)
except ValueError as error:
    raise ConfigError("FACTLOOP_GATE_METRICS", str(error)) from None
# What both of the gate's evaluations ask (contract/protocols.py): FactLoop's own, or a
# published protocol (pope, object_halbench); it must measure every gate metric.
FACTLOOP_GATE_PROTOCOL = env.choice("FACTLOOP_GATE_PROTOCOL", FACTLOOP, tuple(PROTOCOLS))
try:
    check_gate(FACTLOOP_GATE_PROTOCOL, [metric for metric, _ in parse_gate(FACTLOOP_GATE_METRICS)])
except ValueError as error:
    raise ConfigError("FACTLOOP_GATE_PROTOCOL", str(error)) from None
FACTLOOP_EVAL_ITEMS = env.integer("FACTLOOP_EVAL_ITEMS", 500, minimum=1, maximum=1_000_000)
# How train_round's trainers run unless a run says otherwise (contract/launch.py): one
# process ("none"), or `accelerate launch` ("accelerate") with FACTLOOP_TRAIN_PROCESSES
# processes and FACTLOOP_ACCELERATE_CONFIG (a file, or ddp, fsdp2, zero2, zero3 from
# deploy/accelerate/; ddp when empty).
FACTLOOP_TRAIN_LAUNCHER = env.choice("FACTLOOP_TRAIN_LAUNCHER", "none", LAUNCHERS)
FACTLOOP_ACCELERATE_CONFIG = env.text("FACTLOOP_ACCELERATE_CONFIG", "")
FACTLOOP_TRAIN_PROCESSES = env.integer("FACTLOOP_TRAIN_PROCESSES", 1, minimum=1, maximum=1024)

# Input limits (annotation/rules/limits.py): imports refuse a row over them, generation cuts a
# candidate to the response limit, and an annotator's correction may be up to twice it.
FACTLOOP_MAX_PROMPT_CHARS = env.integer("FACTLOOP_MAX_PROMPT_CHARS", 8000, minimum=16, maximum=10_000_000)
FACTLOOP_MAX_CONTEXT_CHARS = env.integer("FACTLOOP_MAX_CONTEXT_CHARS", 32_000, minimum=0, maximum=10_000_000)
FACTLOOP_MAX_FACTS_CHARS = env.integer("FACTLOOP_MAX_FACTS_CHARS", 65_536, minimum=2, maximum=10_000_000)
FACTLOOP_MAX_RESPONSE_CHARS = env.integer("FACTLOOP_MAX_RESPONSE_CHARS", 16_000, minimum=16, maximum=1_000_000)
# Times generation asks again, with a new seed, for a candidate that repeats another of its prompt's.
FACTLOOP_DISTINCT_TRIES = env.integer("FACTLOOP_DISTINCT_TRIES", 3, minimum=0, maximum=20)
FACTLOOP_MAX_IMAGE_BYTES = env.integer("FACTLOOP_MAX_IMAGE_BYTES", 20 * 1024**2, minimum=1024)
# An uploaded import archive may unpack to at most this many bytes.
FACTLOOP_MAX_IMPORT_BYTES = env.integer("FACTLOOP_MAX_IMPORT_BYTES", 2 * 1024**3, minimum=1024**2)

# Request bodies, bounded by their Content-Length before anything reads them
# (webapp.middleware.BodyLimitMiddleware): a request from nobody signed in may send
# FACTLOOP_MAX_ANONYMOUS_BODY_BYTES (a sign-in form), a signed-in one
# DATA_UPLOAD_MAX_MEMORY_SIZE (annotation submissions are small), and only an admin's upload
# to the two import routes up to FACTLOOP_MAX_IMPORT_BYTES. Both caps stay under Django's
# FILE_UPLOAD_MAX_MEMORY_SIZE, so a refused or small body never reaches the disk.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.integer("DATA_UPLOAD_MAX_MEMORY_SIZE", 1_048_576, minimum=1024, maximum=2_000_000)
FACTLOOP_MAX_ANONYMOUS_BODY_BYTES = env.integer(
    "FACTLOOP_MAX_ANONYMOUS_BODY_BYTES", 65_536, minimum=1024, maximum=DATA_UPLOAD_MAX_MEMORY_SIZE
)
# The text members of an uploaded archive (.jsonl and .csv manifests, .json label files) are
# parsed in memory: each may unpack to at most this many bytes (the released LLaVA-RLHF and
# RLHF-V label files are about 10 and 20 MB).
FACTLOOP_MAX_MANIFEST_BYTES = env.integer(
    "FACTLOOP_MAX_MANIFEST_BYTES", 64 * 1024**2, minimum=1024**2, maximum=FACTLOOP_MAX_IMPORT_BYTES
)

# API throttles (DRF), per client address for anonymous requests and per user otherwise; the
# "expensive" scope (signing in: a PBKDF2 each; the OpenAPI schema) per address. Rates are
# N/second, N/minute, N/hour or N/day.
FACTLOOP_THROTTLE_ANONYMOUS = env.rate("FACTLOOP_THROTTLE_ANONYMOUS", "60/minute")
FACTLOOP_THROTTLE_USER = env.rate("FACTLOOP_THROTTLE_USER", "300/second")
FACTLOOP_THROTTLE_EXPENSIVE = env.rate("FACTLOOP_THROTTLE_EXPENSIVE", "20/minute")
# Throttle counts live in the cache: CACHE_URL (redis://...) shares them between processes
# and hosts; the default keeps them per process.
CACHE_URL = env.text("CACHE_URL", "locmem://")
if CACHE_URL.startswith(("redis://", "rediss://")):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}}
elif CACHE_URL == "locmem://":
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
else:
    raise ConfigError("CACHE_URL", f"expected redis://HOST:PORT/DB or locmem://, got {CACHE_URL!r}")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "annotation.web.authentication.RoleTokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": [
        "annotation.web.authentication.AnonymousThrottle",
        "annotation.web.authentication.UserThrottle",
        "annotation.web.authentication.ExpensiveThrottle",
    ],
    # JSON only; a body over DATA_UPLOAD_MAX_MEMORY_SIZE gets 413 (annotation.web.annotator_api.exception_handler).
    "DEFAULT_PARSER_CLASSES": ["annotation.web.parsers.BoundedJSONParser"],
    "EXCEPTION_HANDLER": "annotation.web.annotator_api.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "FactLoop API",
    "DESCRIPTION": "Annotation and administration API of FactLoop.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema is for signed-in users (docs/api.md); its Swagger UI and Redoc pages
    # (webapp/urls.py) for admins.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# ---------------------------------------------------------------------------------------
# Celery (webapp/celery.py reads every CELERY_* name below)

_broker = parse_broker_url(
    "CELERY_BROKER_URL", env.text("CELERY_BROKER_URL", "filesystem://"), default_folder=VAR_DIR / "celery-broker"
)
CELERY_BROKER_URL = _broker.url
CELERY_BROKER_TRANSPORT_OPTIONS = _broker.transport_options
# The folder of the embedded broker (None with Redis): created at start-up by webapp.celery.
FACTLOOP_BROKER_FOLDER = _broker.folder
# Tasks record their state and progress on database rows (annotation.Job), so no result
# backend is needed; results are never read through Celery.
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# A job is acknowledged when it ends, and re-delivered if the worker dies, so a crash
# never silently drops work. Tasks are written to be safe to run twice.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# One message at a time per process: jobs are long, and prefetching would park queued work
# behind a busy process.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = TIME_ZONE

# Job recovery (annotation/jobs/lifecycle.py): a running job's worker stamps it every heartbeat; a job
# whose stamp is older than the stale limit is taken back by the sweeper (Celery beat runs
# it every FACTLOOP_JOB_SWEEP_SECONDS, and each worker sweeps its own jobs at start-up) and
# queued again, up to FACTLOOP_JOB_MAX_ATTEMPTS claims.
FACTLOOP_JOB_HEARTBEAT_SECONDS = env.integer("FACTLOOP_JOB_HEARTBEAT_SECONDS", 15, minimum=1, maximum=3600)
FACTLOOP_JOB_STALE_SECONDS = env.integer("FACTLOOP_JOB_STALE_SECONDS", 120, minimum=2, maximum=86_400)
if FACTLOOP_JOB_STALE_SECONDS <= 2 * FACTLOOP_JOB_HEARTBEAT_SECONDS:
    raise ConfigError(
        "FACTLOOP_JOB_STALE_SECONDS",
        "must be more than twice FACTLOOP_JOB_HEARTBEAT_SECONDS (a live worker would be taken for dead)",
    )
FACTLOOP_JOB_MAX_ATTEMPTS = env.integer("FACTLOOP_JOB_MAX_ATTEMPTS", 3, minimum=1, maximum=100)
FACTLOOP_JOB_SWEEP_SECONDS = env.integer("FACTLOOP_JOB_SWEEP_SECONDS", 60, minimum=1, maximum=86_400)
CELERY_BEAT_SCHEDULE = {
    "sweep-jobs": {
        "task": "annotation.sweep_jobs",
        "schedule": float(FACTLOOP_JOB_SWEEP_SECONDS),
        "options": {"queue": "generate", "expires": float(FACTLOOP_JOB_SWEEP_SECONDS)},
    }
}

LOG_LEVEL = env.choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # django-axes logs every sign-in at INFO; failures and lockouts are in its tables.
        "axes": {"level": "WARNING"},
        # The embedded broker's URL has no host by design; kombu warns about that on every connection.
        "kombu.connection": {"level": "ERROR" if FACTLOOP_BROKER_FOLDER is not None else "WARNING"},
    },
}

if not DEBUG:
    SESSION_COOKIE_SECURE = env.flag("SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
# Sent with every response (webapp/middleware.py): scripts, styles and images from this
# site only (inline style attributes allowed: the admin and the SVG plots use them).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'self'; frame-ancestors 'none'; form-action 'self'"
)
