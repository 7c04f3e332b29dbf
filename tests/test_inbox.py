"""The pub/sub layer's per-channel inbox (streaming.patches.layers.Inbox): what asyncio.Queue
did for it, in order, bounded like channels-redis' BoundedQueue, and never losing a message to a
cancelled reader."""

import asyncio

import pytest

from streaming.patches.layers import Inbox


async def test_messages_come_out_in_the_order_they_went_in():
    inbox = Inbox()
    assert inbox.empty() and inbox.qsize() == 0
    for n in range(5):
        inbox.put_nowait(n)
    assert inbox.qsize() == 5
    assert [await inbox.get() for _ in range(3)] == [0, 1, 2]
    assert [inbox.get_nowait(), inbox.get_nowait()] == [3, 4]
    assert inbox.empty()
    with pytest.raises(asyncio.QueueEmpty):
        inbox.get_nowait()


async def test_a_waiting_reader_gets_the_next_message():
    inbox = Inbox()
    reader = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    assert not reader.done()
    inbox.put_nowait("hello")
    assert await asyncio.wait_for(reader, 1) == "hello"
    assert inbox.empty()


async def test_a_full_bounded_inbox_drops_the_oldest():
    inbox = Inbox(3)
    for n in range(5):
        inbox.put_nowait(n)
    assert inbox.full()
    assert [inbox.get_nowait() for _ in range(3)] == [2, 3, 4]


async def test_a_cancelled_reader_loses_nothing_and_the_next_reader_gets_it():
    inbox = Inbox()
    first = asyncio.ensure_future(inbox.get())
    second = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait("only")  # wakes the first reader ...
    first.cancel()  # ... which is cancelled before it runs
    assert await asyncio.wait_for(second, 1) == "only"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_two_readers_each_get_one_message():
    inbox = Inbox()
    readers = [asyncio.ensure_future(inbox.get()) for _ in range(2)]
    await asyncio.sleep(0)
    inbox.put_nowait("a")
    inbox.put_nowait("b")
    assert sorted(await asyncio.gather(*readers)) == ["a", "b"]


async def test_a_failed_inbox_raises_in_its_waiting_reader_and_in_every_later_get():
    lost = ConnectionError("subscription lost")
    waiting, holding = Inbox(), Inbox()
    reader = asyncio.ensure_future(waiting.get())
    holding.put_nowait("queued before the loss")
    await asyncio.sleep(0)
    waiting.fail(lost)
    holding.fail(lost)
    with pytest.raises(ConnectionError, match="subscription lost"):
        await asyncio.wait_for(reader, 1)
    holding.put_nowait("arrived after the loss")
    for _ in range(2):
        with pytest.raises(ConnectionError, match="subscription lost"):
            await asyncio.wait_for(holding.get(), 1)
    assert holding.empty()
