"""Livefolio's channel layers: channels-redis' pub/sub layer plus one pipelined batch send, and
its core layer with a connection pool that waits.

Built on private names of channels-redis 4.3 (pinned exactly in pyproject.toml and checked by
tests/test_library_contracts.py); tests/test_layers.py runs them against the real Redis.

Why pub/sub and not the core ``RedisChannelLayer`` (docs/performance.md, "Decisions"): the core
layer makes several Redis round-trips per message behind a process-wide lock and keeps a list
per consumer; the pub/sub layer is one ``PUBLISH`` per group message and one subscription per
group per server process. Delivery is at most once with either: snapshots and ``seq`` keep
clients correct.

Two additions. ``group_send_many``: a Celery task publishes hundreds of valuations at once, and
writing all their PUBLISH commands at once per Redis shard (packed here) costs one round-trip
instead of one per message. ``listen``: a message is decoded once as it arrives, not once per
member socket, and handed to each member's listener, which handles it there and then
(streaming/patches/dispatch.py); a member that cannot (busy, or something of its own queued)
gets it queued as before.

When the connection that carries a server's subscriptions is lost (Redis down or restarted),
channels-redis re-subscribes silently and what was published meanwhile is gone without a word.
Here every local channel it carried raises :class:`SubscriptionLost` in ``receive`` instead, so
its socket closes with 4503 and the client resyncs, as with the core layer. Each channel's
messages wait in an :class:`Inbox`, which channels-redis' queue cannot do: fail its reader.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import redis
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import (
    RedisPubSubChannelLayer,
    RedisPubSubLoopLayer,
    RedisSingleShardConnection,
)
from channels_redis.utils import _wrap_close, create_pool
from redis import asyncio as aioredis
from redis.asyncio import BlockingConnectionPool

from streaming import namespace

log = logging.getLogger(__name__)


class Inbox:
    """The part of ``asyncio.Queue`` the pub/sub layer uses (``get``, ``get_nowait``,
    ``put_nowait``, ``empty``, ``full``, ``qsize``), holding nothing while empty, that can fail.

    With ``maxsize`` it is bounded the way channels-redis' ``BoundedQueue`` is: a put into a full
    inbox drops the oldest message (the consumer stopped reading; delivery is at most once).
    After :meth:`fail`, every ``get`` raises: nothing more can arrive for it.
    """

    __slots__ = ("_error", "_getters", "_items", "maxsize")

    @property
    def failed(self) -> bool:
        return self._error is not None

    def __init__(self, maxsize: int = 0) -> None:
        self.maxsize = maxsize
        self._items: collections.deque | None = None  # made on the first put, dropped when empty
        self._getters: list[asyncio.Future] | None = None
        self._error: BaseException | None = None

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return 0 < self.maxsize <= self.qsize()

    def put_nowait(self, item: Any) -> None:
        if self._error is not None:
            return  # failed: its reader is on its way out
        if self._items is None:
            self._items = collections.deque()
        elif self.full():
            self._items.popleft()
        self._items.append(item)
        self._wake_next()

    def get_nowait(self) -> Any:
        if self._error is not None:
            raise self._error
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item

    async def get(self) -> Any:
        while not self._items and self._error is None:
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

    def fail(self, error: BaseException) -> None:
        """Drop what is queued and make every ``get``, waiting or to come, raise ``error``."""
        self._error = error
        self._items = None
        while self._getters:
            self._wake_next()

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
    """channels-redis' core layer with a connection pool that makes a burst wait rather than
    fail."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("prefix", namespace.redis_prefix())
        super().__init__(*args, **kwargs)

    def create_pool(self, index: int) -> Any:
        host = dict(self.hosts[index])
        if "address" not in host:
            return super().create_pool(index)  # sentinels: channels-redis' own pool
        return BlockingConnectionPool.from_url(
            host.pop("address"), max_connections=POOL_SIZE, timeout=POOL_WAIT_SECONDS, **host
        )


class SubscriptionLost(redis.ConnectionError):
    """Raised by the pub/sub layer's ``receive`` for a channel whose Redis subscription was lost
    (Redis down or restarted): what was published meanwhile is gone, so the consumer must start
    over (the sockets close with 4503 and the clients resync), as with the core layer."""


async def _pass_on(response: Any) -> Any:
    return response


