"""``python -m streaming.serve``: daphne with Livefolio's WebSocket protocol.

The same command line as ``daphne`` (every flag, e.g.
``python -m streaming.serve -b 0.0.0.0 -p 8000 portfolio.asgi:application``) and the same
behaviour, with the changes of :mod:`streaming.patches.websocket` (frames sent at once, a byte
budget per socket closing a client that stops reading with 4413, refused frames answered with
a close frame, less kept per open socket), refusing an incoming message over 128 KiB (daphne:
1 MiB) unless its flags say otherwise.

Plain ``daphne portfolio.asgi:application`` still runs the same application, without them.
"""

from __future__ import annotations

from daphne import cli

from streaming.patches.websocket import Server

# The largest incoming WebSocket message or frame accepted unless the flags say otherwise.
# daphne's default is 1 MiB, held whole before the application sees it; the application answers
# a frame over 64 KiB (LIVEFOLIO_MAX_FRAME_BYTES) with frame_too_large and closes 4009, so
# anything much larger is refused here, before it is read: no socket makes the server hold more.
# autobahn refuses it with close code 1009 (as a text frame that is not UTF-8 with 1007) and
# closes without waiting for the client's close (WebSocketProtocol._fail_connection: with a
# closing handshake it would keep buffering the rest of the oversized frame until the
# handshake timed out); daphne then tells the application the socket disconnected, and its
# clean-up runs (tests/test_websocket_hostile.py).
INCOMING_LIMIT = 128 * 1024


class CommandLineInterface(cli.CommandLineInterface):
    description = "Livefolio's daphne (daphne's flags and Livefolio's WebSocket protocol)"
    server_class = Server

    def __init__(self) -> None:
        super().__init__()
        self.parser.set_defaults(
            websocket_max_message_size=INCOMING_LIMIT, websocket_max_frame_size=INCOMING_LIMIT
        )


if __name__ == "__main__":
    CommandLineInterface.entrypoint()
