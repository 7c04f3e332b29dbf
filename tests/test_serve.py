"""``python -m streaming.serve``: daphne keeping no upgraded HTTP request per open WebSocket.
What daphne promises still holds: every
frame reaches the application in order however slowly it reads, a slow reader gets a large burst
whole, pings go out every --ping-interval and a client that stops answering is dropped after
--ping-timeout, oversized frames are refused, a request body arrives whole. Plain daphne still
serves the same application."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import sys
import urllib.request

import pytest
import websockets
from channels.db import database_sync_to_async

from tests.conftest import Process, free_port, start_daphne
from tests.websocket import session_cookie

pytestmark = pytest.mark.stack

TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA
MAX_MESSAGE = 4096


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory):
    """tests/serve_app.py under the launcher, pinging after 1 s idle, giving up 1 s later."""
    port = free_port()
    server = Process(
        "serve-echo",
        [
            sys.executable,
            "-m",
            "streaming.serve",
            "-p",
            str(port),
            "--ping-interval",
            "1",
            "--ping-timeout",
            "1",
            "--websocket-max-message-size",
            str(MAX_MESSAGE),
            "--websocket-max-frame-size",
            str(MAX_MESSAGE),
            "tests.serve_app:application",
        ],
        # A budget past the 16 MB burst below: the burst tests the order of frames the socket
        # does not take at once; the budget's own test is in tests/faults.
        {**os.environ, "PYTHONUNBUFFERED": "1", "LIVEFOLIO_WS_SEND_BUDGET_KB": "32768"},
        tmp_path_factory.mktemp("serve"),
    )
    server.wait_for_output("Listening on TCP address")
    yield port
    server.stop()


async def open_raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket spoken by hand, so the test sees (and may leave unanswered) every ping."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    handshake = (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    writer.write(handshake.encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await asyncio.wait_for(reader.readexactly(2), 20)
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    return first & 0x0F, await reader.readexactly(length)


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final frame, masked as a client's must be."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        header = bytes([0x80 | opcode, 0x80 | size])
    elif size < 65536:
        header = bytes([0x80 | opcode, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + size.to_bytes(8, "big")
    return header + mask + bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))


async def live_objects(port: int) -> dict[str, int]:
    def fetch() -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/live", timeout=20) as response:
            return json.loads(response.read())

    return await asyncio.to_thread(fetch)


async def test_open_sockets_keep_no_http_request(echo_server):
    async with contextlib.AsyncExitStack() as stack:
        sockets = [
            await stack.enter_async_context(websockets.connect(f"ws://127.0.0.1:{echo_server}/"))
            for _ in range(20)
        ]
        for ws in sockets:
            await ws.send("open")
            assert await asyncio.wait_for(ws.recv(), 20) == "open"
        # daphne forgets an upgraded request within a second or two (its application checker);
        # from then on only the request serving /live holds an HTTP channel.
        for _ in range(50):
            live = await live_objects(echo_server)
            if live["http_channels"] <= 1:
                break
            await asyncio.sleep(0.2)
    assert live["open_websockets"] >= 20
    assert live["http_channels"] <= 1


async def test_a_slow_reader_gets_a_large_burst_whole_and_in_order_then_the_close(echo_server):
    count, size = 4000, MAX_MESSAGE - 96  # 16 MB: far past the server's write buffer
    # A small incoming queue: the client stops reading its TCP socket while it does not recv().
    async with websockets.connect(
        f"ws://127.0.0.1:{echo_server}/", max_size=None, max_queue=1
    ) as ws:
        await ws.send(f"burst {count} {size}")
        await asyncio.sleep(1)
        frames = [await asyncio.wait_for(ws.recv(), 20) for _ in range(count)]
        assert [frame[:8] for frame in frames] == [f"{n:08d}" for n in range(count)]
        assert {len(frame) for frame in frames} == {size}
        await ws.send("close")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 20)
    assert closed.value.rcvd.code == 4000


@pytest.mark.parametrize("delay", [0, 0.005], ids=["fast application", "slow application"])
async def test_every_frame_reaches_the_application_once_in_the_order_sent(echo_server, delay):
    url = f"ws://127.0.0.1:{echo_server}/?delay={delay}"
    count = 2000 if delay == 0 else 300
    async with websockets.connect(url) as ws:
        for n in range(count):  # all sent before the application has read many of them
            await ws.send(f"frame {n}")
        echoed = [await asyncio.wait_for(ws.recv(), 20) for _ in range(count)]
    assert echoed == [f"frame {n}" for n in range(count)]


async def test_a_client_that_answers_pings_stays_connected(echo_server):
    reader, writer = await open_raw(echo_server)
    for _ in range(3):  # each ping answered within --ping-timeout: the connection stays
        opcode, payload = await read_frame(reader)
        assert opcode == PING
        writer.write(client_frame(PONG, payload))
    writer.write(client_frame(TEXT, b"still here"))
    assert await read_frame(reader) == (TEXT, b"still here")
    writer.close()


async def test_a_client_that_stops_answering_pings_is_dropped_after_the_ping_timeout(
    echo_server,
):
    reader, writer = await open_raw(echo_server)
    opcode, _ = await read_frame(reader)
    assert opcode == PING  # sent after --ping-interval without traffic; left unanswered
    with pytest.raises((asyncio.IncompleteReadError, ConnectionResetError)):
        await read_frame(reader)  # the server drops the TCP connection: no second ping
    writer.close()


async def refused_with(reader: asyncio.StreamReader, code: int) -> None:
    """The server's close frame with ``code`` (pings may come first), then the end of the
    connection, without waiting for the client's close."""
    while True:
        opcode, payload = await read_frame(reader)
        if opcode != PING:
            break
    assert opcode == CLOSE
    assert int.from_bytes(payload[:2], "big") == code
    with pytest.raises((asyncio.IncompleteReadError, ConnectionResetError)):
        await read_frame(reader)


