"""Channels' consumer loop (``AsyncConsumer.__call__`` with ``await_many_dispatch``), waiting
without ``asyncio.wait``, and a channel-layer message handled the moment it arrives.

``await_many_dispatch`` calls ``asyncio.wait`` for every message a socket gets: a new set, a
future, a callback on each source and their removal, per message and per socket. Here each wait
is one future woken by the sources' done callbacks.

And most channel-layer messages skip the loop altogether: a layer that can (the pub/sub layer,
``listen``) hands each message to a socket's listener as it decodes it, once for all the
sockets of its group, and the consumer handles it there and then (``deliver_now``) when it is
idle: nothing taken from a source waits to be dispatched and nothing of its channel is queued.
Otherwise (a handshake, a subscribe reading its snapshot, a message already queued) the message
queues and the loop dispatches it in turn, so each socket still handles its messages one at a
time and in order. The frame goes out through :func:`text_sender`, daphne's send without the
ASGI coroutines around it. No task, future or queue per delivered message: this is daphne's CPU
per trade to a bot (docs/performance.md, "Every trade to bots").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer


class Loop:
    """One consumer's wait on its sources (the socket, the channel layer), each message
    dispatched in turn as it arrives: channels' ``await_many_dispatch`` without
    ``asyncio.wait``. ``busy`` counts the messages taken from a source and not yet
    dispatched: while it is not zero, a message must queue behind them."""

    __slots__ = ("busy", "deliver_now", "dispatch", "sources")

    def __init__(
        self,
        sources: list,
        dispatch: Callable[[Any], Awaitable[None]],
        deliver_now: Callable[[Any], bool] | None = None,
    ) -> None:
        self.sources = sources
        self.dispatch = dispatch
        self.deliver_now = deliver_now
        self.busy = 0

    def offer(self, message: Any) -> bool:
        """The channel layer's listener: the message handled at once (True), or to be queued
        behind what this loop has taken and not yet dispatched."""
        return not self.busy and self.deliver_now(message)

    async def take(self, source: Callable[[], Awaitable[Any]]) -> Any:
        message = await source()
        self.busy += 1  # in the step that took it: nothing can overtake it from here
        return message

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self.take(source)) for source in self.sources]
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
                        try:
                            await self.dispatch(result)
                        finally:
                            self.busy -= 1
                        tasks[i] = loop.create_task(self.take(self.sources[i]))
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def consume(consumer: Any, scope: dict, receive: Callable, send: Callable) -> None:
    """``AsyncConsumer.__call__`` for ``consumer``, waiting with :class:`Loop`; the consumer's
    ``deliver_now(message) -> bool`` takes the channel-layer messages it can handle at once
    (False: queue it), and ``send_text`` is set to :func:`text_sender` of ``send``."""
    consumer.scope = scope
    consumer.channel_layer = get_channel_layer(consumer.channel_layer_alias)
    consumer.base_send = send
    consumer.send_text = text_sender(send)
    sources = [receive]
    loop = Loop(sources, consumer.dispatch, consumer.deliver_now)
    if consumer.channel_layer is not None:
        consumer.channel_name = await consumer.channel_layer.new_channel()
        sources.append(functools.partial(consumer.channel_layer.receive, consumer.channel_name))
        listen = getattr(consumer.channel_layer, "listen", None)
        if listen is not None:
            listen(consumer.channel_name, loop.offer)
    with contextlib.suppress(StopConsumer):
        await loop.run()


def text_sender(send: Callable[[dict], Awaitable[None]]) -> Callable[[bytes], None]:
    """A synchronous send of one text frame (its UTF-8 bytes) through the ASGI ``send``.

    Under daphne, its own reply path without the coroutine around it (``Server.handle_reply``:
    nothing is sent to a connection daphne has dropped) to the protocol's ``send_text_frame``
    (streaming/patches/websocket.py; plain daphne's ``serverSend``). Any other server's
    ``send`` (the in-process test communicator's) runs to completion at once; one that would
    wait is refused, naming why.
    """
    daphne = sys.modules.get("daphne.server")
    handle_reply = getattr(send, "func", None)
    if daphne is not None and getattr(handle_reply, "__func__", None) is daphne.Server.handle_reply:
        connections, protocol = handle_reply.__self__.connections, send.args[0]
        # Plain ``daphne`` (not ``python -m streaming.serve``) runs its own protocol class.
        send_frame = getattr(protocol, "send_text_frame", None) or (
            lambda data: protocol.serverSend(data.decode(), False)
        )

        def send_text(data: bytes) -> None:
            state = connections.get(protocol)
            if state is not None and not state.get("disconnected"):
                send_frame(data)

        return send_text

    def send_text(data: bytes) -> None:
        sending = send({"type": "websocket.send", "text": data.decode()})
        try:
            sending.send(None)
        except StopIteration:
            return
        sending.close()
        raise RuntimeError("this ASGI server's send waits; Livefolio's consumers run on daphne")

    return send_text
