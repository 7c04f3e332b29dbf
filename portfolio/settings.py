"""Livefolio settings: one flat module, everything from environment variables.

No variables set: the embedded default (SQLite, in-memory channel layer, Celery tasks run in
process). ``DATABASE_URL`` and ``REDIS_URL`` switch to the real stack (PostgreSQL, channels-redis,
Celery on Redis). Any invalid value stops start-up with a message naming the variable.
"""

import os
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    if raw.strip() in ("True", "true", "1"):
        return True
    if raw.strip() in ("False", "false", "0"):
        return False
    raise ImproperlyConfigured(f"{name}: expected True or False, got {raw!r}")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}: expected a whole number, got {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}: must be at least {minimum}, got {value}")
    return value


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def env_url(name: str, schemes: tuple[str, ...]) -> str:
    raw = env_str(name)
    if not raw:
        return ""
    parts = urlsplit(raw)
    if parts.scheme not in schemes or not (parts.hostname or parts.path):
        allowed = ", ".join(f"{s}://" for s in schemes)
        raise ImproperlyConfigured(f"{name}: expected a URL starting with {allowed}, got {raw!r}")
    return raw


DATABASE_URL = env_url("DATABASE_URL", ("postgres", "postgresql", "sqlite"))
REDIS_URL = env_url("REDIS_URL", ("redis", "rediss"))
# The embedded default: no Redis means no broker and no shared channel layer, so everything
# (the feed included) runs inside one server process.
EMBEDDED = not REDIS_URL

DEBUG = env_bool("DJANGO_DEBUG", default=EMBEDDED)
SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not EMBEDDED:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY: required when REDIS_URL is set")
    SECRET_KEY = "embedded-default-not-secret-only-for-127.0.0.1"
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "portfolio",
    "streaming",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "portfolio.urls"
ASGI_APPLICATION = "portfolio.asgi.application"
WSGI_APPLICATION = None

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
            ],
        },
    },
]

if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = 5
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": env_str("LIVEFOLIO_SQLITE_PATH", str(BASE_DIR / "db.sqlite3")),
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# "pubsub": Livefolio's layer on Redis pub/sub (one PUBLISH per group message, batched);
# "core": channels-redis' RedisChannelLayer. docs/performance.md has the measurements.
CHANNEL_LAYER_BACKENDS = {
    "pubsub": "streaming.layers.PubSubChannelLayer",
    "core": "channels_redis.core.RedisChannelLayer",
}
LIVEFOLIO_CHANNEL_LAYER = env_str("LIVEFOLIO_CHANNEL_LAYER", "pubsub")
if LIVEFOLIO_CHANNEL_LAYER not in CHANNEL_LAYER_BACKENDS:
    raise ImproperlyConfigured(
        f"LIVEFOLIO_CHANNEL_LAYER: expected pubsub or core, got {LIVEFOLIO_CHANNEL_LAYER!r}"
    )
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": CHANNEL_LAYER_BACKENDS[LIVEFOLIO_CHANNEL_LAYER],
            "CONFIG": {
                # redis-py 8 times out reads after 5 s, as long as the core layer's blocking
                # receive: idle consumers then die silently (redis-py #4091). No read timeout
                # fixes it; the pub/sub layer's subscriber connection must not time out either.
                "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
                "prefix": env_str("LIVEFOLIO_CHANNEL_PREFIX", "livefolio"),
            },
        }
    }
    if LIVEFOLIO_CHANNEL_LAYER == "core":
        CHANNEL_LAYERS["default"]["CONFIG"].update(
            capacity=env_int("LIVEFOLIO_CHANNEL_CAPACITY", 1000, minimum=1), expiry=30
        )
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

CELERY_BROKER_URL = REDIS_URL or "memory://localhost/"
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = EMBEDDED
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = 30
CELERY_TASK_TIME_LIMIT = 60
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 300, "socket_timeout": 10}
CELERY_TIMEZONE = "UTC"

# Ticks per instrument are coalesced in this window before one ingest batch (milliseconds).
LIVEFOLIO_COALESCE_MS = env_int("LIVEFOLIO_COALESCE_MS", 200, minimum=10)
# A price older than this is shown as stale (seconds).
LIVEFOLIO_STALE_SECONDS = env_int("LIVEFOLIO_STALE_SECONDS", 120, minimum=1)
# Largest WebSocket frame a client may send (bytes).
LIVEFOLIO_MAX_FRAME_BYTES = 64 * 1024

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Front-end packages come from npm (package.json), installed into node_modules, never committed.
if (BASE_DIR / "node_modules" / "lightweight-charts" / "dist").is_dir():
    STATICFILES_DIRS.append(
        ("vendor/lightweight-charts", BASE_DIR / "node_modules" / "lightweight-charts" / "dist")
    )
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"line": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "line"}},
    "root": {"handlers": ["console"], "level": env_str("LIVEFOLIO_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # One line per task is noise at several batches a second; failures still log.
        "celery.app.trace": {"level": "WARNING"},
    },
}
