"""One timer per server process keeps every open page socket's session and memberships current.

Each /ws/portfolio/ and /ws/instrument/ socket must close when its session ends (checked every
``LIVEFOLIO_SESSION_CHECK_SECONDS``) and renew its group memberships and its connection-cap entry
every ``UserConnections.REFRESH_SECONDS`` (both are lost if Redis restarts empty, and a cap entry
expires unless renewed). One task per event loop does it for all of them, not a sleeping task
per socket (thousands of idle tasks, a session query per socket, and renewals firing together
that would run the Redis connection pools dry): sessions are read in batches (one thread hop
and, with database sessions, one query per batch), renewals run a few at a time.

A socket is watched from ``add`` (after its snapshot) until ``remove`` (its disconnect);
``remove`` also stops a renewal of that socket still in flight, so a socket that has left its
groups is never put back into one.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from importlib import import_module
from typing import Protocol

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import SESSION_KEY
from prometheus_client import Gauge

from streaming.flow import UserConnections

log = logging.getLogger(__name__)

DB_SESSIONS = "django.contrib.sessions.backends.db"


class Watched(Protocol):
    session_key: str | None
    user_id: int

    async def end_session(self) -> None: ...

    async def renew(self) -> None: ...


def session_owners(session_keys: list[str | None]) -> list[str | None]:
    """The user id each session still belongs to; None once it is gone or expired."""
    engine = import_module(settings.SESSION_ENGINE)
    if settings.SESSION_ENGINE == DB_SESSIONS:
        from django.contrib.sessions.models import Session
        from django.utils import timezone

        rows = dict(
            Session.objects.filter(
                session_key__in=[key for key in session_keys if key], expire_date__gt=timezone.now()
            ).values_list("session_key", "session_data")
        )
        store = engine.SessionStore()
        return [
            store.decode(rows[key]).get(SESSION_KEY) if key in rows else None
            for key in session_keys
        ]
    return [
        engine.SessionStore(session_key=key).get(SESSION_KEY) if key else None
        for key in session_keys
    ]


class SocketWatch:
    """The page sockets of one event loop (one daphne process), checked by one task."""

    SESSIONS_PER_HOP = 200  # sessions read per thread hop (other sockets' connects wait behind it)
    RENEWING_AT_ONCE = 16  # renewals in flight together (well under the Redis pools' 100)

    def __init__(self) -> None:
        self.sockets: dict[Watched, None] = {}  # insertion-ordered set
        self.renewing: dict[Watched, asyncio.Task] = {}
        self.task: asyncio.Task | None = None
        self.next_check = 0.0

    def add(self, socket: Watched) -> None:
        self.sockets[socket] = None
        if self.task is None or self.task.done():
            self.next_check = time.monotonic() + settings.LIVEFOLIO_SESSION_CHECK_SECONDS
            self.task = asyncio.get_running_loop().create_task(self.run())

    async def remove(self, socket: Watched) -> None:
        self.sockets.pop(socket, None)
        renewal = self.renewing.get(socket)
        if renewal is not None:
            renewal.cancel()
            await asyncio.wait([renewal])

    async def run(self) -> None:
        while self.sockets:
            check_every = settings.LIVEFOLIO_SESSION_CHECK_SECONDS
            await asyncio.sleep(min(UserConnections.REFRESH_SECONDS, check_every))
            if time.monotonic() >= self.next_check:
                self.next_check = time.monotonic() + check_every
                await self.check_sessions()
            await self.renew_all()

    async def check_sessions(self) -> None:
        sockets = list(self.sockets)
        for start in range(0, len(sockets), self.SESSIONS_PER_HOP):
            batch = sockets[start : start + self.SESSIONS_PER_HOP]
            try:
                owners = await database_sync_to_async(session_owners)(
                    [s.session_key for s in batch]
                )
            except Exception as exc:  # database down: keep serving what we have
                log.warning("session check failed: %s", exc)
                return
            for socket, owner in zip(batch, owners, strict=True):
                if owner != str(socket.user_id) and socket in self.sockets:
                    del self.sockets[socket]
                    try:
                        await socket.end_session()
                    except Exception as exc:
                        log.warning("closing a socket whose session ended failed: %s", exc)

    async def renew_all(self) -> None:
        sockets = list(self.sockets)
        failed, error = 0, None
        for start in range(0, len(sockets), self.RENEWING_AT_ONCE):
            batch = [s for s in sockets[start : start + self.RENEWING_AT_ONCE] if s in self.sockets]
            for socket in batch:
                self.renewing[socket] = asyncio.ensure_future(socket.renew())
            try:
                results = await asyncio.gather(
                    *(self.renewing[s] for s in batch), return_exceptions=True
                )
            finally:
                for socket in batch:
                    del self.renewing[socket]
            for result in results:
                if isinstance(result, Exception):
                    failed, error = failed + 1, result
        if failed:
            log.warning(
                "renewing group membership failed for %d of %d sockets: %s",
                failed,
                len(sockets),
                error,
            )


_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SocketWatch] = (
    weakref.WeakKeyDictionary()
)


WS_WATCHED = Gauge(
    "livefolio_ws_watched_sockets",
    "Page sockets whose sessions and memberships this process keeps current",
)
# Read at scrape time: a socket is watched from its snapshot until its clean-up.
WS_WATCHED.set_function(lambda: sum(len(watch.sockets) for watch in list(_watches.values())))


def socket_watch() -> SocketWatch:
    """This event loop's watch (daphne has one loop; each test has its own)."""
    loop = asyncio.get_running_loop()
    watch = _watches.get(loop)
    if watch is None:
        watch = _watches[loop] = SocketWatch()
    return watch