class _PubSubShard(RedisSingleShardConnection):
    """One Redis shard's subscription connection. channels-redis re-subscribes silently after a
    reconnect, and messages published in between are lost without a word; this one fails every
    local channel the connection carried and starts over with an empty subscription."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lost: str | None = None  # why, once the connection is lost, until handled

    def _ensure_redis(self) -> None:
        # channels-redis 4.3's own, with our PubSub (check it again when upgrading channels-redis).
        if self._redis is None:
            self._redis = aioredis.Redis(connection_pool=create_pool(self.host))
            self._pubsub = self._new_pubsub()

    def _new_pubsub(self) -> Any:
        # redis-py (8.1) reads a RESP3 subscription's messages through a default push handler
        # that formats each whole message into a debug line before asking whether debug is on
        # (redis/redis-py#4230), a cost that grows with every message's size. This handler
        # passes each message on as it is.
        return self._redis.pubsub(push_handler_func=_pass_on)

    def _receive_message(self, message: Any) -> None:
        # channels-redis' own puts the message's bytes in each member channel's queue, decoded
        # again by each receive. Here it is decoded once, and a member's listener (the layer's
        # listen()) may take it at once; whatever a listener leaves is queued, decoded.
        if message is None:
            return
        layer = self.channel_layer
        name = message["channel"]
        if isinstance(name, bytes):
            name = name.decode()
        if name in layer.channels:
            members: Any = (name,)
        else:
            members = layer.groups.get(name)
            if not members:
                return
            members = tuple(members)  # a listener's clean-up must not change what we walk
        decoded = layer.channel_layer.deserialize(message["data"])
        listeners = layer.listeners
        for channel in members:
            inbox = layer.channels.get(channel)
            if inbox is None:
                continue
            listener = listeners.get(channel)
            if listener is not None and inbox.empty() and not inbox.failed:
                try:
                    if listener(decoded):
                        continue
                except Exception:
                    # Consumers keep their own errors (dispatch.py); this is a bug in one.
                    log.exception("channel layer: a listener failed; the message is dropped")
                    continue
            inbox.put_nowait(decoded)

    async def subscribe(self, channel: str) -> None:
        await super().subscribe(channel)
        # Whoever reconnects it (the receive loop, a subscribe, redis-py's retries), we hear of it.
        self._pubsub.connection.register_connect_callback(self._reconnected)

    def _reconnected(self, connection: Any) -> None:
        self._lost = self._lost or "the connection was made again"

    async def _do_receiving(self) -> None:
        while True:
            try:
                if self._lost is None and self._pubsub and self._pubsub.subscribed:
                    message = await self._pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=0.1
                    )
                    self._receive_message(message)
                elif self._lost is None:
                    await asyncio.sleep(0.1)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                self._lost = self._lost or str(exc) or type(exc).__name__
            except Exception:
                log.exception("channel layer: unexpected error receiving from Redis")
                await asyncio.sleep(1)
            if self._lost is not None:
                await self._start_over()

    async def _start_over(self) -> None:
        """Fail the channels the lost connection carried; drop its subscriptions (their
        consumers are closing), so a reconnect renews none of them."""
        reason, self._lost = self._lost, None
        async with self._lock:
            failed = self.channel_layer.fail_channels_of(self, reason)
            old, self._subscribed_to = self._pubsub, set()
            self._pubsub = self._new_pubsub() if self._redis is not None else None
            if old is not None and old.connection is not None:
                old.connection.deregister_connect_callback(self._reconnected)
        log.warning(
            "channel layer: subscription to Redis lost (%s); %d local channels told", reason, failed
        )
        if old is not None:
            with contextlib.suppress(Exception):  # Redis may still be down
                await old.aclose()


class _PubSubLoopLayer(RedisPubSubLoopLayer):
    def __init__(self, *args: Any, capacity: int = 100, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.capacity = capacity
        self._shards = [_PubSubShard(shard.host, self) for shard in self._shards]
        # A local channel's listener: called with each decoded message for it (its own or a
        # group's) while nothing of it is queued; True when it took the message.
        self.listeners: dict[str, Callable[[Any], bool]] = {}

    async def _subscribe_to_channel(self, channel: str) -> None:
        self.channels[channel] = Inbox(self.capacity)
        try:
            await self._get_shard(channel).subscribe(channel)
        except BaseException:
            # Redis is down: the consumer gives up (4503); no reader will ever clean this up.
            self.channels.pop(channel, None)
            raise

    async def receive(self, channel: str) -> Any:
        # channels-redis' own, its messages already decoded (_PubSubShard._receive_message).
        if channel not in self.channels:
            await self._subscribe_to_channel(channel)
        try:
            return await self.channels[channel].get()
        except SubscriptionLost:
            self.channels.pop(channel, None)  # its subscription went with the connection
            self.listeners.pop(channel, None)
            raise
        except (TimeoutError, asyncio.CancelledError, GeneratorExit):
            # As channels-redis: a cancelled receive is a consumer leaving; its channel goes.
            self.listeners.pop(channel, None)
            if self.channels.pop(channel, None) is not None:
                try:
                    await self._get_shard(channel).unsubscribe(channel)
                except BaseException:
                    log.exception("channel layer: unsubscribing a channel that ended failed")
            raise

    def fail_channels_of(self, shard: RedisSingleShardConnection, reason: str) -> int:
        """Make every local channel that heard through ``shard`` (its own name or one of its
        groups) raise :class:`SubscriptionLost` in ``receive``; returns how many."""
        lost = {channel for channel in self.channels if self._get_shard(channel) is shard}
        for group, members in self.groups.items():
            if self._get_shard(group) is shard:
                lost.update(members)
        message = f"subscription to Redis lost ({reason})"
        for channel in lost:
            inbox = self.channels.get(channel)
            if inbox is not None:
                # One exception each: a shared one would collect every reader's traceback.
                inbox.fail(SubscriptionLost(message))
        return len(lost)


class PubSubChannelLayer(RedisPubSubChannelLayer):
    """The pub/sub layer with a pipelined multi-group send and a channel that fails when its
    subscription is lost."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("prefix", namespace.redis_prefix())
        super().__init__(*args, **kwargs)

    def _get_layer(self) -> RedisPubSubLoopLayer:
        loop = asyncio.get_running_loop()
        if loop not in self._layers:
            self._layers[loop] = _PubSubLoopLayer(*self._args, **self._kwargs, channel_layer=self)
            _wrap_close(self, loop)
        return self._layers[loop]

    def listen(self, channel: str, listener: Callable[[Any], bool]) -> None:
        """Hand each message for the local ``channel`` to ``listener`` as it arrives, while
        nothing of the channel is queued; what it declines (returns False) is queued for
        ``receive``. Forgotten when the channel ends (:func:`forget_channel`)."""
        self._get_layer().listeners[channel] = listener

    async def group_send_many(self, messages: list[tuple[str, dict[str, Any]]]) -> None:
        """Send each ``(group, message)``, in order, one pipelined write per shard.

        The PUBLISH commands are packed here, not by redis-py's pipeline: its ``pack_command``
        copies and encodes every argument (a valuation is kilobytes) and a pipeline parses each
        reply through its command machinery; packing them at once costs far less. Every reply is
        read before the connection goes back to its pool; on any error (an error reply, a
        timeout, a cancellation) it is closed instead, so no reply is left for the next batch to
        read as its own (tests/test_layers.py).
        """
        layer = self._get_layer()
        by_shard: dict[Any, list[tuple[str, bytes]]] = defaultdict(list)
        for group, message in messages:
            channel = layer._get_group_channel_name(group)
            by_shard[layer._get_shard(channel)].append((channel, self.serialize(message)))
        for shard, items in by_shard.items():
            # The shard's lock serialises its connection use with subscribe/unsubscribe.
            async with shard._lock:
                shard._ensure_redis()
                pool = shard._redis.connection_pool
                connection = await pool.get_connection()
                try:
                    await connection.send_packed_command(publish_commands(items))
                    for _ in items:
                        await connection.read_response()
                except BaseException:
                    # An error reply (an ACL refusing a channel) leaves the later replies unread;
                    # a timeout or cancellation, redis-py closes the connection itself. Without
                    # waiting (the shard's lock is held), and never hiding the first error.
                    with contextlib.suppress(Exception):
                        await connection.disconnect(nowait=True)
                    raise
                finally:
                    await pool.release(connection)


def publish_commands(items: list[tuple[str, bytes]]) -> list[bytes]:
    """``PUBLISH channel data`` of each ``(channel, data)``, as RESP (the protocol's request
    form: an array of bulk strings, the same in RESP2 and RESP3)."""
    packed = []
    for channel, data in items:
        name = channel.encode()
        packed.append(b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n" % (len(name), name, len(data)))
        packed.append(data)
        packed.append(b"\r\n")
    return packed


def forget_channel(layer: Any, channel: str) -> None:
    """Drop what a layer keeps for a local channel whose consumer has ended. channels-redis' core
    layer keeps an empty receive queue per channel a cancelled ``receive`` leaves behind, so a
    server would grow with every reconnect; the pub/sub layer forgets its own."""
    buffers = getattr(layer, "receive_buffer", None)
    if buffers is not None:
        buffers.pop(channel, None)
    if isinstance(layer, PubSubChannelLayer):
        layer._get_layer().listeners.pop(channel, None)
