"""Channels' consumer loop (``AsyncConsumer.__call__`` with ``await_many_dispatch``), waiting
without ``asyncio.wait``.

``await_many_dispatch`` calls ``asyncio.wait`` for every message a socket gets: a new set, a
future, a callback on each source and their removal, per message and per socket. Here each wait
is one future woken by the sources' done callbacks, which costs less per delivered message
(docs/performance.md, "Every trade to bots": daphne's CPU per delivery is the trade stream's
bound) and holds less while idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer


async def dispatch_from(sources: list, dispatch: Callable[[Any], Awaitable[None]]) -> None:
    """channels' ``await_many_dispatch`` without ``asyncio.wait``: one reading task per source
    (the socket, the channel layer), each message dispatched in turn as it arrives."""
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(source()) for source in sources]
    try:
        while True:
            woken = loop.create_future()

            def wake(_task, woken=woken):
                if not woken.done():
                    woken.set_result(None)

            for task in tasks:
                task.add_done_callback(wake)
            try:
                await woken
            finally:
                for task in tasks:
                    task.remove_done_callback(wake)
            for i, task in enumerate(tasks):
                if task.done():
                    result = task.result()
                    await dispatch(result)
                    tasks[i] = loop.create_task(sources[i]())
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def consume(consumer: Any, scope: dict, receive: Callable, send: Callable) -> None:
    """``AsyncConsumer.__call__`` for ``consumer``, waiting with :func:`dispatch_from`."""
    consumer.scope = scope
    consumer.channel_layer = get_channel_layer(consumer.channel_layer_alias)
    sources = [receive]
    if consumer.channel_layer is not None:
        consumer.channel_name = await consumer.channel_layer.new_channel()
        sources.append(functools.partial(consumer.channel_layer.receive, consumer.channel_name))
    consumer.base_send = send
    with contextlib.suppress(StopConsumer):
        await dispatch_from(sources, consumer.dispatch)
