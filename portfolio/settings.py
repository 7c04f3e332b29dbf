"""Livefolio settings: one flat module, everything from environment variables.

No variables set: the embedded default (SQLite, in-memory channel layer, Celery tasks run in
process). ``DATABASE_URL`` and ``REDIS_URL`` switch to the real stack (PostgreSQL, channels-redis,
Celery on Redis). Any invalid value stops start-up with a message naming the variable.
"""

import json
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

# Off unless asked for, the demo included: an error shows the app's own page, never Django's
# debug page with its URL list and settings.
DEBUG = env_bool("DJANGO_DEBUG", default=False)
SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not EMBEDDED:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY: required when REDIS_URL is set")
    SECRET_KEY = "embedded-default-not-secret-only-for-127.0.0.1"
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")

# Served over HTTPS (directly or behind a TLS proxy): secure cookies, HSTS, redirect to https.
TLS = env_bool("LIVEFOLIO_TLS", default=False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = SECURE_SSL_REDIRECT = TLS
SECURE_HSTS_SECONDS = env_int("LIVEFOLIO_HSTS_SECONDS", 31_536_000) if TLS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_PRELOAD = TLS
if env_bool("LIVEFOLIO_BEHIND_TLS_PROXY", default=False):
    # Only behind a proxy that sets (and strips client-sent) X-Forwarded-Proto.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# The admin's URL prefix; a non-obvious one keeps scanners off the login form.
ADMIN_PATH = env_str("LIVEFOLIO_ADMIN_PATH", "admin/").strip("/") + "/"
if ADMIN_PATH == "/":
    raise ImproperlyConfigured("LIVEFOLIO_ADMIN_PATH: must not be empty")
# Bearer token for /metrics (staff sessions may read it too); unset means staff only.
METRICS_TOKEN = env_str("LIVEFOLIO_METRICS_TOKEN")

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
    "axes",
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
    "portfolio.security.ContentSecurityPolicyMiddleware",
    "portfolio.security.RequestIdMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into the 429 page.
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Login lockout (django-axes): this many failed log-ins from one client address, whatever
# usernames they tried, lock that address for LIVEFOLIO_LOGIN_LOCKOUT_MINUTES; the lockout page
# answers 429. Counted per address, not per username and address: one password sprayed over many
# usernames is stopped like many passwords tried on one; per address, not per username: nobody
# can lock a person out from elsewhere by failing on their username.
AXES_FAILURE_LIMIT = env_int("LIVEFOLIO_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = env_int("LIVEFOLIO_LOGIN_LOCKOUT_MINUTES", 15, minimum=1) / 60
AXES_LOCKOUT_PARAMETERS = ["ip_address"]
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_HTTP_RESPONSE_CODE = 429
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False

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
    # Connections are kept for a minute (web requests and Celery tasks alike, see
    # CELERY_DB_REUSE_MAX), each checked with one cheap query before it is reused.
    DATABASES = {
        "default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)
    }
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

# Prefix of every Redis key and pub/sub channel, the channel layer's and Livefolio's own. Empty
# (the default): derived from this deployment's database and Redis database, so deployments
# sharing a Redis server never share channels (streaming/namespace.py resolves it).
LIVEFOLIO_REDIS_PREFIX = env_str("LIVEFOLIO_REDIS_PREFIX", "")
if os.environ.get("LIVEFOLIO_CHANNEL_PREFIX") is not None:
    raise ImproperlyConfigured(
        "LIVEFOLIO_CHANNEL_PREFIX is now LIVEFOLIO_REDIS_PREFIX (and may be left unset: the "
        "prefix is then derived from the database); rename or remove it"
    )

# "pubsub" (the default): Livefolio's layer on Redis pub/sub, one PUBLISH per group message,
# batched; it delivers several times what the core layer does (docs/performance.md). When its
# subscription to Redis is lost, every socket it carried closes with 4503, as with the core layer.
# "core": channels-redis' RedisChannelLayer (one lighter inbox per connection, see
# streaming/patches/layers.py). tests/faults runs the faults a layer handles on both.
CHANNEL_LAYER_BACKENDS = {
    "pubsub": "streaming.patches.layers.PubSubChannelLayer",
    "core": "streaming.patches.layers.CoreChannelLayer",
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
                # Messages held per connection that is not reading; beyond, the oldest drop.
                "capacity": env_int("LIVEFOLIO_CHANNEL_CAPACITY", 1000, minimum=1),
            },
        }
    }
    if LIVEFOLIO_CHANNEL_LAYER == "core":
        CHANNEL_LAYERS["default"]["CONFIG"]["expiry"] = 30
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

