"""The worker's portfolio books (live_states.PortfolioBookCache) and frames encoded once."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from decimal import Decimal

import pytest
from django.conf import settings

from portfolio import valuation, wire
from portfolio.models import Holding, Instrument, Portfolio
from portfolio.selectors import live_states
from streaming import events, protocol
from streaming.tasks import ingest_quotes
from tests.test_ingest import T0, tick
from tests.test_portfolio_ledger import buy, sell

NOW = T0.replace(hour=13)  # one clock for every call: price ages are compared too


def states(portfolio, cache=None):
    [state] = live_states.portfolio_states(portfolio_ids=[portfolio.id], cache=cache, now=NOW)
    state.pop("valued_at")
    return state


def test_a_cached_book_is_reused_until_the_ledger_changes_and_then_matches_the_database(world):
    alice = world["portfolios"]["alice"]
    ingest_quotes([tick(world["btc"], "600", T0), tick(world["eth"], "3000", T0)])
    cache = live_states.PortfolioBookCache()
    assert states(alice, cache) == states(alice)
    assert cache.loads == 1
    ingest_quotes([tick(world["btc"], "650", T0.replace(minute=1))])
    assert states(alice, cache) == states(alice)  # new prices, same book
    assert cache.loads == 1

    buy(alice, world["eth"], "1.5", "3000", T0)  # a trade replays the ledger
    fresh = states(alice)
    assert states(alice, cache) == fresh
    assert cache.loads == 2
    assert [h["symbol"] for h in fresh["holdings"]] == ["BTC-USD", "ETH-USD"]

    sell(alice, world["btc"], "2", "650", T0.replace(minute=2))  # BTC closed: realized P&L stays
    closed = states(alice, cache)
    assert closed == states(alice)
    assert [h["symbol"] for h in closed["holdings"]] == ["ETH-USD"]
    assert Decimal(closed["realized_pnl"]) == Decimal("300.00")  # 2 x (650 - 500)


def test_name_and_base_currency_are_read_fresh_with_a_cached_book(world):
    alice = world["portfolios"]["alice"]
    cache = live_states.PortfolioBookCache()
    states(alice, cache)
    Portfolio.objects.filter(pk=alice.pk).update(name="Renamed", base_currency="EUR")
    state = states(alice, cache)
    assert (state["name"], state["base_currency"]) == ("Renamed", "EUR")
    assert state == states(alice)
    assert cache.loads == 1


def test_an_instrument_edited_in_the_admin_is_valued_as_edited_with_a_cached_book(world):
    # The cached book keeps each position's valuation input; the instrument's currency and
    # asset class come from the instrument, which the admin can change without a ledger replay.
    alice = world["portfolios"]["alice"]
    ingest_quotes([tick(world["btc"], "600", T0), tick(world["eth"], "3000", T0)])
    cache = live_states.PortfolioBookCache()
    before = states(alice, cache)
    assert [s["key"] for s in before["allocation"]["asset_class"]] == ["crypto"]
    Instrument.objects.filter(pk=world["btc"].pk).update(asset_class="equity")
    after = states(alice, cache)
    assert after == states(alice)  # as from the database: allocation by class included
    assert cache.loads == 1
    assert [s["key"] for s in after["allocation"]["asset_class"]] == ["equity"]


def test_a_holding_in_its_instruments_currency_follows_an_edit_of_that_currency(world):
    # A holding whose currency is "" is in its instrument's quote currency, whatever the admin
    # makes that; a cached book must not keep valuing it in the old one.
    alice = world["portfolios"]["alice"]
    ingest_quotes([tick(world["btc"], "600", T0), tick(world["eth"], "3000", T0)])
    Holding.objects.filter(portfolio=alice, instrument=world["btc"]).update(currency="")
    cache = live_states.PortfolioBookCache()
    before = states(alice, cache)
    assert [h["currency"] for h in before["holdings"] if h["symbol"] == "BTC-USD"] == ["USD"]
    Instrument.objects.filter(pk=world["btc"].pk).update(quote_currency="EUR")
    after = states(alice, cache)
    assert after == states(alice)  # as from the database
    assert cache.loads == 1
    btc = next(h for h in after["holdings"] if h["symbol"] == "BTC-USD")
    assert (btc["currency"], btc["status"]) == ("EUR", "no_fx")  # no EUR rate in this world


def test_a_cached_books_rows_follow_an_instrument_renamed_in_the_admin(world):
    # A cached book keeps its rows' order (by symbol) between passes; a renamed instrument must
    # reorder it, as the database's order would be, without a ledger replay.
    alice = world["portfolios"]["alice"]
    buy(alice, world["eth"], "1.5", "3000", T0)
    ingest_quotes([tick(world["btc"], "600", T0), tick(world["eth"], "3000", T0)])
    cache = live_states.PortfolioBookCache()
    assert [h["symbol"] for h in states(alice, cache)["holdings"]] == ["BTC-USD", "ETH-USD"]
    assert [h["symbol"] for h in states(alice, cache)["holdings"]] == ["BTC-USD", "ETH-USD"]
    Instrument.objects.filter(pk=world["btc"].pk).update(symbol="XBT-USD")
    after = states(alice, cache)
    assert [h["symbol"] for h in after["holdings"]] == ["ETH-USD", "XBT-USD"]
    assert after == states(alice)
    assert cache.loads == 1


def test_an_encoded_part_goes_into_the_frame_verbatim_and_routes_by_its_id():
    part = protocol.Encoded('{"id":7,"total":"1.00"}', id=7)
    assert part["id"] == 7  # what consumers route on
    frame = protocol.encode({"type": "valuation", "seq": 3, "portfolio": part})
    assert json.loads(frame) == {
        "type": "valuation",
        "seq": 3,
        "portfolio": {"id": 7, "total": "1.00"},
    }


def test_a_published_event_carries_objects_encoded_once_and_decodes_to_the_payload():
    payload = protocol.valuation(portfolio={"id": 5, "total": "9.50", "holdings": [{"a": "1"}]})
    message = events.layer_message(payload)
    assert message["payload"] == {"type": "valuation", "portfolio": {"id": 5}}
    assert json.loads(message["encoded"]["portfolio"]) == payload["portfolio"]
    decoded = events.payload_of(message)
    assert decoded["portfolio"]["id"] == 5
    assert json.loads(protocol.encode(decoded)) == payload
    quote = {"type": "quote", "instrument": 1, "price": "2"}  # flat: travels as it is
    assert events.layer_message(quote) == {"type": events.EVENT, "payload": quote}


def test_a_frame_with_something_not_json_names_its_type():
    with pytest.raises(TypeError, match="Decimal"):
        protocol.encode({"price": Decimal("1")})


def test_trimming_a_columns_scale_keeps_every_digit(world):
    # Books and quotes are valued on their numbers without the column's trailing zeros; a
    # quantity as wide as its column (30 digits) must come back whole, not rounded to 28.
    wide = Decimal("123456789012345678.123456789012")
    assert live_states.trim_scale(wide) == wide
    assert (
        live_states.trim_scale(Decimal("17.110000000000")).as_tuple() == Decimal("17.11").as_tuple()
    )
    alice = world["portfolios"]["alice"]
    Holding.objects.filter(portfolio=alice).update(quantity=Decimal("2.000000000001"))
    ingest_quotes([tick(world["btc"], "50000", T0)])
    (state,) = live_states.portfolio_states(portfolio_ids=[alice.id], now=NOW)
    assert state["holdings"][0]["quantity"] == "2.000000000001"
    assert state["holdings"][0]["value"] == "100000.00"  # 2.000000000001 x 50000 = 100000.00000005


def test_holding_rows_say_what_their_valuation_says_for_every_kind_of_holding():
    # live_states._state formats a priced row's amounts inline (a worker does it per holding per
    # valuation) and takes as_of from the rows' texts: here every row is checked against the
    # plain formatting of its HoldingValue, over random portfolios that mix priced, unpriced,
    # unconvertible, foreign-currency, short and flat holdings.
    rng = random.Random(8)
    now = NOW
    market = {}
    for i in range(1, 41):
        priced = rng.random() > 0.1
        price = Decimal(rng.randint(1, 10**7)).scaleb(-rng.randint(0, 6)) if priced else None
        reference = price * rng.randint(80, 120) / 100 if priced and rng.random() > 0.2 else None
        stamp = now - timedelta(milliseconds=rng.randint(0, 200_000)) if priced else None
        market[i] = live_states.Market(
            f"S{i:02d}", f"Name {i}", rng.choice(["equity", "crypto", "etf"]),
            rng.choice(["USD", "EUR", "JPY"]), price, reference, stamp,
        )  # fmt: skip
    rates = {("EUR", "USD"): Decimal("1.0812"), ("USD", "JPY"): Decimal("151.37")}
    money, pct = wire.money, live_states._pct
    for n in range(200):
        positions = []
        for instrument in rng.sample(sorted(market), rng.randint(0, 12)):
            quantity = Decimal(rng.choice([0, -3, 1, 2.5, 1000, 0.00012345]))
            cost = abs(quantity) * rng.randint(1, 5000)
            realized = Decimal(rng.choice([0, 0, "-12.5", "40"]))
            texts = live_states.position_texts(quantity, cost, realized, Decimal(0))
            currency = rng.choice(["", "", "EUR", "GBP"])  # GBP: no rate to anything
            positions.append(
                live_states.BookPosition(
                    instrument, quantity, cost, currency, realized, Decimal(0), texts
                )
            )
        base = rng.choice(["USD", "EUR", "JPY"])
        book = live_states.PortfolioBook(n, n, "P", base, "fifo", None, positions, [])
        state = live_states._state(book, market, live_states._MarketTexts(market, now), rates)
        open_positions, value = live_states._book_value(book, market, rates)
        assert len(state["holdings"]) == len(value.holdings) == len(open_positions)
        for row, p, hv in zip(state["holdings"], open_positions, value.holdings, strict=True):
            priced = hv.status is valuation.ValueStatus.OK
            same = hv.currency == base
            shown = money(hv.market_value) if priced else None
            cost_base = p.texts["cost_basis"] if same else money(hv.cost)
            m = market[p.instrument]
            day = None
            if priced and m.reference_price:
                day = pct(valuation.price_return(m.price, m.reference_price))
            age = None if m.exchange_ts is None else (now - m.exchange_ts).total_seconds()
            expected = {
                "instrument": p.instrument,
                "symbol": m.symbol,
                "name": m.name,
                "asset_class": m.asset_class,
                "price_decimals": m.price_decimals,
                "price": wire.dec(m.price),
                "reference_price": wire.dec(m.reference_price),
                "price_as_of": wire.iso(m.exchange_ts) if m.exchange_ts else None,
                "price_age_seconds": None if age is None else max(0, int(age)),
                "stale": age is None or age > settings.LIVEFOLIO_STALE_SECONDS,
                **p.texts,
                "currency": hv.currency,
                "value": shown if same else money(live_states._times(p.quantity, hv.price)),
                "in_total": priced,
                "status": str(hv.status),
                "reason": hv.reason,
                "fx_rate": "1" if same else wire.dec(hv.fx_rate),
                "value_base": shown,
                "cost_base": cost_base if priced else None,
                "unrealized_pnl": money(hv.unrealized_pnl),
                "unrealized_pnl_pct": pct(hv.unrealized_return),
                "price_effect": money(hv.price_effect),
                "currency_effect": money(hv.currency_effect),
                "day_change": money(hv.day_change),
                "day_change_pct": day,
                "weight_pct": pct(hv.weight),
            }
            assert list(row.items()) == list(expected.items()), (n, row)  # keys in order too
        stamps = [market[p.instrument].exchange_ts for p in open_positions]
        newest = max((s for s in stamps if s is not None), default=None)
        assert state["as_of"] == (wire.iso(newest) if newest else None)
