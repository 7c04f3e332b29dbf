"""Livefolio's channel layer: channels-redis' pub/sub layer plus one pipelined batch send.

Why pub/sub and not the core ``RedisChannelLayer`` (measured in docs/performance.md): the core
layer makes several Redis round-trips per message behind a process-wide lock and keeps a list
per consumer; the pub/sub layer is one ``PUBLISH`` per group message and one subscription per
group per server process. Delivery stays at most once, as it always was: snapshots and ``seq``
keep clients correct.

``group_send_many`` is the one addition: a Celery task publishes hundreds of valuations at once,
and one pipeline per Redis shard costs one round-trip instead of one per message. It relies on
channels-redis 4.3's per-loop layer internals (pinned in requirements.lock); the tests in
tests/test_layers.py run it against the real Redis.

Both layers (this one and ``CoreChannelLayer``, the default) keep each connection's undelivered
messages in an :class:`Inbox` instead of an ``asyncio.Queue``: an idle daphne holds one per
open socket, and an empty ``asyncio.Queue`` is four deques, ~3.3 KB; an empty Inbox is ~60 bytes
(docs/performance.md, the idle rows).
"""

from __future__ import annotations

import asyncio
import collections
import functools
from collections import defaultdict
from typing import Any

from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer
from channels_redis.utils import _wrap_close
from redis.asyncio import BlockingConnectionPool


class Inbox:
    """The part of ``asyncio.Queue`` the channel layers use (``get``, ``get_nowait``,
    ``put_nowait``, ``empty``, ``full``, ``qsize``), holding nothing while empty.

    With ``maxsize`` it is bounded the way channels-redis' ``BoundedQueue`` is: a put into a full
    inbox drops the oldest message (the consumer stopped reading; delivery is at most once).
    """

    __slots__ = ("_getters", "_items", "maxsize")

    def __init__(self, maxsize: int = 0) -> None:
        self.maxsize = maxsize
        self._items: collections.deque | None = None  # made on the first put, dropped when empty
        self._getters: list[asyncio.Future] | None = None

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return 0 < self.maxsize <= self.qsize()

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = collections.deque()
        elif self.full():
            self._items.popleft()
        self._items.append(item)
        self._wake_next()

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item

    async def get(self) -> Any:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                if self._getters is not None and getter in self._getters:
                    self._getters.remove(getter)
                if self._items and not getter.cancelled():
                    self._wake_next()  # it was woken, but gives up: wake the next reader
                raise
            finally:
                if not self._getters:
                    self._getters = None
        return self.get_nowait()

    def _wake_next(self) -> None:
        while self._getters:
            getter = self._getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                break
        if not self._getters:
            self._getters = None


# Redis connections one daphne's channel layer may hold per host. A burst (5,000 sockets
# connecting, each joining its group) waits for a free one instead of failing the handshake
# with "Too many connections", as the stock pool (100, raising) did.
POOL_SIZE = 100
POOL_WAIT_SECONDS = 10


class CoreChannelLayer(RedisChannelLayer):
    """channels-redis' core layer with an :class:`Inbox` per local channel and a connection
    pool that makes a burst wait rather than fail."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.receive_buffer = defaultdict(functools.partial(Inbox, self.capacity))

    def create_pool(self, index: int) -> Any:
        host = dict(self.hosts[index])
        if "address" not in host:
            return super().create_pool(index)  # sentinels: channels-redis' own pool
        return BlockingConnectionPool.from_url(
            host.pop("address"), max_connections=POOL_SIZE, timeout=POOL_WAIT_SECONDS, **host
        )


class _PubSubLoopLayer(RedisPubSubLoopLayer):
    async def _subscribe_to_channel(self, channel: str) -> None:
        self.channels[channel] = Inbox()
        await self._get_shard(channel).subscribe(channel)


class PubSubChannelLayer(RedisPubSubChannelLayer):
    """The pub/sub layer with a pipelined multi-group send and an :class:`Inbox` per channel."""

    def _get_layer(self) -> RedisPubSubLoopLayer:
        loop = asyncio.get_running_loop()
        if loop not in self._layers:
            self._layers[loop] = _PubSubLoopLayer(*self._args, **self._kwargs, channel_layer=self)
            _wrap_close(self, loop)
        return self._layers[loop]

    async def group_send_many(self, messages: list[tuple[str, dict[str, Any]]]) -> None:
        """Send each ``(group, message)``, in order, one pipeline per shard."""
        layer = self._get_layer()
        by_shard: dict[Any, list[tuple[str, bytes]]] = defaultdict(list)
        for group, message in messages:
            channel = layer._get_group_channel_name(group)
            by_shard[layer._get_shard(channel)].append((channel, self.serialize(message)))
        for shard, items in by_shard.items():
            # The shard's lock serialises its connection use with subscribe/unsubscribe.
            async with shard._lock:
                shard._ensure_redis()
                pipe = shard._redis.pipeline(transaction=False)
                for channel, data in items:
                    pipe.publish(channel, data)
                await pipe.execute()
