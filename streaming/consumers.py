"""WebSocket consumers: adapt the channel layer and the wire protocol to one connection."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from autobahn.exception import Disconnected
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import InterfaceError, OperationalError

from portfolio.models import Instrument
from portfolio.security import context_id, new_id
from portfolio.selectors import live_states, market_state
from streaming import events, marketdata, protocol, streams, tokens
from streaming.flow import Conflator, TokenBucket, UserConnections
from streaming.health import WS_CONNECTIONS, WS_MESSAGES_SENT, WS_REJECTED
from streaming.patches.dispatch import consume
from streaming.patches.layers import forget_channel
from streaming.watch import socket_watch

log = logging.getLogger(__name__)


def instrument_page_state(*, instrument: Instrument, user_id: int) -> dict[str, Any]:
    """The instrument page's snapshot: the domain's state of the instrument (quote, bars, stats,
    the user's position) and the market-data cache's recent trades and book."""
    return {
        **market_state.instrument_state(instrument=instrument, user_id=user_id),
        "trades": marketdata.recent_trades(instrument.id),
        "book": marketdata.latest_book(instrument.id),
    }


# WS_MESSAGES_SENT's child per message type: ``labels()`` takes a lock and builds a key each
# call, and a broadcast counts thousands of frames a second.
_SENT: dict[str, Any] = {}

# A service the socket depends on went away (Redis, the database): the client should reconnect
# later (4503), nothing is wrong with what it sent.
SERVICE_LOST = (redis.RedisError, OSError, OperationalError, InterfaceError)


class ProtocolConsumer(AsyncWebsocketConsumer):
    """Shared framing: sequence numbers, error replies, frame-size and JSON checks, a flood
    limit per connection and a cap on open connections per user.

    One error boundary (:meth:`dispatch`): whatever a frame or a channel-layer event raises
    becomes a documented error and close code, never daphne's 1011. One clean-up
    (:meth:`release`): a normal close, a crash, a lost Redis and a cancelled consumer all leave
    the groups, the socket watch, the connection slot and the metrics the same way.
    """

    endpoint = "protocol"
    seq = 0
    connection_cap: UserConnections | None = None
    accepted = False  # the handshake was accepted (an error frame can be sent)
    closing = False  # the server sent its close: nothing more is sent, no frame is handled
    released = False  # release() ran
    failing: asyncio.Task | None = None  # an event handled by deliver_now() raised: closing
    send_text: Any = None  # one text frame, synchronously (consume() sets it)

    async def __call__(self, scope, receive, send):
        self.connection_id = new_id("ws")
        context_id.set(self.connection_id)  # every log line of this socket carries its id
        try:
            await consume(self, scope, receive, send)
        except SERVICE_LOST as exc:
            # The channel layer's Redis went away: this socket can no longer hear its groups.
            # Close with 4503 so the client reconnects (with backoff) and gets a fresh snapshot.
            log.warning("channel layer lost (%s); closing with 4503", exc)
            await self.release(protocol.CLOSE_TRY_AGAIN_LATER)
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": protocol.CLOSE_TRY_AGAIN_LATER})
        except asyncio.CancelledError:
            # Cancelled by the server (it gave up waiting for a disconnect): give back the cap
            # slot and the group membership now rather than leaving them to expire.
            await self.release(1001)
            raise
        except Exception:
            # Outside any one frame (the boundary in dispatch() failed itself): still a
            # documented close, still the same clean-up.
            log.exception("WebSocket consumer failed; closing with 4500")
            await self.release(protocol.CLOSE_INTERNAL_ERROR)
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": protocol.CLOSE_INTERNAL_ERROR})
        finally:
            await self.release(1006)  # a no-op after a normal close: release() runs once
            if getattr(self, "channel_layer", None) is not None and hasattr(self, "channel_name"):
                forget_channel(self.channel_layer, self.channel_name)

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        self.bucket: TokenBucket | None = None  # made on the first frame: most never send one
        self.dropped = 0
        self.capped_user: int | None = None
        self.counted = False
        await super().websocket_connect(message)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        await self.release(message.get("code", 1005))
        raise StopConsumer()

    async def release(self, code: int) -> None:
        """The clean-up of every close, once, whatever ended the socket: ``disconnect`` (groups,
        the socket watch, timers), then ``forget`` (the connection slot, the metrics). A step
        that fails is logged and the next still runs."""
        if self.released:
            return
        self.released = True
        self.closing = True
        for step in (functools.partial(self.disconnect, code), self.forget):
            try:
                await step()
            except Exception:
                log.exception("clean-up after close %s failed", code)

    async def forget(self) -> None:
        """Give back the connection-cap slot and the connection count (once)."""
        if getattr(self, "capped_user", None) is not None:
            user, self.capped_user = self.capped_user, None
            await self.connection_cap.release(user, self.channel_name)
        if getattr(self, "counted", False):
            WS_CONNECTIONS.labels(self.endpoint).dec()
            self.counted = False

    def drop_scope_auth(self) -> None:
        """Once the socket is open it keeps its user's id and session key, not the scope's
        ``User``, decoded session and cookies (kept per idle socket): nothing reads them after
        the handshake (streaming.routing.SessionAuth makes this scope the consumer's own)."""
        for key in ("user", "session", "cookies"):
            self.scope.pop(key, None)

    async def accept(self, subprotocol=None, headers=None) -> None:
        await super().accept(subprotocol=subprotocol, headers=headers)
        self.accepted = True

    def count_connection(self) -> None:
        """Count this open socket in ``livefolio_ws_connections`` until :meth:`forget`."""
        WS_CONNECTIONS.labels(self.endpoint).inc()
        self.counted = True

    async def close(self, code=None, reason=None) -> None:
        """Close once; from then on nothing more is sent and no frame is handled (frames the
        client sent before it saw the close are still queued)."""
        if self.closing:
            return
        self.closing = True
        await super().close(code=code, reason=reason)

    async def accept_for(self, user_id: int) -> bool:
        """Accept the handshake unless the user is at the cap; then say why and close 4409."""
        if self.connection_cap is not None:
            if not await self.connection_cap.acquire(user_id, self.channel_name):
                WS_REJECTED.labels(protocol.ERROR_TOO_MANY_CONNECTIONS).inc()
                await self.accept()
                limit = self.connection_cap.limit
                self.send_error(
                    protocol.ERROR_TOO_MANY_CONNECTIONS,
                    f"at most {limit} open connections per user; close another tab first",
                )
                await self.close(code=protocol.CLOSE_TOO_MANY_CONNECTIONS)
                return False
            self.capped_user = user_id
        await self.accept()
        self.count_connection()
        return True

    async def dispatch(self, message: dict[str, Any]) -> None:
        """The error boundary of everything this socket handles: the handshake, each client
        frame, each channel-layer event."""
        try:
            await self.handle(message)
        except StopConsumer:
            raise
        except Exception as exc:
            await self.fail(exc)

    async def fail(self, exc: Exception) -> None:
        """A frame or event raised: a documented close instead of daphne's 1011. A lost Redis
        or database closes 4503 (reconnect later); anything else says ``internal_error`` and
        closes 4500. The clean-up runs when the close completes, as for any close."""
        if isinstance(exc, SERVICE_LOST):
            log.warning("a service is unavailable (%s); closing with 4503", exc)
            code, error = protocol.CLOSE_TRY_AGAIN_LATER, None
        else:
            log.error("handling a WebSocket message failed; closing with 4500", exc_info=exc)
            code, error = protocol.CLOSE_INTERNAL_ERROR, protocol.ERROR_INTERNAL
        if self.closing:
            return
        if self.accepted and error is not None:
            self.send_error(error, "the server failed to handle this; reconnect")
        # Before accept this refuses the handshake (HTTP 403): no close code can be sent yet.
        await self.close(code=code if self.accepted else None)

    async def handle(self, message: dict[str, Any]) -> None:
        # Channels runs aclose_old_connections() through sync_to_async (a thread hop) before
        # every handler. Channel-layer events touch no database, so they skip it: the hop would
        # be the largest single cost of each delivered message.
        if message["type"] == events.EVENT:
            self.on_event(message)
            return
        if message["type"] == "websocket.receive":
            # A client's frame: its handlers reach the database only through
            # database_sync_to_async, which closes stale connections itself. 5,000 idle sockets
            # answering a ping at once were 5,000 queued thread hops.
            await self.websocket_receive(message)
            return
        await super().dispatch(message)

    def deliver_now(self, message: dict[str, Any]) -> bool:
        """Handle a channel-layer event the moment the layer decodes it; False for any other
        message (it queues for :meth:`dispatch`). The layer calls this only while the socket
        handles nothing else and has nothing queued (streaming/patches/dispatch.py), so events
        keep their order. Its error boundary is :meth:`dispatch`'s: whatever the event raises
        closes the socket with a documented code, the same clean-up following."""
        if message["type"] != events.EVENT:
            return False
        if self.closing or self.failing is not None:
            return True  # nothing more is sent
        try:
            self.on_event(message)
        except Exception as exc:
            self.failing = asyncio.get_running_loop().create_task(self._fail_in_context(exc))
        return True

    async def _fail_in_context(self, exc: Exception) -> None:
        context_id.set(self.connection_id)  # this task's own context: its log lines
        await self.fail(exc)

    def on_event(self, event: dict[str, Any]) -> None:
        """A channel-layer event (``livefolio.event``) for this socket: synchronous, so it can
        run as the layer decodes it (:meth:`deliver_now`)."""

    def send_message(self, payload: dict[str, Any]) -> None:
        """Send ``payload`` as the next frame (numbered, stamped), at once."""
        if self.closing:
            return  # nothing after the close
        self.seq += 1
        kind = payload["type"]
        sent = _SENT.get(kind) or _SENT.setdefault(kind, WS_MESSAGES_SENT.labels(kind))
        sent.inc()
        try:
            self.send_text(protocol.encode_utf8(protocol.envelope(payload, seq=self.seq)))
        except Disconnected:
            # daphne's WebSocket library refuses to send once the client's close arrived;
            # the disconnect that follows runs the clean-up.
            self.closing = True

    def send_error(self, code: str, message: str) -> None:
        self.send_message(protocol.error(code=code, message=message))

    async def frame_error(self, error: protocol.FrameError) -> None:
        """Answer a frame that is not a message (the API echoes its request id)."""
        self.send_error(error.code, error.message)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closing:
            return  # sent before the client saw our close
        if self.bucket is None:
            rate, burst = settings.LIVEFOLIO_WS_RATE, settings.LIVEFOLIO_WS_BURST
            self.bucket = TokenBucket(rate=rate, burst=burst)
        if not self.bucket.allow():
            await self.reject_flood()
            return
        if bytes_data is not None:
            self.send_error(protocol.ERROR_BINARY_NOT_SUPPORTED, "send JSON text frames")
            return
        # surrogatepass: daphne hands over valid UTF-8 only; the in-process test client not
        if len(text_data.encode(errors="surrogatepass")) > settings.LIVEFOLIO_MAX_FRAME_BYTES:
            limit = settings.LIVEFOLIO_MAX_FRAME_BYTES
            self.send_error(protocol.ERROR_FRAME_TOO_LARGE, f"frames are limited to {limit} bytes")
            await self.close(code=protocol.CLOSE_FRAME_TOO_LARGE)
            return
        try:
            message = protocol.parse_client_frame(text_data)
        except protocol.FrameError as exc:
            await self.frame_error(exc)
            return
        await self.receive_message(message)

    async def reject_flood(self) -> None:
        """Drop the frame and say so; a client that keeps flooding is closed with 4429."""
        self.dropped += 1
        WS_REJECTED.labels(protocol.ERROR_RATE_LIMITED).inc()
        rate = settings.LIVEFOLIO_WS_RATE
        self.send_error(
            protocol.ERROR_RATE_LIMITED,
            f"at most {rate} messages per second (bursts of {self.bucket.burst}); "
            "this one was dropped",
        )
        if self.dropped >= settings.LIVEFOLIO_WS_BURST:
            log.warning("closing a flooding connection after %d dropped frames", self.dropped)
            await self.close(code=protocol.CLOSE_RATE_LIMITED)

    async def receive_message(self, message: dict[str, Any]) -> None:
        raise NotImplementedError


class PortfolioConsumer(ProtocolConsumer):
    """The live portfolio page: the user's portfolios, snapshot first, then valuations."""

    endpoint = "portfolio"
    connection_cap = UserConnections(
        scope="portfolio", limit_setting="LIVEFOLIO_WS_MAX_PER_USER", marks_presence=True
    )

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()  # before accept: the handshake is refused (HTTP 403)
            return
        await self.open_for(user, [events.user_group(user.id)])

    async def open_for(self, user, groups: list[str]) -> None:
        """Join ``groups``, accept (within the user's connection cap), send the snapshot and
        watch the session. The user's own group is always among them: logout reaches it."""
        self.user_id = user.id
        self.session_key = self.scope["session"].session_key
        self.drop_scope_auth()
        self.groups = groups
        self.valued_at: dict[int, str] = {}  # per portfolio, the newest valuation sent
        # At most LIVEFOLIO_WS_MAX_UPDATES a second per portfolio (or quote, book), averaged over
        # a second: ticks arrive at random, and a portfolio moved three times within 200 ms is
        # not a flood (a burst of 2 held such a third valuation up to 200 ms: the p99).
        rate = settings.LIVEFOLIO_WS_MAX_UPDATES
        self.conflator = Conflator(interval=1 / rate, burst=rate, send=self.send_message)
        # Join before reading the snapshot so no update committed in between is missed.
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)
        if not await self.accept_for(user.id):
            for group in groups:
                await self.channel_layer.group_discard(group, self.channel_name)
            return
        await self.send_snapshot()
        socket_watch().add(self)  # session checks and renewals: one task for all sockets

    async def forget(self) -> None:
        await socket_watch().remove(self)  # first: no renewal may re-add the cap entry
        await super().forget()

    async def disconnect(self, code: int) -> None:
        await socket_watch().remove(self)
        if hasattr(self, "conflator"):
            self.conflator.discard_pending()
        for group in getattr(self, "groups", ()):
            with contextlib.suppress(Exception):  # Redis may be the reason we are closing
                await self.channel_layer.group_discard(group, self.channel_name)

    async def renew(self) -> None:
        """Renew the group memberships and the connection-cap entry (streaming.watch calls this
        every UserConnections.REFRESH_SECONDS: both are lost if Redis restarts empty, and a cap
        entry expires unless renewed)."""
        for group in self.groups:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.connection_cap.refresh(self.user_id, self.channel_name)

    async def end_session(self) -> None:
        self.send_error(protocol.ERROR_SESSION_ENDED, "your session ended; log in again")
        await self.close(code=protocol.CLOSE_UNAUTHENTICATED)

    async def send_snapshot(self) -> None:
        states = await database_sync_to_async(live_states.portfolio_states_for_user)(
            user_id=self.user_id
        )
        self.conflator.discard_pending()  # the snapshot is newer than anything queued
        self.valued_at = {}
        for state in states:
            is_newer(self.valued_at, state)
        self.send_message(protocol.snapshot(portfolios=states))

    async def receive_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "resync":
            await self.send_snapshot()
        elif kind == "ping":
            self.send_message(protocol.pong())
        else:
            self.send_error(protocol.ERROR_UNKNOWN_TYPE, f"unknown message type {kind!r}")

    def on_event(self, event: dict[str, Any]) -> None:
        payload = events.payload_of(event)
        if payload["type"] == "valuation":
            if not is_newer(self.valued_at, payload["portfolio"]):
                return
            # A slow reader gets the latest valuation per portfolio, never a backlog.
            self.conflator.offer(("valuation", payload["portfolio"]["id"]), payload)
        else:
            self.send_message(payload)

    async def livefolio_session_ended(self, event: dict[str, Any]) -> None:
        if self.session_key and event["session"] == events.session_fingerprint(self.session_key):
            await self.end_session()


class InstrumentConsumer(PortfolioConsumer):
    """The instrument page: one instrument's quote, bars, trades and book. The same lifecycle as
    the portfolio socket (cap, snapshot, deltas, resync, session watch) on ``instrument.<id>``."""

    endpoint = "instrument"
    connection_cap = UserConnections(scope="instrument", limit_setting="LIVEFOLIO_WS_MAX_PER_USER")

    async def connect(self) -> None:
        user = self.scope.get("user")
        symbol = self.scope["url_route"]["kwargs"]["symbol"]
        if not protocol.clean_text(symbol):  # PostgreSQL refuses NUL: no such symbol
            await self.close()
            return
        instrument = await database_sync_to_async(Instrument.objects.filter(symbol=symbol).first)()
        if user is None or not user.is_authenticated or instrument is None:
            await self.close()
            return
        self.instrument = instrument
        await self.open_for(
            user, [events.instrument_group(instrument.id), events.user_group(user.id)]
        )

    async def send_snapshot(self) -> None:
        state = await database_sync_to_async(instrument_page_state)(
            instrument=self.instrument, user_id=self.user_id
        )
        self.conflator.discard_pending()
        self.send_message(protocol.instrument_snapshot(state=state))

    def on_event(self, event: dict[str, Any]) -> None:
        payload = events.payload_of(event)
        kind = payload["type"]
        if kind in ("quote", "book") and payload.get("instrument") == self.instrument.id:
            # A slow reader gets the latest quote and book, never a backlog.
            self.conflator.offer((kind, self.instrument.id), payload)
        elif kind == "trade" and payload.get("instrument") == self.instrument.id:
            self.send_message(payload)  # the tape shows every trade
        # Valuations reach this socket through the user's group; this page does not show them.


@dataclass(slots=True)
class Subscription:
    """One stream a connection follows, with its own sequence number and conflation state."""

    stream: streams.Stream
    max_rate: float | None
    mode: str | None = None  # a book stream's: protocol.BOOK_MODES
    stream_seq: int = 0
    book_seq: int = 0  # diffs mode: the book change the client's book is at
    trade_seq: int = 0  # trades: the newest trade_seq the client has (in a snapshot or sent)
    trade_as_of: str = ""  # and that trade's exchange time
    # Holds back what comes faster than max_rate, keeping the latest (None: no max_rate).
    conflator: Conflator | None = None
    skipped: int = 0  # trades conflated away since the last update: stream_seq jumps by these
    valued_at: dict[int, str] = field(default_factory=dict)  # a portfolio's newest, sent

    def stop(self) -> None:
        """Forget what max_rate holds back (a snapshot supersedes it, or the stream ends)."""
        if self.conflator is not None:
            self.conflator.discard_pending()
        self.skipped = 0

    def describe(self) -> dict[str, Any]:
        described = {
            "stream": self.stream.name,
            "max_rate": self.max_rate,
            "stream_seq": self.stream_seq,
        }
        if self.mode is not None:
            described["mode"] = self.mode
        return described


class RequestError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


MAX_ID_LENGTH = 64
MAX_ID_INT = 2**53 - 1  # the largest integer JSON readers (JavaScript's numbers) hold exactly
MAX_RATE_LIMIT = 100.0  # updates a second per stream
# Diffs older than a client's snapshot that may still be queued for it; a number further back
# means the feed numbers afresh (it restarted without its cached book).
DIFFS_BEHIND_A_SNAPSHOT = 1000


class ApiConsumer(ProtocolConsumer):
    """API v1 for bots and dashboards (/ws/v1/): token or session auth, then requests.

    Requests carry a client ``id`` echoed in the ``reply`` or ``error``. Streams send a snapshot
    on subscribe, then updates numbered per stream (``stream_seq``), conflated to ``max_rate``.
    The protocol is in docs/api.md and docs/asyncapi.yaml.
    """

    endpoint = "api"
    # Renewed every heartbeat; three missed renewals (a crashed server) free the slot. (Not
    # connection_cap: this socket signs in after it is accepted, and says why it refuses.)
    api_cap = UserConnections(
        scope="api",
        limit_setting="LIVEFOLIO_API_MAX_CONNECTIONS",
        marks_presence=True,
        lease=lambda: 3 * settings.LIVEFOLIO_API_HEARTBEAT_SECONDS,
    )

    async def connect(self) -> None:
        self.user_id: int | None = None
        self.username: str | None = None
        self.token_id: int | None = None
        self.session_key: str | None = None  # of the session that signed this connection in
        self.subscriptions: dict[str, Subscription] = {}
        self.by_source: dict[tuple[str, int], Subscription] = {}
        self.group_refs: dict[str, int] = {}
        self.holds_slot = False
        # Requests are limited per API contract (an error per refused request); a connection
        # whose refused requests come faster than that same rate and burst is closed 4429. The
        # base class's flood limit stands behind both.
        self.requests = TokenBucket(
            rate=settings.LIVEFOLIO_API_RATE, burst=settings.LIVEFOLIO_API_BURST
        )
        self.refusals = TokenBucket(
            rate=settings.LIVEFOLIO_API_RATE, burst=settings.LIVEFOLIO_API_BURST
        )
        self.last_request = time.monotonic()
        self.timers: list[asyncio.Task] = []
        self.auth_deadline: asyncio.Task | None = None
        await self.accept()
        self.count_connection()

        # Who this is; a refusal is sent after the welcome, which is always the first frame.
        user, refusal = None, None
        bearer = self._bearer_token()
        session_user = self.scope.get("user")
        if bearer is not None:
            token = await database_sync_to_async(tokens.token_lookup)(bearer)
            user = token.user if token else None
            self.token_id = token.pk if token else None
            if user is None:
                refusal = (
                    protocol.ERROR_UNAUTHORIZED,
                    "the bearer token is unknown, malformed or revoked",
                    protocol.CLOSE_UNAUTHENTICATED,
                )
        elif session_user is not None and session_user.is_authenticated:
            if self._has_origin():
                user = session_user
                self.session_key = self.scope["session"].session_key
            else:
                # Only a browser's Origin proves the cookie was sent by a page of this site.
                refusal = (
                    protocol.ERROR_UNAUTHORIZED,
                    "a session cookie needs the browser's Origin header; "
                    "a client without one authenticates with an API token",
                    protocol.CLOSE_UNAUTHENTICATED,
                )
        self.drop_scope_auth()
        if user is not None and not await self._sign_in(user):
            refusal = self._too_many_connections()
        self.send_message(
            protocol.welcome(
                user=self.username,
                auth_timeout=settings.LIVEFOLIO_API_AUTH_TIMEOUT,
                heartbeat=settings.LIVEFOLIO_API_HEARTBEAT_SECONDS,
            )
        )
        if refusal is not None:
            await self._refuse(*refusal)
            return
        self.timers.append(asyncio.create_task(self._heartbeats()))
        if self.user_id is None:
            self.auth_deadline = asyncio.create_task(self._auth_deadline())
            self.timers.append(self.auth_deadline)

    async def disconnect(self, code: int) -> None:
        # Any of these may be missing: the consumer can fail before connect() set them.
        for task in getattr(self, "timers", ()):
            task.cancel()
        for sub in getattr(self, "subscriptions", {}).values():
            sub.stop()
        for group in list(getattr(self, "group_refs", {})):
            with contextlib.suppress(Exception):  # Redis may be the reason we are closing
                await self.channel_layer.group_discard(group, self.channel_name)
            del self.group_refs[group]

    async def forget(self) -> None:
        if getattr(self, "holds_slot", False):
            self.holds_slot = False
            await self.api_cap.release(self.user_id, self.channel_name)
        await super().forget()

    # -- framing, auth and limits -------------------------------------------------------------

    def _has_origin(self) -> bool:
        return any(name == b"origin" for name, _value in self.scope.get("headers", []))

    def _bearer_token(self) -> str | None:
        for name, value in self.scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                return token.strip() if scheme.lower() == "bearer" else ""
        return None

    async def _refuse(
        self, code: str, message: str, close_code: int, request_id: Any = None
    ) -> None:
        """Send an error, then close with ``close_code``: nothing more is sent or served."""
        self.send_message(protocol.error(code=code, message=message, request_id=request_id))
        await self.close(code=close_code)

    def _too_many_connections(self) -> tuple[str, str, int]:
        return (
            protocol.ERROR_TOO_MANY_CONNECTIONS,
            f"at most {settings.LIVEFOLIO_API_MAX_CONNECTIONS} API connections per user",
            protocol.CLOSE_TOO_MANY_CONNECTIONS,
        )

    async def _sign_in(self, user) -> bool:
        """Take one of the user's connection slots; False when they are all taken."""
        if not await self.api_cap.acquire(user.id, self.channel_name):
            WS_REJECTED.labels(protocol.ERROR_TOO_MANY_CONNECTIONS).inc()
            return False
        self.holds_slot = True
        self.user_id = user.id
        self.username = user.get_username()
        # The user's group also says when this connection's token or session ends.
        await self._join(events.user_group(user.id))
        return True

    async def _join(self, group: str) -> None:
        if self.group_refs.get(group, 0) == 0:
            await self.channel_layer.group_add(group, self.channel_name)
        self.group_refs[group] = self.group_refs.get(group, 0) + 1

    async def livefolio_token_revoked(self, event: dict[str, Any]) -> None:
        if self.token_id is not None and event["token"] == self.token_id and not self.closing:
            await self._refuse(
                protocol.ERROR_UNAUTHORIZED,
                "this connection's token was revoked",
                protocol.CLOSE_UNAUTHENTICATED,
            )

    async def livefolio_session_ended(self, event: dict[str, Any]) -> None:
        key = self.session_key
        signed_in_by_session = self.token_id is None and self.user_id is not None
        if signed_in_by_session and key and event["session"] == events.session_fingerprint(key):
            await self._refuse(
                protocol.ERROR_SESSION_ENDED,
                "your session ended; log in again",
                protocol.CLOSE_UNAUTHENTICATED,
            )

    async def _auth_deadline(self) -> None:
        await asyncio.sleep(settings.LIVEFOLIO_API_AUTH_TIMEOUT)
        if self.user_id is None and not self.closing:
            await self._refuse(
                protocol.ERROR_AUTH_TIMEOUT,
                f"authenticate within {settings.LIVEFOLIO_API_AUTH_TIMEOUT} s of connecting",
                protocol.CLOSE_AUTH_TIMEOUT,
            )

    async def _heartbeats(self) -> None:
        period = settings.LIVEFOLIO_API_HEARTBEAT_SECONDS
        while not self.closing:
            await asyncio.sleep(period)
            idle = time.monotonic() - self.last_request
            if not self.subscriptions and idle > settings.LIVEFOLIO_API_IDLE_TIMEOUT:
                await self._refuse(
                    protocol.ERROR_IDLE_TIMEOUT,
                    f"no subscription and no request for {settings.LIVEFOLIO_API_IDLE_TIMEOUT} s",
                    protocol.CLOSE_IDLE_TIMEOUT,
                )
                return
            if self.user_id is not None:
                await self.api_cap.refresh(self.user_id, self.channel_name)
            self.send_message(protocol.heartbeat())

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closing:
            return
        self.last_request = time.monotonic()
        if not self.requests.allow():
            WS_REJECTED.labels(protocol.ERROR_RATE_LIMITED).inc()
            self.send_message(
                protocol.error(
                    code=protocol.ERROR_RATE_LIMITED,
                    message=f"at most {settings.LIVEFOLIO_API_RATE} requests a second "
                    f"(bursts of {settings.LIVEFOLIO_API_BURST})",
                    request_id=_request_id(text_data),
                )
            )
            if not self.refusals.allow():
                log.warning("closing an API connection that keeps flooding")
                await self.close(code=protocol.CLOSE_RATE_LIMITED)
            return
        await super().receive(text_data=text_data, bytes_data=bytes_data)

    async def frame_error(self, error: protocol.FrameError) -> None:
        frame = error.frame
        request_id = frame.get("id") if isinstance(frame, dict) else None
        self.send_message(
            protocol.error(
                code=error.code,
                message=error.message,
                request_id=request_id if _valid_id(request_id) else None,
            )
        )

    async def receive_message(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        kind = message["type"]
        try:
            if request_id is not None and not _valid_id(request_id):
                request_id = None
                raise RequestError(
                    protocol.ERROR_BAD_PARAMS,
                    f"id: a string of at most {MAX_ID_LENGTH} characters or an integer "
                    f"between -{MAX_ID_INT} and {MAX_ID_INT}",
                )
            handler = self.REQUESTS.get(kind)
            if handler is None:
                known = ", ".join(sorted(self.REQUESTS))
                raise RequestError(
                    protocol.ERROR_UNKNOWN_TYPE, f"unknown request {kind!r}; known: {known}"
                )
            if self.user_id is None and kind not in ("auth", "ping"):
                raise RequestError(
                    protocol.ERROR_AUTH_REQUIRED,
                    'authenticate first: {"type": "auth", "token": ...} or a bearer header',
                )
            result, follow_up = await handler(self, message)
        except RequestError as exc:
            self.send_message(
                protocol.error(code=exc.code, message=exc.message, request_id=request_id)
            )
            return
        if result is None:
            return  # the handler closed the connection
        self.send_message(protocol.reply(request_id=request_id, request=kind, result=result))
        for payload in follow_up:
            self.send_message(payload)

    # -- requests: each returns (result, messages to send after the reply) ---------------------

    async def _auth(self, message: dict[str, Any]):
        if self.user_id is not None:
            raise RequestError(protocol.ERROR_BAD_PARAMS, "already authenticated")
        token = message.get("token")
        if not isinstance(token, str) or not token:
            raise RequestError(protocol.ERROR_BAD_PARAMS, "token: the API token, a string")
        found = await database_sync_to_async(tokens.token_lookup)(token)
        user = found.user if found else None
        self.token_id = found.pk if found else None
        if user is None:
            await self._refuse(
                protocol.ERROR_UNAUTHORIZED,
                "the token is unknown, malformed or revoked",
                protocol.CLOSE_UNAUTHENTICATED,
                message.get("id"),
            )
            return None, []
        if not await self._sign_in(user):
            await self._refuse(*self._too_many_connections(), message.get("id"))
            return None, []
        if self.auth_deadline is not None:
            self.auth_deadline.cancel()
        return {"user": self.username}, []

    async def _ping(self, message: dict[str, Any]):
        return {}, []

    async def _list_portfolios(self, message: dict[str, Any]):
        portfolios = await database_sync_to_async(streams.portfolios_of)(user_id=self.user_id)
        return {"portfolios": portfolios}, []

    async def _subscribe(self, message: dict[str, Any]):
        max_rate = message.get("max_rate")
        if max_rate is not None and (
            isinstance(max_rate, bool)
            or not isinstance(max_rate, int | float)
            or not 0 < max_rate <= MAX_RATE_LIMIT
        ):
            raise RequestError(
                protocol.ERROR_BAD_PARAMS,
                f"max_rate: updates a second, more than 0 and at most {MAX_RATE_LIMIT:g}",
            )
        mode = message.get("mode")
        if mode is not None and mode not in protocol.BOOK_MODES:
            raise RequestError(
                protocol.ERROR_BAD_PARAMS,
                f"mode: one of {', '.join(protocol.BOOK_MODES)} (book streams only)",
            )
        try:
            stream = await database_sync_to_async(streams.stream_resolve)(
                name=message.get("stream"), user_id=self.user_id
            )
        except streams.StreamError as exc:
            raise RequestError(exc.code, exc.message) from None
        if stream.kind == protocol.STREAM_BOOK:
            mode = mode or protocol.BOOK_MODE_TOP
        elif mode is not None:
            raise RequestError(protocol.ERROR_BAD_PARAMS, "mode: only book streams have modes")
        if mode == protocol.BOOK_MODE_DIFFS and max_rate is not None:
            raise RequestError(
                protocol.ERROR_BAD_PARAMS,
                "max_rate: a book in diffs mode sends every change and cannot be conflated; "
                "use the default mode for a rate-limited book",
            )
        sub = self.subscriptions.get(stream.name)
        if sub is None:
            cap = settings.LIVEFOLIO_API_MAX_SUBSCRIPTIONS
            if len(self.subscriptions) >= cap:
                raise RequestError(
                    protocol.ERROR_TOO_MANY_SUBSCRIPTIONS,
                    f"at most {cap} subscriptions per connection; unsubscribe from one first",
                )
            sub = Subscription(stream=stream, max_rate=max_rate, mode=mode)
            # Join before reading the snapshot so no update committed in between is missed.
            await self._join(stream.group)
            self.subscriptions[stream.name] = sub
            self.by_source[stream.source] = sub
        else:
            sub.stop()  # subscribing again changes the rate (or mode) and sends a snapshot
            sub.max_rate = max_rate
            sub.mode = mode
        sub.conflator = None
        if max_rate is not None:
            # At most max_rate a second, no bursts; the latest value always goes out.
            send = functools.partial(self._send_update, sub)
            sub.conflator = Conflator(interval=1 / max_rate, send=send, burst=1)
        return sub.describe(), [await self._snapshot_of(sub)]

    async def _unsubscribe(self, message: dict[str, Any]):
        sub = self._subscribed(message)
        del self.subscriptions[sub.stream.name]
        del self.by_source[sub.stream.source]
        sub.stop()
        group = sub.stream.group
        self.group_refs[group] -= 1
        if self.group_refs[group] == 0:
            del self.group_refs[group]
            await self.channel_layer.group_discard(group, self.channel_name)
        return {"stream": sub.stream.name}, []

    async def _returns(self, message: dict[str, Any]):
        try:
            result = await database_sync_to_async(streams.portfolio_returns)(
                message=message, user_id=self.user_id
            )
        except streams.StreamError as exc:
            raise RequestError(exc.code, exc.message) from None
        return result, []

    async def _list_subscriptions(self, message: dict[str, Any]):
        return {"subscriptions": [s.describe() for s in self.subscriptions.values()]}, []

    async def _snapshot(self, message: dict[str, Any]):
        sub = self._subscribed(message)
        return {"stream": sub.stream.name}, [await self._snapshot_of(sub)]

    REQUESTS = {
        "auth": _auth,
        "ping": _ping,
        "list_portfolios": _list_portfolios,
        "subscribe": _subscribe,
        "unsubscribe": _unsubscribe,
        "list_subscriptions": _list_subscriptions,
        "snapshot": _snapshot,
        "returns": _returns,
    }

    def _subscribed(self, message: dict[str, Any]) -> Subscription:
        name = message.get("stream")
        if not isinstance(name, str) or not name:
            raise RequestError(protocol.ERROR_BAD_PARAMS, "stream: the stream's name, a string")
        for sub_name, sub in self.subscriptions.items():
            if sub_name.lower() == name.lower():
                return sub
        raise RequestError(protocol.ERROR_NOT_FOUND, f"not subscribed to {name!r}")

    async def _snapshot_of(self, sub: Subscription) -> dict[str, Any]:
        data = await database_sync_to_async(streams.stream_state)(
            sub.stream, mode=sub.mode or protocol.BOOK_MODE_TOP
        )
        sub.stop()  # the snapshot supersedes a value held back by max_rate (and skipped trades)
        if sub.stream.kind == protocol.STREAM_PORTFOLIO and data:
            sub.valued_at.clear()
            is_newer(sub.valued_at, data)
        if sub.mode == protocol.BOOK_MODE_DIFFS:
            sub.book_seq = data["book_seq"] if data else 0
        elif sub.stream.kind == protocol.STREAM_TRADES:
            numbered = [t for t in data["trades"] if "trade_seq" in t]
            sub.trade_seq = numbered[-1]["trade_seq"] if numbered else 0
            sub.trade_as_of = numbered[-1]["as_of"] if numbered else ""
        return protocol.stream_snapshot(
            stream=sub.stream.name, stream_seq=sub.stream_seq, data=data
        )

    # -- stream updates -----------------------------------------------------------------------

    def on_event(self, event: dict[str, Any]) -> None:
        found = streams.event_source(events.payload_of(event))
        if found is None:
            return
        source, data = found
        sub = self.by_source.get(source)
        if sub is None:
            return  # another stream of the same group, or another portfolio of the user
        if sub.mode is not None:
            diffs = data.get("type") == "book_diff"
            if diffs != (sub.mode == protocol.BOOK_MODE_DIFFS):
                return  # the other mode's message of the same book
            if diffs:
                self._send_diff(sub, data)
                return
        if sub.stream.kind == protocol.STREAM_TRADES and not self._trade_is_new(sub, data):
            return
        if sub.stream.kind == protocol.STREAM_PORTFOLIO and not is_newer(sub.valued_at, data):
            return
        if sub.conflator is None:
            self._send_update(sub, data)
            return
        # A quote, book or portfolio state supersedes the one it replaces; a trade does not, so
        # skipped trades show as a jump in stream_seq (the client's snapshot has recent trades).
        replaced = sub.conflator.offer(source, data)
        if replaced and sub.stream.kind == protocol.STREAM_TRADES:
            sub.skipped += 1

    def _trade_is_new(self, sub: Subscription, trade: dict[str, Any]) -> bool:
        """False for a trade the client already has (in its snapshot). Trades lost on the way
        here (the channel layer delivers at most once) count as skipped: stream_seq jumps by
        their number, as for trades max_rate conflated away."""
        trade_seq = trade.get("trade_seq")
        if trade_seq is None:
            return True  # not numbered by a feed process
        if trade_seq <= sub.trade_seq:
            # Behind the client: in its snapshot or older (queued before it: a feed's first batch
            # holds its market's warm-up), unless it is newer than the client's newest trade,
            # when its feed numbers afresh (it restarted without its cache): a jump, a resync.
            # as_of texts compare as times: one fixed ISO format (wire.iso).
            if trade.get("as_of", "") <= sub.trade_as_of:
                return False
            sub.skipped += 1
        elif sub.trade_seq:
            sub.skipped += trade_seq - sub.trade_seq - 1
        sub.trade_seq = trade_seq
        sub.trade_as_of = trade.get("as_of", "")
        return True

    def _send_diff(self, sub: Subscription, data: dict[str, Any]) -> None:
        """Every diff after the client's snapshot, in order. A diff lost on the way here (the
        channel layer delivers at most once) shows as a jump in stream_seq: the client's book
        would be wrong from then on, and the jump tells it to ask for a snapshot."""
        book_seq = data["book_seq"]
        if sub.book_seq - DIFFS_BEHIND_A_SNAPSHOT < book_seq <= sub.book_seq:
            return  # already in the client's snapshot
        if book_seq != sub.book_seq + 1:
            sub.skipped += 1  # lost on the way, or numbered afresh (its feed lost the cache)
        sub.book_seq = book_seq
        self._send_update(sub, data)

    def _send_update(self, sub: Subscription, data: Any) -> None:
        sub.stream_seq += 1 + sub.skipped
        sub.skipped = 0
        # Every member socket sends the same data object in turn: its JSON is made once.
        data = protocol.encoded_once(data)
        self.send_message(
            protocol.stream_update(stream=sub.stream.name, stream_seq=sub.stream_seq, data=data)
        )


def is_newer(sent: dict[int, str], state: dict[str, Any]) -> bool:
    """Whether a portfolio ``state`` was valued no earlier than the one last sent (noted in
    ``sent``, per portfolio id), and if so note it. Several workers value at once and the
    channel layer delivers in the order published, not valued: an older valuation arriving
    after a newer one is dropped here, so no client ever steps back. ``valued_at`` strings
    (UTC, milliseconds, one format) order as the moments they name; a state without one
    is not ordered."""
    valued_at = state.get("valued_at")
    if valued_at is None:
        return True
    last = sent.get(state["id"])
    if last is not None and valued_at < last:
        return False
    sent[state["id"]] = valued_at
    return True


def _valid_id(value: Any) -> bool:
    """A request id the reply can carry back: a string of at most MAX_ID_LENGTH characters or
    an integer every JSON reader holds exactly (at most 2**53 - 1 either way; a larger one
    cannot be encoded in a frame at all beyond 64 bits)."""
    if isinstance(value, str):
        return len(value) <= MAX_ID_LENGTH and protocol.clean_text(value)
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_ID_INT


def _request_id(text_data: str | None) -> Any:
    """The ``id`` of a frame refused before parsing (rate limited), when it has a valid one."""
    if not text_data or len(text_data) > settings.LIVEFOLIO_MAX_FRAME_BYTES:
        return None
    try:
        message = protocol.parse_client_frame(text_data)
    except protocol.FrameError:
        return None
    request_id = message.get("id")
    return request_id if _valid_id(request_id) else None