async def test_a_frame_over_the_max_message_size_is_refused_1009_and_closed(echo_server):
    reader, writer = await open_raw(echo_server)
    writer.write(client_frame(TEXT, b"x" * (MAX_MESSAGE - 100)))
    assert await read_frame(reader) == (TEXT, b"x" * (MAX_MESSAGE - 100))
    writer.write(client_frame(TEXT, b"x" * (MAX_MESSAGE + 100)))
    await refused_with(reader, 1009)  # RFC 6455 7.4.1: a message too big to process
    writer.close()


async def test_a_text_frame_that_is_not_utf8_is_refused_1007_and_closed(echo_server):
    reader, writer = await open_raw(echo_server)
    writer.write(client_frame(TEXT, b"\xff\xfe"))
    await refused_with(reader, 1007)  # RFC 6455 7.4.1: data not consistent with the type
    writer.close()


async def test_without_the_flags_a_message_over_128_kib_is_refused(tmp_path):
    """daphne's own default is 1 MiB; the app refuses frames over 64 KiB anyway (with an
    error), so the launcher does not read one over 128 KiB."""
    port = free_port()
    server = Process(
        "serve-default-limits",
        [sys.executable, "-m", "streaming.serve", "-p", str(port), "tests.serve_app:application"],
        {**os.environ, "PYTHONUNBUFFERED": "1"},
        tmp_path,
    )
    try:
        server.wait_for_output("Listening on TCP address")
        reader, writer = await open_raw(port)
        writer.write(client_frame(TEXT, b"y" * (120 * 1024)))
        assert await read_frame(reader) == (TEXT, b"y" * (120 * 1024))
        writer.write(client_frame(TEXT, b"x" * (130 * 1024)))
        await refused_with(reader, 1009)  # the frame unechoed
        writer.close()
    finally:
        server.stop()


async def test_a_request_body_of_many_chunks_arrives_whole_and_in_order(echo_server):
    body = os.urandom(1024 * 1024)  # daphne hands it to the application in 8 KiB chunks
    request = urllib.request.Request(f"http://127.0.0.1:{echo_server}/", data=body)
    response = await asyncio.to_thread(urllib.request.urlopen, request, timeout=20)
    assert response.status == 200
    assert response.read() == body


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("module", ["streaming.serve", "daphne"])
async def test_the_launcher_and_plain_daphne_both_serve_the_live_page(
    world, redis_client, tmp_path, module
):
    port = free_port()
    server = await asyncio.to_thread(start_daphne, tmp_path, port, module)
    try:
        cookie = await database_sync_to_async(session_cookie)(world["users"]["alice"])
        base = f"http://127.0.0.1:{port}"
        headers = {"Origin": base, "Cookie": cookie}
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/ws/portfolio/", additional_headers=headers
        ) as ws:
            snapshot = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert snapshot["type"] == "snapshot"
            assert [p["name"] for p in snapshot["portfolios"]] == ["Alice's"]
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "pong"
    finally:
        server.stop()
