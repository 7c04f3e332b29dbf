from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from portfolio import selectors
from portfolio.models import Instrument


def home(request: HttpRequest) -> HttpResponse:
    """The live portfolio page. The table is drawn from the WebSocket snapshot, then kept live."""
    return render(request, "portfolio/home.html")


def instrument(request: HttpRequest, symbol: str) -> HttpResponse:
    """The instrument page: live candles, 24 h stats, trade tape and book, the user's position."""
    instrument = get_object_or_404(Instrument, symbol=symbol)
    return render(request, "portfolio/instrument.html", {"instrument": instrument})


@staff_member_required
def feed_status(request: HttpRequest) -> HttpResponse:
    """For staff: each feed's health and each instrument's price age."""
    return render(request, "portfolio/feed_status.html", selectors.feed_health())
