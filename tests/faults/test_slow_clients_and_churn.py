"""Clients that never read, and 1,000 connect/disconnect cycles: the server stays bounded."""

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import socket
import urllib.request
from datetime import UTC, datetime

from tests.faults.conftest import METRICS_TOKEN, on_each_channel_layer
from tests.faults.live import LiveClient, eventually, log_in, open_socket

MB = 1024 * 1024


def rss(process) -> int:
    """Resident memory of a child process, in bytes."""
    status = open(f"/proc/{process.proc.pid}/status").read()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024


def open_connections(base: str) -> float:
    request = urllib.request.Request(
        f"{base}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    text = urllib.request.urlopen(request, timeout=10).read().decode()
    match = re.search(r'^livefolio_ws_connections\{endpoint="portfolio"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def never_reading_socket(base: str, cookie: str) -> socket.socket:
    """A WebSocket handshake over a raw socket with a tiny receive buffer, then never a read."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws/portfolio/ HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: {base}\r\nCookie: {cookie}\r\n\r\n"
        ).encode()
    )
    assert b"101 Switching Protocols" in sock.recv(1024)
    return sock


def valuation(portfolio_id: int, total: str, pad: int = 0) -> dict:
    return {
        "type": "valuation",
        "portfolio": {
            "id": portfolio_id,
            "name": "flood",
            "base_currency": "USD",
            "total": total,
            "as_of": datetime.now(UTC).isoformat(),
            "holdings": [],
            "note": "x" * pad,
        },
    }


@on_each_channel_layer
async def test_a_client_that_never_reads_is_conflated_then_closed_and_memory_stays_bounded(stack):
    world = stack.world
    # Keepalive pings every 2 s, closed when no pong comes back within 3 s. What the server may
    # hold for the socket is bounded by design, whenever its consumer reads: up to CAPACITY
    # messages waiting in its inbox (a consumer still busy with its snapshot reads none; beyond,
    # the oldest drop: 50 x 64 KB here), then one conflated frame per portfolio at a time.
    base = await asyncio.to_thread(
        stack.daphne, PING_INTERVAL="2", PING_TIMEOUT="3", LIVEFOLIO_CHANNEL_CAPACITY="50"
    )
    server = stack.processes[-1]
    charlie = LiveClient(base, await asyncio.to_thread(log_in, base, "charlie")).start()
    stuck = await asyncio.to_thread(
        never_reading_socket, base, await asyncio.to_thread(log_in, base, "alice")
    )
    await eventually(lambda: charlie.portfolios, timeout=20, what="charlie's snapshot")
    await eventually(lambda: open_connections(base) == 2, timeout=10, what="two sockets open")
    before = rss(server)

    # The server's own layer (a message sent with another never reaches it); with the core
    # layer, a sender's capacity bounds the server's inbox in Redis: room for the whole flood.
    layer = stack.channel_layer(capacity=5000)
    alice_group = f"user.{world['users']['alice']}"
    charlie_group = f"user.{world['users']['charlie']}"
    for i in range(600):  # 600 x 64 KB = 38 MB aimed at a reader that never reads
        message = valuation(world["portfolios"]["alice"], f"{i}.00", pad=64 * 1024)
        await layer.group_send(alice_group, {"type": "livefolio.event", "payload": message})
        if i % 100 == 0:
            update = valuation(world["portfolios"]["charlie"], f"{i}.00")
            await layer.group_send(charlie_group, {"type": "livefolio.event", "payload": update})
    final = valuation(world["portfolios"]["charlie"], "600.00")
    await layer.group_send(charlie_group, {"type": "livefolio.event", "payload": final})

    await eventually(
        lambda: charlie.total(world["portfolios"]["charlie"]) == "600.00",
        timeout=20,
        what="charlie, who reads, keeps getting the latest numbers",
    )
    await eventually(
        lambda: open_connections(base) == 1,
        timeout=20,
        what="the server to close the socket that never answers pings",
    )
    grown = rss(server) - before
    assert grown < 12 * MB, f"daphne grew by {grown / MB:.1f} MB"
    stuck.close()
    await charlie.stop()
    await layer.flush()


@on_each_channel_layer
async def test_thousands_of_connect_disconnect_cycles_leak_no_groups_connections_or_memory(stack):
    world = stack.world
    base = await asyncio.to_thread(stack.daphne)
    server = stack.processes[-1]
    cookies = [await asyncio.to_thread(log_in, base, name) for name in ("alice", "charlie")]
    client = stack.redis.client()

    async def cycles(count: int, cookie: str) -> None:
        for _ in range(count):
            async with await open_socket(base, cookie) as ws:
                assert json.loads(await ws.recv())["type"] == "snapshot"

    # Warm up (imports, caches, allocator arenas) until memory is flat, then measure.
    await asyncio.gather(*(cycles(250, c) for c in cookies * 2))
    await asyncio.sleep(1)
    assert await asyncio.to_thread(open_connections, base) == 0  # /metrics' own client opens now
    clients_before = client.info("clients")["connected_clients"]
    memory_before = rss(server)

    await asyncio.gather(*(cycles(500, c) for c in cookies * 2))  # 2,000 cycles, 4 at a time

    await eventually(lambda: open_connections(base) == 0, timeout=10, what="all sockets closed")
    await asyncio.sleep(1)
    for name in ("alice", "charlie"):
        user = world["users"][name]
        assert client.zcard(f"lf-faults:group:user.{user}") == 0, f"{name}'s group leaked"
        assert client.zcard(f"lf-faults:conn:portfolio:user.{user}") == 0, "cap slots leaked"
    # The pub/sub layer's subscriptions (a group's, a socket's own channel) go with the sockets.
    assert client.pubsub_channels("lf-faults*") == [], "subscriptions leaked"
    # channels-redis opens and closes short-lived connections as it goes (a few come and go at
    # any moment, more on a busy machine); a leak would be one per cycle: hundreds.
    assert client.info("clients")["connected_clients"] <= clients_before + 10
    grown = rss(server) - memory_before
    # Flat on a quiet machine; the allocator's high-water mark alone reaches a few MB on a busy
    # one. A leak of a few KB per connection (as channels-redis' leftover receive queues would
    # be, see ProtocolConsumer.__call__) would pass 4.5 MB.
    assert grown < 4.5 * MB, f"daphne grew by {grown / MB:.2f} MB over 2,000 cycles"


def closed_by_the_server(sock: socket.socket) -> bool:
    """Whether the server has ended this TCP connection (reset, or its FIN), seen in the
    socket's state without reading from it (Linux ``TCP_INFO``: 1 is ESTABLISHED)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != 1


async def test_clients_that_stop_reading_are_closed_past_their_byte_budget_and_memory_returns(
    stack,
):
    world = stack.world
    # Pings so rare that only the byte budget can close a socket in this test; 50 valuations a
    # second per socket, so the stuck ones fall behind by 1.6 MB a second (the kernel's send
    # buffer, up to 4 MB, fills first: the budget counts what daphne holds beyond it).
    base = await asyncio.to_thread(
        stack.daphne,
        PING_INTERVAL="600",
        PING_TIMEOUT="600",
        LIVEFOLIO_WS_SEND_BUDGET_KB="256",
        LIVEFOLIO_WS_MAX_UPDATES="50",
        LIVEFOLIO_CHANNEL_CAPACITY="50",
    )
    server = stack.processes[-1]
    charlie = LiveClient(base, await asyncio.to_thread(log_in, base, "charlie")).start()
    alice = await asyncio.to_thread(log_in, base, "alice")
    stuck = [await asyncio.to_thread(never_reading_socket, base, alice) for _ in range(4)]
    await eventually(lambda: charlie.portfolios, timeout=20, what="charlie's snapshot")
    await eventually(lambda: open_connections(base) == 5, timeout=10, what="all sockets open")
    before = rss(server)

    layer = stack.channel_layer(capacity=5000)
    alice_group = f"user.{world['users']['alice']}"
    charlie_group = f"user.{world['users']['charlie']}"

    async def flood() -> None:
        for i in itertools.count():
            message = valuation(world["portfolios"]["alice"], f"{i}.00", pad=32 * 1024)
            await layer.group_send(alice_group, {"type": "livefolio.event", "payload": message})
            if i % 20 == 0:
                update = valuation(world["portfolios"]["charlie"], f"{i}.00")
                await layer.group_send(
                    charlie_group, {"type": "livefolio.event", "payload": update}
                )
            await asyncio.sleep(0.01)

    flooding = asyncio.create_task(flood())
    try:
        await eventually(
            lambda: all(closed_by_the_server(sock) for sock in stuck),
            timeout=60,
            what="the server to end every socket that stopped reading",
        )
    finally:
        flooding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flooding
    for sock in stuck:
        sock.close()
    # Cleaned up as any closed socket: /metrics counts charlie's alone.
    await eventually(lambda: open_connections(base) == 1, timeout=10, what="only charlie counted")
    final = valuation(world["portfolios"]["charlie"], "final")
    await layer.group_send(charlie_group, {"type": "livefolio.event", "payload": final})
    await eventually(
        lambda: charlie.total(world["portfolios"]["charlie"]) == "final",
        timeout=20,
        what="charlie, who reads, keeps getting the latest numbers",
    )
    assert 4413 not in charlie.closes
    assert server.output().count("closing a connection that does not read") == len(stuck)
    assert f"with {4413}" in server.output()
    # What the stuck sockets held (each at most its inbox, 50 x 32 KB, and 256 KiB + Twisted's
    # 64 KiB unsent) is given back once they are gone.
    grown = rss(server) - before
    assert grown < 8 * MB, f"daphne grew by {grown / MB:.1f} MB"
    await charlie.stop()
    await layer.flush()
