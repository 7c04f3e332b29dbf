"""The consumers' wait on two sources (streaming.patches.dispatch.Loop, channels'
await_many_dispatch without asyncio.wait): every message is dispatched, one at a time, in the
order it arrived; a failing source ends the wait with its error; leaving cancels the readers."""

import asyncio

import pytest

from streaming.patches.dispatch import Loop, text_sender
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

    waiting = asyncio.ensure_future(Loop([socket.get, layer.get], dispatch).run())
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
        await asyncio.wait_for(Loop([read_socket, broken_layer], dispatch).run(), 5)
    assert reader_cancelled.is_set()


async def test_busy_counts_each_message_from_when_it_is_taken_until_it_is_dispatched():
    """A listener may handle a channel-layer message at once only while nothing taken from a
    source waits to be dispatched: busy is raised in the step that takes a message, before the
    loop wakes to dispatch it, and lowered once its dispatch ends (raising or not)."""
    socket, layer = Inbox(), Inbox()
    seen_busy = []
    release = asyncio.Event()

    async def dispatch(message):
        seen_busy.append((message, loop.busy))
        if message == "subscribe":
            await release.wait()  # a request reading its snapshot
        if message == "bad":
            raise ValueError("a handler failed")

    loop = Loop([socket.get, layer.get], dispatch)
    running = asyncio.ensure_future(loop.run())
    await asyncio.sleep(0)
    assert loop.busy == 0
    socket.put_nowait("subscribe")
    await asyncio.sleep(0)  # the reader took it; the loop has not run its dispatch yet
    assert loop.busy == 1
    await asyncio.sleep(0.01)
    layer.put_nowait("update")  # arrives while the request is handled: taken, waits its turn
    await asyncio.sleep(0.01)
    assert loop.busy == 2 and seen_busy == [("subscribe", 1)]
    release.set()
    await asyncio.sleep(0.01)
    assert seen_busy == [("subscribe", 1), ("update", 1)] and loop.busy == 0
    socket.put_nowait("bad")
    with pytest.raises(ValueError):
        await asyncio.wait_for(running, 5)
    assert loop.busy == 0


async def test_text_sender_runs_an_asgi_send_at_once_and_refuses_one_that_waits():
    sent = []

    async def immediate(message):
        sent.append(message)

    text_sender(immediate)(b"hello")
    assert sent == [{"type": "websocket.send", "text": "hello"}]

    async def waits(message):
        await asyncio.sleep(0.01)

    with pytest.raises(RuntimeError, match="send waits"):
        text_sender(waits)(b"hello")
