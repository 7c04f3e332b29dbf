"""WebSocket routes and who may open them.

Browser pages (``websocket_urlpatterns``): a logged-in session and an Origin among the allowed
hosts; no Origin is refused. The API (``api_urlpatterns``, /ws/v1/): a browser (it always sends
Origin) must come from an allowed host; a bot, without an Origin, may connect and must then
authenticate with a token (the consumer closes it otherwise).
"""

from importlib import import_module

from channels.auth import get_user
from channels.routing import URLRouter
from channels.security.websocket import AllowedHostsOriginValidator, OriginValidator
from django.conf import settings
from django.http.cookie import parse_cookie
from django.urls import path

from streaming import consumers

API_PREFIX = "/ws/v1/"


class OriginIfPresentValidator(OriginValidator):
    """Like channels' OriginValidator, but a handshake without Origin (not a browser) passes."""

    def valid_origin(self, parsed_origin) -> bool:
        if parsed_origin is None:
            return True
        return super().valid_origin(parsed_origin)


class SessionAuth:
    """channels' ``AuthMiddlewareStack`` (cookies, session, user) in one step.

    A socket keeps its middleware's frames and scope copies for as long as it is open: the
    three-layer stack would hold five frames and four copies of the scope per idle socket,
    this holds one of each. The same session store, and the same user check as the stack:
    ``channels.auth.get_user`` (the session's auth hash included).

    It wraps each consumer (inside the URL router), so the scope it makes is the consumer's own:
    an open socket can drop the ``User`` and the session from it
    (``ProtocolConsumer.drop_scope_auth``) and nothing else still holds them.
    """

    def __init__(self, inner) -> None:
        self.inner = inner

    async def __call__(self, scope, receive, send):
        scope = await self.authenticate(scope)  # this frame keeps only the consumer's scope
        return await self.inner(scope, receive, send)

    async def authenticate(self, scope: dict) -> dict:
        """A copy of ``scope`` with the request's ``cookies``, ``session`` and ``user``."""
        cookies = {}
        for name, value in scope.get("headers", ()):
            if name == b"cookie":
                cookies = parse_cookie(value.decode("latin1"))
                break
        store = import_module(settings.SESSION_ENGINE).SessionStore
        session = store(cookies.get(settings.SESSION_COOKIE_NAME))
        scope = dict(scope, cookies=cookies, session=session, user=None)  # one allocation
        scope["user"] = await get_user(scope)
        return scope


websocket_urlpatterns = [
    path("ws/portfolio/", SessionAuth(consumers.PortfolioConsumer.as_asgi())),
    # <path:...>: a symbol may contain "/" (Kraken's BTC/USD), as on the page's URL.
    path("ws/instrument/<path:symbol>/", SessionAuth(consumers.InstrumentConsumer.as_asgi())),
]

api_urlpatterns = [
    path("ws/v1/", SessionAuth(consumers.ApiConsumer.as_asgi())),
]


def websocket_application():
    """/ws/v1/ with the API's origin rule; every other path exactly as strict as before."""
    allowed_hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = ["localhost", "127.0.0.1", "[::1]"]  # as AllowedHostsOriginValidator
    api = OriginIfPresentValidator(URLRouter(api_urlpatterns), allowed_hosts)
    browser = AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns))

    def route(scope, receive, send):
        # Not a coroutine function: the chosen app's coroutine is awaited by the caller, so an
        # open socket holds no frame of this function.
        app = api if scope["path"].startswith(API_PREFIX) else browser
        return app(scope, receive, send)

    return route
