"""A minimal ASGI application for tests/test_serve.py: daphne's own behaviour under
``python -m streaming.serve``, without Livefolio's consumers in the way.

HTTP: answers with the request body it received. WebSocket: accepts, then echoes every text
frame; ``?delay=S`` makes it wait S seconds before each echo (a slow application: the frames
that arrive meanwhile wait in its input queue).
"""

import asyncio
from urllib.parse import parse_qs


async def application(scope, receive, send):
    if scope["type"] == "http":
        body = []
        while True:
            message = await receive()
            body.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"".join(body)})
    elif scope["type"] == "websocket":
        delay = float(parse_qs(scope["query_string"].decode()).get("delay", ["0"])[0])
        while True:
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
            elif message["type"] == "websocket.receive":
                await asyncio.sleep(delay)
                await send({"type": "websocket.send", "text": message["text"]})
            elif message["type"] == "websocket.disconnect":
                return
