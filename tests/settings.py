"""Tests run on the real stack: PostgreSQL and Redis on this machine (override by env)."""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/livefolio")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/1")
os.environ.setdefault(
    "DJANGO_SECRET_KEY", "tests-only-secret-key-0123456789abcdefghijklmnopqrstuvwxyz"
)
os.environ.setdefault("LIVEFOLIO_REDIS_PREFIX", "livefolio-test")

from portfolio.settings import *  # noqa: F403

# Connections opened in sync_to_async threads must not outlive a test (the test DB is dropped).
DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405
