"""One self-healing WebSocket connection to an exchange, shared by the exchange adapters.

:class:`FeedConnection` owns the parts every exchange needs and none should get subtly
different: connect with a timeout, subscribe (the adapter's ``on_open``), read, notice a silent
stall, count malformed frames without dying, reconnect with capped full-jitter backoff, and
report every state change once through :class:`~streaming.feeds.base.FeedStats`.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from .base import Backoff, Emit, Feed, FeedStats

log = logging.getLogger(__name__)

RAW_LOG_LIMIT = 300  # characters of a bad frame worth putting in a log line

# Errors that mean "this frame is not what the protocol promised", not "our code is broken".
FRAME_ERRORS = (ValueError, KeyError, TypeError, IndexError, ArithmeticError, AttributeError)


class ReconnectNow(Exception):
    """Raised by a message handler to drop the connection and open a new one."""


class Stalled(Exception):
    """Nothing arrived for longer than the stall timeout."""


def truncate(raw: str | bytes, limit: int = RAW_LOG_LIMIT) -> str:
    """A frame shortened for a log line, with its full length when cut."""
    text = raw if isinstance(raw, str) else repr(raw)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


OnOpen = Callable[[ClientConnection], Awaitable[None]]
OnMessage = Callable[[str | bytes], Awaitable[None]]


class FeedConnection:
    """Keeps one WebSocket to ``url()`` open until cancelled.

    ``on_open`` runs after every (re)connect and must (re)subscribe; ``on_message`` gets every
    data frame. A handler may raise :class:`ReconnectNow`; any protocol-level error it raises
    (see ``FRAME_ERRORS``) is counted as a malformed frame and the connection carries on.
    """

    def __init__(
        self,
        *,
        label: str,
        stats: FeedStats,
        url: Callable[[], str],
        on_open: OnOpen,
        on_message: OnMessage,
        stall_timeout: float,
        backoff: Backoff | None = None,
        open_timeout: float = 10.0,
        send_timeout: float = 5.0,
        close_timeout: float = 2.0,
        ping_interval: float | None = 20.0,
        max_connection_age: float | None = None,
        max_size: int = 2**22,
        subscribe_timeout: float | None = None,
    ) -> None:
        """
        Args:
            label: names this connection in logs and in ``stats.connections``.
            stall_timeout: reconnect when nothing arrived for this long (seconds).
            ping_interval: our own keepalive pings; ``None`` when the exchange pings us.
            max_connection_age: reconnect on our terms before the exchange's hard limit.
            subscribe_timeout: bound on ``on_open``; defaults to ``open_timeout``.
        """
        if stall_timeout <= 0:
            raise ValueError("stall_timeout must be positive")
        self.label = label
        self.stats = stats
        self._url = url
        self._on_open = on_open
        self._on_message = on_message
        self.stall_timeout = stall_timeout
        self.backoff = backoff or Backoff()
        self.open_timeout = open_timeout
        self.send_timeout = send_timeout
        self.close_timeout = close_timeout
        self.ping_interval = ping_interval
        self.max_connection_age = max_connection_age
        self.max_size = max_size
        self.subscribe_timeout = subscribe_timeout or open_timeout
        self.ws: ClientConnection | None = None
        self._last_message = 0.0
        self._reconnect_reason: str | None = None
        self._active = asyncio.Event()
        self._active.set()

    @property
    def connected(self) -> bool:
        return self.ws is not None

    def set_active(self, active: bool) -> None:
        """Connect only while there is something to subscribe to (some exchanges drop idle
        connections, and an idle reconnect loop would only burn the backoff)."""
        if active:
            self._active.set()
        else:
            self._active.clear()
            self.request_reconnect("nothing to subscribe to")

    def request_reconnect(self, reason: str) -> None:
        """Ask for a fresh connection; honoured within a second by the watchdog."""
        if self.ws is not None:
            self._reconnect_reason = reason

    async def send_json(self, message: dict[str, Any]) -> None:
        """Send one JSON message with a timeout; raises if not connected or the send fails."""
        ws = self.ws
        if ws is None:
            raise ConnectionError(f"{self.label}: not connected")
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns a result that completed
        # as its task was cancelled, and the cancellation is lost (the feed would not stop).
        async with asyncio.timeout(self.send_timeout):
            await ws.send(json.dumps(message))

    async def run(self) -> None:
        """Connect, read and reconnect until cancelled."""
        first = True
        try:
            while True:
                if not self._active.is_set():
                    self._set_state("stopped", "no symbols")
                    await self._active.wait()
                    first = True
                if not first:
                    self.stats.reconnects += 1
                first = False
                self._set_state("connecting")
                reason = await self._connect_once()
                if not self._active.is_set():
                    continue
                delay = self.backoff.next_delay()
                self._set_state("backoff", f"{reason}; retry in {delay:.2f}s")
                await asyncio.sleep(delay)
        finally:
            self.ws = None
            self._set_state("stopped")

    async def _connect_once(self) -> str:
        """One connection's life; returns why it ended. Only cancellation escapes."""
        url = self._url()
        try:
            async with websockets.connect(
                url,
                open_timeout=self.open_timeout,
                close_timeout=self.close_timeout,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_interval,
                max_size=self.max_size,
            ) as ws:
                self.ws = ws
                self._reconnect_reason = None
                self._last_message = time.monotonic()
                self.backoff.connected()
                self._set_state("connected")
                try:
                    async with asyncio.timeout(self.subscribe_timeout):  # see send_json
                        await self._on_open(ws)
                    return await self._pump(ws)
                except Stalled as exc:
                    # A silent peer would not answer a close handshake either; don't wait for it.
                    ws.transport.abort()
                    return str(exc)
                finally:
                    self.ws = None
        except asyncio.CancelledError:
            raise
        except ReconnectNow as exc:
            return str(exc)
        except websockets.ConnectionClosed as exc:
            return f"connection closed: {exc}"
        except TimeoutError:
            return "timed out"
        except (OSError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
            return f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            log.exception("feed %s[%s]: unexpected error", self.stats.feed, self.label)
            return f"unexpected {type(exc).__name__}"

    async def _pump(self, ws: ClientConnection) -> str:
        """Read until the connection ends, with a watchdog for stalls and planned reconnects."""
        reader = asyncio.create_task(self._read(ws))
        opened = time.monotonic()
        check_every = min(1.0, self.stall_timeout / 4)
        try:
            while True:
                done, _ = await asyncio.wait({reader}, timeout=check_every)
                if done:
                    reader.result()  # re-raises ReconnectNow / ConnectionClosed
                    return "closed by exchange"
                now = time.monotonic()
                # Only data frames prove a stream alive: a ping (Binance pings every 20 s)
                # proves the socket, and websockets answers it without telling us.
                alive = self._last_message
                if now - alive > self.stall_timeout:
                    raise Stalled(f"stalled: nothing for {now - alive:.1f}s")
                if self._reconnect_reason:
                    raise ReconnectNow(self._reconnect_reason)
                if self.max_connection_age is not None and now - opened > self.max_connection_age:
                    raise ReconnectNow("planned reconnect before the exchange's connection limit")
        finally:
            if not reader.done():
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

    async def _read(self, ws: ClientConnection) -> None:
        async for raw in ws:
            self._last_message = time.monotonic()
            try:
                await self._on_message(raw)
            except ReconnectNow:
                raise
            except FRAME_ERRORS as exc:
                self.stats.malformed_frames += 1
                log.warning(
                    "feed %s[%s]: malformed frame (%s: %s): %s",
                    self.stats.feed,
                    self.label,
                    type(exc).__name__,
                    exc,
                    truncate(raw),
                )

    def _set_state(self, state: Any, reason: str = "") -> None:
        self.stats.set_state(state, reason, connection=self.label)


class SingleConnectionFeed(Feed):
    """A feed that carries all its symbols over one connection (Coinbase, Kraken).

    Subclasses subscribe in :meth:`on_open` (called after every reconnect), handle frames in
    :meth:`on_message` and follow live symbol changes in :meth:`on_symbols_changed`.
    """

    def __init__(
        self,
        *,
        emit: Emit,
        url: str,
        stall_timeout: float,
        backoff_base: float,
        backoff_cap: float,
        open_timeout: float,
        send_timeout: float,
        close_timeout: float,
        ping_interval: float | None,
    ) -> None:
        super().__init__(emit=emit)
        self.url = url
        self.connection = FeedConnection(
            label="conn0",
            stats=self.stats,
            url=self.connect_url,
            on_open=self.on_open,
            on_message=self.on_message,
            stall_timeout=stall_timeout,
            backoff=Backoff(base=backoff_base, cap=backoff_cap),
            open_timeout=open_timeout,
            send_timeout=send_timeout,
            close_timeout=close_timeout,
            ping_interval=ping_interval,
        )
        self.connection.set_active(False)

    def connect_url(self) -> str:
        return self.url

    async def set_symbols(self, symbols: frozenset[str]) -> None:
        """Subscribe and unsubscribe live; without symbols, stay disconnected."""
        before = self.symbols
        await super().set_symbols(symbols)
        added, removed = self.symbols - before, before - self.symbols
        self.connection.set_active(bool(self.symbols))
        if self.connection.connected and self.symbols and (added or removed):
            try:
                await self.on_symbols_changed(added, removed)
            except Exception as exc:
                log.warning("feed %s: live resubscribe failed (%s); reconnecting", self.name, exc)
                self.connection.request_reconnect("live resubscribe failed")

    async def run(self) -> None:
        """Stream until cancelled; the connection reconnects by itself."""
        await self.connection.run()

    @abc.abstractmethod
    async def on_open(self, ws: ClientConnection) -> None:
        """Subscribe every current symbol on a fresh connection."""

    @abc.abstractmethod
    async def on_message(self, raw: str | bytes) -> None:
        """Handle one data frame."""

    @abc.abstractmethod
    async def on_symbols_changed(self, added: frozenset[str], removed: frozenset[str]) -> None:
        """Follow a symbol change on the live connection."""
