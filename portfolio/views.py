from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def home(request: HttpRequest) -> HttpResponse:
    """The live portfolio page. The table is drawn from the WebSocket snapshot, then kept live."""
    return render(request, "portfolio/home.html", {"stale_after": settings.LIVEFOLIO_STALE_SECONDS})
