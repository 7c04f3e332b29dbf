"""daphne's WebSocket protocol and server as Livefolio runs them (``python -m streaming.serve``).

Built on private names of daphne, autobahn and Twisted, pinned exactly in pyproject.toml and
checked by tests/test_library_contracts.py:

- a frame goes straight to the socket when the transport holds nothing unsent (``sendData``
  over Twisted's transport buffers): two system calls fewer per frame sent;
- a client that stops reading holds at most ``LIVEFOLIO_WS_SEND_BUDGET_KB`` of unsent frames
  here (past what its TCP transport buffers): past that it is closed with **4413**
  (docs/protocol.md), not kept until it misses its pings while its frames pile up;
- an open WebSocket lets go of the HTTP request it was upgraded from (Twisted's
  ``HTTPChannel``, daphne's request, their headers and buffers), which daphne leaves registered
  as its TCP transport's producer; the budget needs that producer slot;
- a refused frame (invalid UTF-8, too big, a protocol violation) is answered with a close frame
  saying why (1007, 1009, 1002) instead of a dropped connection (1006).
"""

from __future__ import annotations

import gc
import logging

import daphne.server  # first: it installs Twisted's asyncio reactor
from autobahn.util import encode_truncate
from daphne import ws_protocol
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from twisted.internet import tcp
from twisted.web.http import HTTPChannel

from streaming.protocol import CLOSE_NOT_READING

log = logging.getLogger(__name__)

DEFAULT_SEND_BUDGET_KB = 1024


def send_budget() -> int:
    """The bytes a client may leave unread (``LIVEFOLIO_WS_SEND_BUDGET_KB``; its default for an
    application served without Livefolio's settings)."""
    try:
        kib = settings.LIVEFOLIO_WS_SEND_BUDGET_KB
    except (ImproperlyConfigured, AttributeError):
        kib = DEFAULT_SEND_BUDGET_KB
    return kib * 1024


