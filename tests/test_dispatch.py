"""The consumers' wait on two sources (streaming.patches.dispatch.dispatch_from, channels'
await_many_dispatch without asyncio.wait): every message is dispatched, one at a time, in the
order it arrived; a failing source ends the wait with its error; leaving cancels the readers."""

import asyncio

import pytest

from streaming.patches.dispatch import dispatch_from
from streaming.patches.layers import Inbox

pytestmark = pytest.mark.unit


async def test_messages_of_both_sources_are_dispatched_one_at_a_time_in_arrival_order():
    socket, layer = Inbox(), Inbox()
    seen, busy = [], []

    async def dispatch(message):
        busy.append(message)
        assert len(busy) == 1, "two handlers ran at once"
        await asyncio.sleep(0.001)
        seen.append(message)
        busy.pop()

    waiting = asyncio.ensure_future(dispatch_from([socket.get, layer.get], dispatch))
    for n in range(5):
        socket.put_nowait(f"s{n}")
        await asyncio.sleep(0.005)
        layer.put_nowait(f"l{n}")
        await asyncio.sleep(0.005)
    layer.put_nowait("l5")
    layer.put_nowait("l6")  # queued behind each other on one source
    await asyncio.sleep(0.05)
    assert seen == [m for n in range(5) for m in (f"s{n}", f"l{n}")] + ["l5", "l6"]
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_a_failing_source_ends_the_wait_with_its_error_and_cancels_the_other():
    socket = Inbox()
    reader_cancelled = asyncio.Event()

    async def read_socket():
        try:
            return await socket.get()
        except asyncio.CancelledError:
            reader_cancelled.set()
            raise

    async def broken_layer():
        await asyncio.sleep(0.01)
        raise ConnectionError("Redis went away")

    async def dispatch(message):
        raise AssertionError("nothing arrived")

    with pytest.raises(ConnectionError):
        await asyncio.wait_for(dispatch_from([read_socket, broken_layer], dispatch), 5)
    assert reader_cancelled.is_set()
