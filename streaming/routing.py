from django.urls import path

from streaming import consumers

websocket_urlpatterns = [
    path("ws/portfolio/", consumers.PortfolioConsumer.as_asgi()),
    path("ws/instrument/<str:symbol>/", consumers.InstrumentConsumer.as_asgi()),
]
