"""An operator adds an instrument on any exchange ccxt streams from, from the admin alone.

The exchange ids are ccxt's (``ccxt.pro.exchanges``); the markets are the list that exchange's
feed process loaded and stored with its health. Nothing here talks to an exchange.
"""

from __future__ import annotations

import os
import subprocess
import sys
from html import unescape

import pytest
from django.urls import reverse
from django.utils import timezone

from portfolio.models import FeedStatus, Instrument
from tests.conftest import ROOT

pytestmark = pytest.mark.django_db


def add_in_admin(admin_client, *, feed: str, exchange: str, feed_symbol: str):
    return admin_client.post(
        reverse("admin:portfolio_instrument_add"),
        {
            "symbol": "BTC-USDT-X",
            "name": "Bitcoin",
            "asset_class": "crypto",
            "quote_currency": "USDT",
            "feed": feed,
            "exchange": exchange,
            "feed_symbol": feed_symbol,
            "active": "on",
            "quote-TOTAL_FORMS": "0",
            "quote-INITIAL_FORMS": "0",
            "quote-MIN_NUM_FORMS": "0",
            "quote-MAX_NUM_FORMS": "1",
        },
    )


def errors(response) -> str:
    assert response.status_code == 200, "the form was accepted"
    return unescape(response.content.decode())


def okx_feed_loaded(markets: list[str]) -> None:
    FeedStatus.objects.create(
        feed="ccxt:okx", state="connected", heartbeat_at=timezone.now(), markets=markets
    )


def test_an_instrument_on_okx_is_added_from_the_admin(admin_client):
    response = add_in_admin(admin_client, feed="ccxt", exchange="okx", feed_symbol="BTC/USDT")
    assert response.status_code == 302, response.content.decode()[:2000]
    instrument = Instrument.objects.get(symbol="BTC-USDT-X")
    assert (instrument.feed, instrument.exchange, instrument.feed_symbol) == (
        "ccxt",
        "okx",
        "BTC/USDT",
    )
    assert instrument.feed_process == "ccxt:okx"


def test_an_exchange_ccxt_does_not_know_is_refused_by_name(admin_client):
    page = errors(add_in_admin(admin_client, feed="ccxt", exchange="okex9", feed_symbol="BTC/USDT"))
    assert "ccxt has no WebSocket exchange 'okex9'" in page
    assert not Instrument.objects.filter(symbol="BTC-USDT-X").exists()


def test_the_ccxt_feed_needs_an_exchange_and_only_it_names_one(admin_client):
    page = errors(add_in_admin(admin_client, feed="ccxt", exchange="", feed_symbol="BTC/USDT"))
    assert "The ccxt feed needs an exchange id" in page
    page = errors(add_in_admin(admin_client, feed="binance", exchange="okx", feed_symbol="BTCUSDT"))
    assert "Only instruments on the ccxt feed name an exchange." in page
    assert not Instrument.objects.filter(symbol="BTC-USDT-X").exists()


def test_a_market_the_exchanges_feed_did_not_load_is_refused(admin_client):
    okx_feed_loaded(["BTC/USDT", "ETH/USDT"])
    page = errors(add_in_admin(admin_client, feed="ccxt", exchange="okx", feed_symbol="BTC-USDT"))
    assert "'BTC-USDT' is not a market on okx (of the 2 markets its feed loaded)" in page
    response = add_in_admin(admin_client, feed="ccxt", exchange="okx", feed_symbol="ETH/USDT")
    assert response.status_code == 302


def test_the_feed_health_page_shows_how_many_markets_were_loaded(admin_client):
    okx_feed_loaded(["BTC/USDT", "ETH/USDT"])
    status = FeedStatus.objects.get(feed="ccxt:okx")
    page = admin_client.get(reverse("admin:portfolio_feedstatus_change", args=[status.pk]))
    assert "2 markets" in page.content.decode()


def test_loading_the_admin_does_not_load_ccxt():
    # Every process (daphne, the Celery worker) loads the admin; ccxt.pro is ~100 MiB.
    script = (
        "import sys, django; django.setup(); import portfolio.admin; print('ccxt' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "portfolio.settings"},
    )
    assert result.stdout.strip() == "False", result.stderr