CELERY_BROKER_URL = REDIS_URL or "memory://localhost/"
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = EMBEDDED
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's Django fixup closes the database connection before and after every task unless this
# is set (then every this many tasks): each ingest batch would open a new PostgreSQL session.
# portfolio/celery.py applies Django's own rules around each task instead
# (CONN_MAX_AGE, health checks, errors) and closes after any task that did not succeed.
CELERY_DB_REUSE_MAX = 1_000_000
# Ingest batches take milliseconds; these bound one that hangs (a database that does not answer).
# Tasks with longer work set their own limits and acknowledge early (portfolio/tasks.py).
CELERY_TASK_SOFT_TIME_LIMIT = 10
CELERY_TASK_TIME_LIMIT = 15
# The longest wait before an ingest batch that failed on the database is tried again (seconds);
# each retry is a task the worker holds, unacknowledged, until its countdown ends.
LIVEFOLIO_INGEST_RETRY_MAX_SECONDS = 10
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A task taken by a worker that died (SIGKILL, OOM, a lost machine) goes back to the queue once
# it has been unacknowledged this long: Redis has no other way to tell a dead worker from a busy
# one. (A pool process that dies under a live worker is requeued at once:
# CELERY_TASK_REJECT_ON_WORKER_LOST.) Short, so a killed worker's batch runs again within
# seconds; longer than an ingest task can be held (its retry countdown) plus run (its hard time
# limit), so a live worker's task is never handed out a second time. Were it handed out anyway
# (a task waiting behind a slow one), ingest is idempotent (newer exchange time wins) and its
# second run changes and publishes nothing.
_SHORTEST_VISIBILITY = LIVEFOLIO_INGEST_RETRY_MAX_SECONDS + CELERY_TASK_TIME_LIMIT + 1
_VISIBILITY_TIMEOUT = env_int(
    "LIVEFOLIO_BROKER_VISIBILITY_TIMEOUT", 30, minimum=_SHORTEST_VISIBILITY
)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": _VISIBILITY_TIMEOUT,
    # Look for such abandoned tasks every few seconds (kombu's default is every 100 s).
    "unacked_restore_interval": max(1, min(10, _VISIBILITY_TIMEOUT // 6)),
    "unacked_restore_throttle": 1,
    "socket_timeout": 10,
}
CELERY_TIMEZONE = "UTC"
# Exactly one beat process runs these (Procfile / docker-compose "beat").
CELERY_BEAT_SCHEDULE = {
    "valuation-snapshots": {
        "task": "streaming.tasks.snapshot_valuations",
        "schedule": 60.0,  # every minute: the intraday series TWR and IRR are measured on
        "options": {"expires": 55},
    },
    "daily-prices-from-exchanges": {
        "task": "portfolio.tasks.backfill_daily_prices",
        "schedule": 6 * 3600.0,  # the last week's finished days; a missed run is caught up
        "options": {"expires": 3 * 3600},
    },
    "daily-prices-from-bars": {
        "task": "portfolio.tasks.roll_up_daily_prices",
        # Hourly: today's row follows the bars through the day; yesterday's is final by 01:00.
        "schedule": 3600.0,
        "options": {"expires": 3000},
    },
}

# Retired with the ingest mailbox (streaming/mailbox.py), which has no window and no pacing.
for _retired in (
    "LIVEFOLIO_COALESCE_MS",
    "LIVEFOLIO_VALUATION_MAX_DELAY_MS",
    "LIVEFOLIO_VALUATION_INTERVAL_MS",
):
    if os.environ.get(_retired) is not None:
        raise ImproperlyConfigured(
            f"{_retired} is gone: feeds hand ticks on at once through the ingest mailbox and "
            "every watched portfolio is valued with each batch; remove it"
        )
# A price older than this is shown as stale (seconds).
LIVEFOLIO_STALE_SECONDS = env_int("LIVEFOLIO_STALE_SECONDS", 120, minimum=1)
# How often a feed process writes its health row; three missed writes read as "down".
LIVEFOLIO_FEED_HEARTBEAT_SECONDS = env_int("LIVEFOLIO_FEED_HEARTBEAT_SECONDS", 2, minimum=1)
# Order books are published at most this often per instrument (milliseconds).
LIVEFOLIO_BOOK_INTERVAL_MS = env_int("LIVEFOLIO_BOOK_INTERVAL_MS", 250, minimum=50)

# Exchange endpoints: point them at a testnet or a local fake server.
BINANCE_WS_URL = env_url("BINANCE_WS_URL", ("ws", "wss")) or "wss://stream.binance.com:9443"
BINANCE_REST_URL = env_url("BINANCE_REST_URL", ("http", "https")) or "https://api.binance.com"
# Add "depth" for order books (each book sync costs a rate-limited REST snapshot).
BINANCE_CHANNELS = env_list("BINANCE_CHANNELS", "miniTicker,bookTicker,trade")
COINBASE_WS_URL = env_url("COINBASE_WS_URL", ("ws", "wss")) or "wss://ws-feed.exchange.coinbase.com"
KRAKEN_WS_URL = env_url("KRAKEN_WS_URL", ("ws", "wss")) or "wss://ws.kraken.com/v2"


def env_ccxt_urls(name: str) -> dict[str, dict]:
    """A JSON object: ccxt exchange id -> entries merged into that exchange's ccxt ``urls``."""
    raw = env_str(name)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}: not JSON ({exc})") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ImproperlyConfigured(
            f'{name}: expected {{"<exchange id>": {{<ccxt urls>}}, ...}}, got {raw!r}'
        )
    return value


