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
import weakref
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

    def idle(self) -> bool:
        """Nothing queued and nobody waiting."""
        return not self._items and not self._getters

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

    def fail(self, exc: BaseException) -> None:
        """Raise ``exc`` in every reader waiting now (the source they wait on is gone)."""
        getters, self._getters = self._getters or [], None
        for getter in getters:
            if not getter.done():
                getter.set_exception(exc)

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


class _LocalReader:
    """Reads this process's Redis queue (``receive_single``) while any local channel waits,
    and files each message in its channel's inbox: one task per event loop, where
    channels-redis had every waiting receive() hold two tasks and an ``asyncio.wait``
    (~3 KB per idle socket) to take turns at the same read."""

    def __init__(self, layer: CoreChannelLayer, real_channel: str) -> None:
        self.layer = layer
        self.real_channel = real_channel
        self.waiting = 0
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        """Cancel the read and wait until it has let go of its Redis connection and lock.
        Safe at any point: a message popped but not yet filed is still in channels-redis'
        backup queue and comes back on the next read."""
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    async def run(self) -> None:
        buffers = self.layer.receive_buffer
        try:
            while True:
                channels, message = await self.layer.receive_single(self.real_channel)
                for channel in channels if isinstance(channels, list) else [channels]:
                    buffers[channel].put_nowait(message)
        except Exception as exc:  # Redis went away: every waiting receive() raises it
            self.task = None
            for inbox in list(buffers.values()):
                inbox.fail(exc)


class CoreChannelLayer(RedisChannelLayer):
    """channels-redis' core layer with an :class:`Inbox` per local channel, one reader task per
    event loop for all of them, and a connection pool that makes a burst wait rather than
    fail."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.receive_buffer = defaultdict(functools.partial(Inbox, self.capacity))
        self._readers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LocalReader] = (
            weakref.WeakKeyDictionary()
        )

    async def receive(self, channel: str) -> dict[str, Any]:
        if "!" not in channel:
            return await super().receive(channel)
        assert self.require_valid_channel_name(channel)
        loop = asyncio.get_running_loop()
        reader = self._readers.get(loop)
        if reader is None:
            reader = self._readers[loop] = _LocalReader(self, self.non_local_name(channel))
        inbox = self.receive_buffer[channel]
        reader.waiting += 1
        try:
            if inbox.empty():
                reader.start()
            return await inbox.get()
        except asyncio.CancelledError:
            # The last receiver leaving stops the read (a receiver that got its message calls
            # again at once: the read goes on for it).
            if reader.waiting == 1:
                await reader.stop()
            raise
        finally:
            reader.waiting -= 1
            if inbox.idle() and self.receive_buffer.get(channel) is inbox:
                del self.receive_buffer[channel]

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
