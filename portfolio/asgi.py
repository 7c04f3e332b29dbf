"""ASGI entry point: HTTP through Django, WebSockets through Channels.

Browser pages: same origin, logged in. API v1 (/ws/v1/): see streaming/routing.py.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portfolio.settings")
# Django must be set up before anything imports models (the consumers do).
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402

from streaming import namespace  # noqa: E402
from streaming.routing import websocket_application  # noqa: E402

application = ProtocolTypeRouter({"http": django_asgi_app, "websocket": websocket_application()})

# The server's start-up: refuse a Redis namespace another deployment makes ambiguous, announce
# ours (tests build the application from streaming.routing without this module).
namespace.claim()
