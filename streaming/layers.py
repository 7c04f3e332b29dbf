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
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from channels_redis.pubsub import RedisPubSubChannelLayer


class PubSubChannelLayer(RedisPubSubChannelLayer):
    """The pub/sub layer with a pipelined multi-group send."""

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
