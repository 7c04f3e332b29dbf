"""WebSocket routes and who may open them.

Browser pages (``websocket_urlpatterns``): a logged-in session and an Origin among the allowed
hosts; no Origin is refused. The API (``api_urlpatterns``, /ws/v1/): a browser (it always sends
Origin) must come from an allowed host; a bot, without an Origin, may connect and must then
authenticate with a token (the consumer closes it otherwise).
"""

from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.security.websocket import AllowedHostsOriginValidator, OriginValidator
from django.conf import settings
from django.urls import path

from streaming import consumers

API_PREFIX = "/ws/v1/"

websocket_urlpatterns = [
    path("ws/portfolio/", consumers.PortfolioConsumer.as_asgi()),
    path("ws/instrument/<str:symbol>/", consumers.InstrumentConsumer.as_asgi()),
]

api_urlpatterns = [
    path("ws/v1/", consumers.ApiConsumer.as_asgi()),
]


class OriginIfPresentValidator(OriginValidator):
    """Like channels' OriginValidator, but a handshake without Origin (not a browser) passes."""

    def valid_origin(self, parsed_origin) -> bool:
        if parsed_origin is None:
            return True
        return super().valid_origin(parsed_origin)


def websocket_application():
    """/ws/v1/ with the API's origin rule; every other path exactly as strict as before."""
    allowed_hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = ["localhost", "127.0.0.1", "[::1]"]  # as AllowedHostsOriginValidator
    api = OriginIfPresentValidator(AuthMiddlewareStack(URLRouter(api_urlpatterns)), allowed_hosts)
    browser = AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))

    async def route(scope, receive, send):
        app = api if scope["path"].startswith(API_PREFIX) else browser
        return await app(scope, receive, send)

    return route