# ccxt feeds: per exchange, endpoints merged into ccxt's own ``urls`` (a testnet, a local fake),
# e.g. {"okx": {"api": {"rest": "http://127.0.0.1:8001", "ws": "ws://127.0.0.1:8002/ws/v5"}}}.
LIVEFOLIO_CCXT_URLS = env_ccxt_urls("LIVEFOLIO_CCXT_URLS")
# REST APIs for daily candles (price-history backfill, portfolio/exchange_candles.py).
COINBASE_REST_URL = (
    env_url("COINBASE_REST_URL", ("http", "https")) or "https://api.exchange.coinbase.com"
)
KRAKEN_REST_URL = env_url("KRAKEN_REST_URL", ("http", "https")) or "https://api.kraken.com"

# Largest WebSocket frame a client may send (bytes).
LIVEFOLIO_MAX_FRAME_BYTES = 64 * 1024
# What one WebSocket connection may send: frames per second on average, and the burst.
LIVEFOLIO_WS_RATE = env_int("LIVEFOLIO_WS_RATE", 10, minimum=1)
LIVEFOLIO_WS_BURST = env_int("LIVEFOLIO_WS_BURST", 30, minimum=1)
# Open sockets per user per endpoint, across all server processes.
LIVEFOLIO_WS_MAX_PER_USER = env_int("LIVEFOLIO_WS_MAX_PER_USER", 20, minimum=1)
# Valuations per portfolio per second one connection receives at most (always the latest).
LIVEFOLIO_WS_MAX_UPDATES = env_int("LIVEFOLIO_WS_MAX_UPDATES", 5, minimum=1)
# Unsent frames a WebSocket client may leave unread in a server process (KiB, beyond what its
# TCP transport buffers) before it is closed with 4413 (streaming/patches/websocket.py).
LIVEFOLIO_WS_SEND_BUDGET_KB = env_int("LIVEFOLIO_WS_SEND_BUDGET_KB", 1024, minimum=64)
# How often an open socket re-checks its session (expired sessions close with 4401).
LIVEFOLIO_SESSION_CHECK_SECONDS = env_int("LIVEFOLIO_SESSION_CHECK_SECONDS", 30, minimum=1)
# A page pings a socket that has been quiet this long, and says "Stalled" and reconnects after
# twice this without any frame.
LIVEFOLIO_PAGE_PING_SECONDS = env_int("LIVEFOLIO_PAGE_PING_SECONDS", 10, minimum=1)
# How often a Celery worker writes its heartbeat to Redis.
LIVEFOLIO_HEARTBEAT_SECONDS = env_int("LIVEFOLIO_HEARTBEAT_SECONDS", 10, minimum=1)

# WebSocket API v1 (/ws/v1/): limits per connection and per user (docs/api.md).
LIVEFOLIO_API_AUTH_TIMEOUT = env_int("LIVEFOLIO_API_AUTH_TIMEOUT", 5, minimum=1)
LIVEFOLIO_API_HEARTBEAT_SECONDS = env_int("LIVEFOLIO_API_HEARTBEAT_SECONDS", 15, minimum=1)
LIVEFOLIO_API_IDLE_TIMEOUT = env_int("LIVEFOLIO_API_IDLE_TIMEOUT", 120, minimum=1)
LIVEFOLIO_API_RATE = env_int("LIVEFOLIO_API_RATE", 10, minimum=1)  # requests a second
LIVEFOLIO_API_BURST = env_int("LIVEFOLIO_API_BURST", 20, minimum=1)
LIVEFOLIO_API_MAX_SUBSCRIPTIONS = env_int("LIVEFOLIO_API_MAX_SUBSCRIPTIONS", 50, minimum=1)
LIVEFOLIO_API_MAX_CONNECTIONS = env_int("LIVEFOLIO_API_MAX_CONNECTIONS", 5, minimum=1)

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
# static/vendor/ holds the built files of npm packages the pages load (package-lock.json's
# versions, with their licences; tests/test_vendor.py proves they equal the packages' files), so
# running the app needs no Node.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # One line per event; request_id / conn_id say which request or socket it belongs to.
    "formatters": {
        "line": {
            "format": "%(asctime)s %(levelname)s %(name)s [%(context_id)s] %(message)s",
        }
    },
    "filters": {"context": {"()": "portfolio.security.ContextIdFilter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "line",
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": env_str("LIVEFOLIO_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # One line per task is noise at several batches a second; failures still log.
        "celery.app.trace": {"level": "WARNING"},
        # Lockouts and repeated failures log at WARNING; every successful login is noise.
        "axes": {"level": "WARNING"},
    },
}
