"""A minimal ASGI application for tests/test_serve.py: daphne's own behaviour under
``python -m streaming.serve``, without Livefolio's consumers in the way.

HTTP: ``GET /live`` answers what the server process holds (JSON, see :func:`live_objects`);
anything else answers with the request body it received. WebSocket: accepts, then echoes every
text frame; ``?delay=S`` makes it wait S seconds before each echo (a slow application: the
frames that arrive meanwhile wait in its input queue). ``burst N SIZE`` sends N frames of SIZE
bytes at once; ``close`` closes the socket with 4000.
"""

import asyncio
import gc
import json
from urllib.parse import parse_qs


def live_objects() -> dict[str, int]:
    """Open WebSocket protocols, and the per-socket object the launcher is meant not to keep:
    HTTP channels (the upgraded request)."""
    from daphne.ws_protocol import WebSocketProtocol
    from twisted.web.http import HTTPChannel

    gc.collect()  # a released channel and its request are a reference cycle
    objects = gc.get_objects()
    protocols = [o for o in objects if isinstance(o, WebSocketProtocol) and o.state == o.STATE_OPEN]
    return {
        "open_websockets": len(protocols),
        "http_channels": sum(isinstance(o, HTTPChannel) for o in objects),
    }


async def application(scope, receive, send):
    if scope["type"] == "http":
        body = []
        while True:
            message = await receive()
            body.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        if scope["path"] == "/live":
            body = [json.dumps(live_objects()).encode()]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"".join(body)})
    elif scope["type"] == "websocket":
        delay = float(parse_qs(scope["query_string"].decode()).get("delay", ["0"])[0])
        while True:
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
            elif message["type"] == "websocket.receive":
                text = message["text"]
                await asyncio.sleep(delay)
                if text.startswith("burst "):
                    _, count, size = text.split()
                    for n in range(int(count)):
                        await send({"type": "websocket.send", "text": f"{n:08d}".ljust(int(size))})
                elif text == "close":
                    await send({"type": "websocket.close", "code": 4000})
                else:
                    await send({"type": "websocket.send", "text": text})
            elif message["type"] == "websocket.disconnect":
                return