class WebSocketProtocol(ws_protocol.WebSocketProtocol):
    """daphne's WebSocket protocol: the upgraded HTTP request let go once the socket is open,
    frames sent at once, refused frames answered with a close frame, and a byte budget for a
    client that stops reading.

    The budget: the protocol is its TCP transport's streaming producer. Twisted pauses it once
    the transport holds more than its buffer size (64 KiB) that the socket would not take, and
    resumes it once all of it is sent (``IConsumer.registerProducer``). Frames written while
    paused are what the client leaves unread, beyond that buffer; past
    ``LIVEFOLIO_WS_SEND_BUDGET_KB`` of them the connection is closed with
    :data:`CLOSE_NOT_READING`. A client that never reads never completes the closing handshake
    either, so autobahn drops the connection after its close handshake timeout (1 s) and
    daphne frees what it held; the application sees a normal disconnect.
    """

    # Bytes sent while paused (None: not paused); set on the instance only while paused.
    unread: int | None = None
    over_budget = False

    def pauseProducing(self) -> None:
        # Twisted says so again at every write while its buffer is full: count from the first.
        if self.unread is None:
            self.unread = 0

    def resumeProducing(self) -> None:
        self.unread = None

    def stopProducing(self) -> None:
        self.unread = None

    def _within_budget(self, data: bytes) -> bool:
        """Count ``data`` if the client is behind; False (and the connection closing) once
        what it left unread passes the budget: the frame is not sent."""
        if self.unread is None or self.over_budget:
            return True
        self.unread += len(data)
        if self.unread <= send_budget() or self.state != self.STATE_OPEN:
            return True
        self.over_budget = True  # the close frame below comes through here too
        log.warning(
            "ws: closing a connection that does not read (%d KiB unsent) with %d",
            self.unread // 1024,
            CLOSE_NOT_READING,
        )
        self.sendClose(code=CLOSE_NOT_READING, reason="not reading: too much unsent")
        return False

    def serverSend(self, content: str | bytes, binary: bool = False) -> None:
        """daphne's send of an application frame; after the budget closed the connection the
        frame is dropped, as daphne drops one for a connection already gone, instead of raising
        into the application (autobahn refuses to send while closing) in the second before
        the connection is dropped and the application told."""
        if self.over_budget:
            return
        super().serverSend(content, binary)

    def send_text_frame(self, payload: bytes) -> None:
        """daphne's ``serverSend`` of a text frame already in UTF-8: autobahn's ``sendMessage``
        and ``sendFrame`` as they run for every frame Livefolio sends (one frame, unmasked,
        uncompressed, unfragmented, untimed, unlogged, within the size limit), without their
        checks and joins; any other case goes through them."""
        if self.over_budget:
            return  # as serverSend
        n = len(payload)
        if (
            self.state != self.STATE_OPEN  # autobahn raises Disconnected
            or self._perMessageCompress is not None
            or self.autoFragmentSize
            or self.maskServerFrames
            or self.trackedTimings
            or self.logFrames
            or 0 < self.maxMessagePayloadSize < n
        ):
            self.sendMessage(payload, False)
            return
        stats = self.trafficStats
        stats.outgoingWebSocketMessages += 1
        stats.outgoingOctetsAppLevel += n
        stats.outgoingOctetsWebSocketLevel += n
        stats.outgoingWebSocketFrames += 1
        if n <= 125:
            header = _TEXT_HEADERS[n]
        elif n <= 0xFFFF:
            header = b"\x81\x7e" + n.to_bytes(2, "big")
        else:
            header = b"\x81\x7f" + n.to_bytes(8, "big")
        self.sendData(header + payload)

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """autobahn's ``sendData``, sending a frame at once when nothing waits before it.

        Twisted queues every write for the reactor's next turn: the transport registers as a
        writer (an ``epoll_ctl``), sends, and unregisters (another): two system calls per frame,
        which dominate when daphne fans a quote out to many sockets. Here a frame goes
        straight to the socket when the transport holds nothing unsent; what the socket does
        not take, and anything with TLS, chopping or autobahn's own send queue, goes the usual
        way, behind it, so the order is kept.
        """
        if not self._within_budget(data):
            return
        transport = self.transport
        if (
            sync
            or chopsize
            or self.send_queue
            or type(transport) is not tcp.Server
            or transport.TLS
            or not transport.connected
            or transport._writeDisconnected
            or transport._tempDataBuffer
            or len(transport.dataBuffer) != transport.offset
        ):
            super().sendData(data, sync, chopsize)
            return
        try:
            sent = transport.socket.send(data)
        except OSError:  # full (EAGAIN) or failing: Twisted's path buffers or closes as usual
            sent = 0
        if sent < len(data):
            transport.write(data[sent:])
        if self.state == self.STATE_OPEN:
            self.trafficStats.outgoingOctetsWireLevel += len(data)
        elif self.state in (self.STATE_CONNECTING, self.STATE_PROXY_CONNECTING):
            self.trafficStats.preopenOutgoingOctetsWireLevel += len(data)

    def _fail_connection(self, code: int = 1001, reason: str = "going away") -> None:
        """autobahn fails a connection on a frame it refuses (invalid UTF-8, over the size
        limit, a protocol violation) by dropping TCP at once (``failByDrop``): the client saw
        only 1006. Here an open connection first says why in a close frame (RFC 6455 7.4.1:
        1007 not UTF-8, 1009 too big, 1002 protocol error), then closes once that frame is
        written, reading nothing more (so an oversized frame is never buffered), without
        waiting for the client's close."""
        if self.state != self.STATE_OPEN or not self.failByDrop:
            super()._fail_connection(code, reason)
            return
        self.log.info(
            'failing WebSocket connection (code={code}): "{reason}"', code=code, reason=reason
        )
        self.failedByMe = True
        self.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, 123), isReply=False)
        self.wasClean = False
        self.wasNotCleanReason = f"closed after refusing a frame: {reason}"
        self.dropConnection(abort=False)

    def onOpen(self) -> None:
        # daphne hands the TCP transport over from the HTTP channel, which stays registered as
        # its producer. The channel is mid-request (it never finished: the socket took over),
        # so its pause/resume/stopProducing do nothing; all it does is keep itself, its request
        # and their headers alive. (Behind TLS the transport's producer is TLS's own: left.)
        if isinstance(getattr(self.transport, "producer", None), HTTPChannel):
            self.transport.unregisterProducer()
        if getattr(self.transport, "producer", False) is None:
            self.transport.registerProducer(self, True)  # the budget (see the class)
        super().onOpen()


# A final text frame's first two bytes (FIN, opcode 1; unmasked length) for payloads of at most
# 125 bytes (RFC 6455 5.2).
_TEXT_HEADERS = [bytes((0x81, n)) for n in range(126)]


class Server(daphne.server.Server):
    """daphne's server with :class:`WebSocketProtocol`, its start-up heap frozen."""

    def run(self) -> None:
        # Everything loaded so far (Django, Twisted, the application) lives as long as the
        # process: the cyclic collector need not walk it again in every full collection.
        gc.freeze()
        super().run()

    @property
    def ws_factory(self) -> ws_protocol.WebSocketFactory:
        return self._ws_factory

    @ws_factory.setter
    def ws_factory(self, factory: ws_protocol.WebSocketFactory) -> None:
        # daphne's run() builds its WebSocket factory inline; its connections get our protocol.
        factory.protocol = WebSocketProtocol
        self._ws_factory = factory
