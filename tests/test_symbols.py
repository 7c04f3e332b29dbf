"""Any symbol the admin accepts works on every page, socket and API stream that names it.

Kraken names its pairs ``BTC/USD``, so a symbol with ``/`` is natural; URLs carry it as path
segments (``/i/BTC/USD/``, or ``/i/BTC%2FUSD/`` as the portfolio page's script encodes it).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from html import unescape

import pytest
from channels.db import database_sync_to_async
from django.urls import reverse

from portfolio import services
from portfolio.ledger import TxKind
from portfolio.models import Instrument
from streaming import streams
from streaming.tasks import ingest_quotes
from tests.api import connect, request
from tests.websocket import communicator, session_cookie

SYMBOL = "BTC/USD"


def add_in_admin(admin_client, symbol: str):
    return admin_client.post(
        reverse("admin:portfolio_instrument_add"),
        {
            "symbol": symbol,
            "name": "Bitcoin on Kraken",
            "asset_class": "crypto",
            "quote_currency": "USD",
            "feed": "kraken",
            "feed_symbol": "BTC/USD",
            "active": "on",
            # The quote inline's management form (no quote rows).
            "quote-TOTAL_FORMS": "0",
            "quote-INITIAL_FORMS": "0",
            "quote-MIN_NUM_FORMS": "0",
            "quote-MAX_NUM_FORMS": "1",
        },
    )


def links_to(html: str, text: str) -> list[str]:
    return [
        unescape(href)
        for href, label in re.findall(r'<a href="([^"]+)"[^>]*>([^<]*)</a>', html)
        if unescape(label).strip() == text
    ]


@pytest.mark.django_db
def test_an_instrument_with_a_slash_added_in_the_admin_works_on_every_page(
    world, admin_client, client
):
    response = add_in_admin(admin_client, SYMBOL)
    assert response.status_code == 302, response.content.decode()[:2000]
    instrument = Instrument.objects.get(symbol=SYMBOL)
    ingest_quotes(
        [
            {
                "instrument": instrument.id,
                "price": "45283.5",
                "ts": datetime.now(UTC).isoformat(),
                "source": "kraken",
            }
        ]
    )

    status = admin_client.get("/status/feeds/")
    assert status.status_code == 200
    [link] = links_to(status.content.decode(), SYMBOL)
    assert link == "/i/BTC/USD/"
    page = admin_client.get(link)
    assert page.status_code == 200
    assert page.context["instrument"] == instrument
    assert 'data-ws-path="/ws/instrument/BTC/USD/"' in page.content.decode()
    # The portfolio page's script links holdings with encodeURIComponent: /i/BTC%2FUSD/.
    assert admin_client.get("/i/BTC%2FUSD/").context["instrument"] == instrument

    changelist = admin_client.get(reverse("admin:portfolio_instrument_changelist"))
    assert changelist.status_code == 200 and SYMBOL in changelist.content.decode()
    change = admin_client.get(reverse("admin:portfolio_instrument_change", args=[instrument.pk]))
    assert change.status_code == 200

    alice = world["portfolios"]["alice"]
    bought_at = datetime(2024, 1, 2, tzinfo=UTC)
    services.transaction_add(
        portfolio=alice, kind=TxKind.DEPOSIT, amount=Decimal("22500"), executed_at=bought_at
    )
    services.transaction_add(
        portfolio=alice,
        kind=TxKind.BUY,
        instrument=instrument,
        quantity=Decimal("0.5"),
        price=Decimal("45000"),
        fees=Decimal("0"),
        executed_at=bought_at,
    )
    owner = client
    owner.force_login(world["users"]["alice"])
    for url in (
        reverse("home"),
        reverse("portfolio", args=[alice.pk]),
        reverse("transactions", args=[alice.pk]),
        reverse("performance", args=[alice.pk]),
        reverse("transaction-export", args=[alice.pk]),
        "/i/BTC/USD/",
    ):
        assert owner.get(url).status_code == 200, url


@pytest.mark.django_db
@pytest.mark.parametrize("symbol", ["BTC/../USD", "BTC//USD", "./BTC", "BTC/", "BTC\tUSD"])
def test_the_admin_refuses_a_symbol_no_url_can_carry_and_says_why(admin_client, symbol):
    response = add_in_admin(admin_client, symbol)
    assert response.status_code == 200  # the form again, with its error
    errors = response.context["adminform"].form.errors
    assert "symbol" in errors, errors
    assert not Instrument.objects.filter(symbol=symbol).exists()


@pytest.mark.django_db(transaction=True)
async def test_the_instrument_socket_and_the_api_serve_a_symbol_with_a_slash(world, redis_client):
    instrument = await database_sync_to_async(Instrument.objects.create)(
        symbol=SYMBOL,
        name="Bitcoin on Kraken",
        asset_class="crypto",
        quote_currency="USD",
        feed="kraken",
        feed_symbol="BTC/USD",
    )
    cookie = await database_sync_to_async(session_cookie)(world["users"]["alice"])
    page_socket = communicator("/ws/instrument/BTC/USD/", cookie=cookie)
    connected, _ = await page_socket.connect()
    assert connected
    snapshot = await page_socket.receive_json_from(timeout=5)
    assert snapshot["instrument"]["symbol"] == SYMBOL
    await page_socket.disconnect()

    bot = await connect(world["users"]["alice"])
    reply = await request(bot, type="subscribe", id=1, stream=f"quotes:{SYMBOL}")
    assert reply["result"]["stream"] == f"quotes:{SYMBOL}", reply
    assert instrument.symbol == SYMBOL
    await bot.disconnect()


@pytest.mark.django_db
@pytest.mark.parametrize("symbol", ["EUR/USD?x#1", "100%/ÄÖ", "a.b/..c"])
def test_any_symbol_the_admin_accepts_links_to_its_own_page(world, admin_client, symbol):
    assert add_in_admin(admin_client, symbol).status_code == 302
    instrument = Instrument.objects.get(symbol=symbol)
    status = admin_client.get("/status/feeds/")
    assert status.status_code == 200
    [link] = links_to(status.content.decode(), symbol)
    assert admin_client.get(link).context["instrument"] == instrument


@pytest.mark.django_db
def test_an_api_stream_names_the_instrument_spelled_so_and_any_case_finds_a_lone_one(world):
    upper = Instrument.objects.create(
        symbol="ABC-USD", name="Upper", quote_currency="USD", feed_symbol="A"
    )
    lower = Instrument.objects.create(
        symbol="abc-usd", name="Lower", quote_currency="USD", feed_symbol="a"
    )
    alice = world["users"]["alice"].id
    assert streams.stream_resolve(name="quotes:abc-usd", user_id=alice).source_id == lower.id
    assert streams.stream_resolve(name="quotes:ABC-USD", user_id=alice).source_id == upper.id
    lone = streams.stream_resolve(name="trades:eth-usd", user_id=alice)
    assert (lone.name, lone.source_id) == ("trades:ETH-USD", world["eth"].id)
