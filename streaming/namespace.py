"""The Redis namespace of this deployment: the prefix of every key and pub/sub channel Livefolio
uses (the channel layer's groups and channels, the market-data cache, connection slots, health
records, ingest notices).

Redis pub/sub ignores the database number: two deployments on one Redis server hear each
other's channels unless their prefixes differ. So the prefix is derived, by default, from what
tells deployments apart: the deployment's row in its own database (:class:`Deployment`, made
by the first ``migrate``), that database's identity (the PostgreSQL cluster's system
identifier and the database's name, or the SQLite file) and the Redis URL's database number.
Every daphne, worker and feed process of one site reads the same database, so they share the
namespace wherever they run; a copy of the database restored elsewhere gets another one.

``LIVEFOLIO_REDIS_PREFIX`` sets the prefix on purpose instead. Every server process calls
:func:`claim` at start-up: it announces the deployment on a pub/sub channel of its own (which
lives as long as the process's subscription does) and refuses a configuration that another
live deployment on the same Redis server makes ambiguous (docs/operations.md).
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

log = logging.getLogger(__name__)

# Announcements are server-wide, whatever a deployment's prefix: every deployment can see every
# other. ``<ROOT>:<redis db>:<database fingerprint>:<prefix>``.
ANNOUNCE_ROOT = "livefolio:deployment"

_prefix: str | None = None
_claimed: threading.Thread | None = None
_lock = threading.Lock()


@dataclass(frozen=True)
class Announcement:
    redis_db: int
    fingerprint: str
    prefix: str

    @property
    def channel(self) -> str:
        return f"{ANNOUNCE_ROOT}:{self.redis_db}:{self.fingerprint}:{self.prefix}"

    @classmethod
    def parse(cls, channel: str) -> Announcement | None:
        root, sep, rest = channel.partition(f"{ANNOUNCE_ROOT}:")
        parts = rest.split(":", 2)
        if root or not sep or len(parts) != 3 or not parts[0].isdigit():
            return None
        return cls(int(parts[0]), parts[1], parts[2])


def redis_db(url: str) -> int:
    """The database number a Redis URL selects (``/7`` or ``?db=7``; 0 when it names none)."""
    import redis

    return int(redis.Redis.from_url(url).connection_pool.connection_kwargs.get("db") or 0)


def database_identity() -> str:
    """What names this deployment's database: its Deployment row, plus the PostgreSQL cluster
    and database name (or the SQLite file), so a copy of the row in another database differs."""
    from django.db import connection

    from streaming.models import Deployment

    deployment, _ = Deployment.objects.get_or_create(id=1, defaults={"uid": uuid.uuid4()})
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT system_identifier::text, current_database() FROM pg_control_system()"
            )
            system_identifier, name = cursor.fetchone()
        where = f"postgresql:{system_identifier}:{name}"
    else:
        where = f"{connection.vendor}:{Path(str(connection.settings_dict['NAME'])).resolve()}"
    return f"{where}:{deployment.uid}"


def fingerprint(identity: str) -> str:
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def derived_prefix(identity: str, db: int) -> str:
    """The default prefix: differs for every (database, Redis database) pair."""
    return "livefolio-" + hashlib.sha256(f"{identity}|redis-db={db}".encode()).hexdigest()[:12]


def redis_prefix() -> str:
    """This process's prefix: ``LIVEFOLIO_REDIS_PREFIX`` when set, else derived (one database
    query, the first time; server processes resolve it in :func:`claim` at start-up)."""
    global _prefix
    if _prefix is None:
        with _lock:
            if _prefix is None:
                _prefix = settings.LIVEFOLIO_REDIS_PREFIX or derived_prefix(
                    database_identity(), redis_db(settings.REDIS_URL)
                )
    return _prefix


def conflicts(mine: Announcement, others: list[Announcement]) -> list[str]:
    """Why ``mine`` cannot run beside the announced ``others`` (empty when it can)."""
    problems = []
    for other in others:
        if other.fingerprint == mine.fingerprint:
            continue  # another process of this deployment
        if other.prefix == mine.prefix:
            problems.append(
                f"LIVEFOLIO_REDIS_PREFIX={mine.prefix!r} is in use on this Redis server by "
                f"another deployment (a different DATABASE_URL database, Redis database "
                f"{other.redis_db}): pub/sub ignores the database number, so each would receive "
                "the other's messages. Give each deployment its own LIVEFOLIO_REDIS_PREFIX, or "
                "unset it to derive one from the database."
            )
        elif other.redis_db == mine.redis_db:
            problems.append(
                f"REDIS_URL database {mine.redis_db} is in use by another deployment (a "
                "different DATABASE_URL database): the Celery queue in it would be shared. "
                "Give each deployment its own REDIS_URL database."
            )
    return problems


def claim() -> str:
    """Resolve the prefix, refuse an ambiguous configuration, announce this deployment for as
    long as the process lives. Called once at start-up by daphne (portfolio/asgi.py), the
    Celery worker and the feed process; a no-op without Redis (the embedded default).

    Raises ImproperlyConfigured naming the variables when another live deployment on this Redis
    server has the same prefix, or uses the same Redis database. When Redis cannot be reached
    now, the check waits for it in the background (the process still starts: it is of no use
    without Redis anyway, and the other checks of a Redis outage apply).
    """
    global _claimed
    if not settings.REDIS_URL:
        return ""
    prefix = redis_prefix()
    if _claimed is not None:
        return prefix
    mine = Announcement(redis_db(settings.REDIS_URL), fingerprint(database_identity()), prefix)
    from django.db import connections

    # A Celery worker forks its pool after this: no connection may be inherited.
    connections.close_all()
    subscribed = threading.Event()
    failure: list[str] = []
    _claimed = threading.Thread(
        target=_announce, args=(mine, subscribed, failure), name="redis-namespace", daemon=True
    )
    _claimed.start()
    subscribed.wait(timeout=10)
    if failure:
        raise ImproperlyConfigured("; ".join(failure))
    log.info("Redis namespace %r (deployment %s)", prefix, mine.fingerprint)
    return prefix


def _announce(mine: Announcement, subscribed: threading.Event, failure: list[str]) -> None:
    """Hold the announcement's subscription; after a lost connection, subscribe again."""
    import redis

    delay = 1.0
    first = True
    while True:
        try:
            client = redis.Redis.from_url(
                settings.REDIS_URL,
                socket_connect_timeout=5,
                socket_timeout=60,
                health_check_interval=30,
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            # Subscribe, then look: of two deployments starting at once, each sees the other.
            pubsub.subscribe(mine.channel)
            announced = client.pubsub_channels(f"{ANNOUNCE_ROOT}:*")
            others = [
                a
                for a in (Announcement.parse(c.decode()) for c in announced)
                if a is not None and a != mine
            ]
            problems = conflicts(mine, others)
            if problems:
                if first:
                    failure.extend(problems)
                    subscribed.set()
                    pubsub.close()
                    return
                log.error("Redis namespace: %s", "; ".join(problems))
            first = False
            subscribed.set()
            delay = 1.0
            while True:
                pubsub.get_message(timeout=30)  # pings on an idle connection (health check)
        except redis.RedisError as exc:
            if first:
                log.warning("Redis namespace: cannot announce yet (%s); retrying", exc)
                first = False
                subscribed.set()
            time.sleep(random.uniform(0, delay))
            delay = min(delay * 2, 30.0)
