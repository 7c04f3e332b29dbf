"""Every place Livefolio builds on a library's private names, and nowhere else.

- :mod:`streaming.patches.layers`: channels-redis' pub/sub and core channel layers (a pipelined
  batch send, a message decoded once and handed to its sockets' listeners, a lost subscription
  failing its channels, a connection pool that waits);
- :mod:`streaming.patches.dispatch`: Channels' consumer loop (no ``asyncio.wait`` per message;
  a channel-layer message handled as it arrives while the socket is idle; daphne's send
  without its coroutines);
- :mod:`streaming.patches.websocket`: daphne's WebSocket protocol and server over autobahn and
  Twisted (frames built and sent at once, a send budget per socket, refused frames closed with
  a reason).

Each library is pinned exactly in pyproject.toml; tests/test_library_contracts.py hashes every
function copied or overridden here and checks every private name used here still exists, so an
upgrade fails there, naming the place to re-read.
"""
