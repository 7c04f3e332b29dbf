from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from portfolio.models import Instrument


def home(request: HttpRequest) -> HttpResponse:
    """The live portfolio page. The table is drawn from the WebSocket snapshot, then kept live."""
    return render(request, "portfolio/home.html")


def instrument(request: HttpRequest, symbol: str) -> HttpResponse:
    """The instrument page: live candles, 24 h stats, trade tape and book, the user's position."""
    instrument = get_object_or_404(Instrument, symbol=symbol)
    return render(request, "portfolio/instrument.html", {"instrument": instrument})
