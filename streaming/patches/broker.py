"""What Livefolio reads of kombu's Redis transport's own bookkeeping (kombu pinned exactly in
pyproject.toml; tests/test_library_contracts.py checks the name is still kombu's)."""

from __future__ import annotations

# kombu's Redis transport notes each task a worker has taken, and not yet acknowledged, in this
# sorted set, scored by when it was taken (``kombu.transport.redis.Channel.unacked_index_key``);
# with acks_late (settings) that is each task running.
UNACKED_INDEX_KEY = "unacked_index"
