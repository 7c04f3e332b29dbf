"""The simulated exchange: deterministic prices for a seed, ticks only for the symbols it has,
a loop that does not wake for every single tick, and order-book markets for crypto symbols."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.feeds import simulated
from streaming.feeds.base import Book, Tick, Trade
from streaming.feeds.simulated import SimulatedFeed

pytestmark = pytest.mark.unit


def _prices(seed: int, symbols: list[str], steps: int) -> list[tuple[str, str]]:
    feed = SimulatedFeed(emit=lambda tick: None, seed=seed, rate=1000)
    return [(s, str(feed.step(s).price)) for s in symbols * steps]


def test_a_seed_gives_the_same_price_path_every_time():
    path = _prices(7, ["BTC-USD", "ETH-USD"], 50)
    assert path == _prices(7, ["BTC-USD", "ETH-USD"], 50)
    assert path != _prices(8, ["BTC-USD", "ETH-USD"], 50)


async def _run_until(feed: SimulatedFeed, monkeypatch, on_sleep, sleeps: int) -> list[float]:
    """Run ``feed`` until its loop has slept ``sleeps`` times; each sleep awaits ``on_sleep(n)``,
    then really waits 2 ms (so ticks fall due). Returns the delays the loop asked for."""
    delays: list[float] = []
    real_sleep = asyncio.sleep
    done = asyncio.Event()

    async def sleep(delay: float) -> None:
        delays.append(delay)
        await on_sleep(len(delays))
        if len(delays) == sleeps:
            done.set()
            await real_sleep(3600)
        await real_sleep(0.002)

    monkeypatch.setattr(simulated.asyncio, "sleep", sleep)
    runner = asyncio.create_task(feed.run())
    await asyncio.wait_for(done.wait(), 10)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    return delays


async def test_ticks_follow_the_symbol_set_and_wake_ups_are_at_least_5_ms_apart(monkeypatch):
    ticks = []
    feed = SimulatedFeed(emit=ticks.append, seed=1, rate=5000)
    await feed.set_symbols(frozenset({"A", "B"}))
    per_wake: list[int] = []

    async def on_sleep(n: int) -> None:
        per_wake.append(len(ticks) - sum(per_wake))
        if n == 3:  # the admin changed the instruments: the next ticks use the new set
            ticks.clear()
            per_wake.clear()
            await feed.set_symbols(frozenset({"C"}))

    delays = await _run_until(feed, monkeypatch, on_sleep, sleeps=7)
    # At 5,000 ticks/s a tick is owed every 0.2 ms; the loop still sleeps 5 ms or more between
    # wake-ups, and each wake-up emits all that the clock says is owed (2 ms or more: >= 10).
    assert min(delays) >= 0.005
    assert max(per_wake) >= 10
    assert ticks and {t.feed_symbol for t in ticks} == {"C"}


async def test_at_a_low_rate_the_loop_sleeps_until_the_next_tick_is_due(monkeypatch):
    feed = SimulatedFeed(emit=lambda tick: None, seed=1, rate=10)
    await feed.set_symbols(frozenset({"A"}))

    async def nothing(n: int) -> None:
        pass

    delays = await _run_until(feed, monkeypatch, nothing, sleeps=1)
    assert 0.05 < delays[0] <= 0.1  # a tick every 100 ms, not one every MIN_WAKE


# The simulated market: an order book per crypto symbol ------------------------------------------

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
START = {"BTC-USDT": Decimal("97000"), "ETH-USDT": Decimal("3500")}


def _opened(seed: int, symbols: list[str]) -> tuple[SimulatedFeed, list]:
    emitted: list = []
    feed = SimulatedFeed(emit=emitted.append, seed=seed, start_prices=START)
    for symbol in symbols:
        feed.open_market(symbol, NOW)
    return feed, emitted


def _flow(seed: int, symbols: list[str], events: int = 150) -> list:
    """What the feed emits for ``symbol``'s opening and then ``events`` order events each."""
    feed, emitted = _opened(seed, symbols)
    for n in range(1, events + 1):
        for symbol in symbols:
            emitted += feed.markets[symbol].event(NOW + timedelta(milliseconds=50 * n))
    return emitted


def test_a_seed_gives_each_market_the_same_order_flow_whatever_else_trades():
    alone = _flow(7, ["BTC-USDT"])
    beside = [e for e in _flow(7, ["ETH-USDT", "BTC-USDT"]) if e.feed_symbol == "BTC-USDT"]
    assert alone == beside
    assert alone != _flow(8, ["BTC-USDT"])
    assert {type(e) for e in alone} == {Tick, Trade, Book}


def test_a_market_opens_with_a_full_book_and_a_minute_of_trades():
    feed, emitted = _opened(3, ["BTC-USDT"])
    trades = [e for e in emitted if isinstance(e, Trade)]
    books = [e for e in emitted if isinstance(e, Book)]
    assert len(trades) >= 20
    assert [int(t.trade_id) for t in trades] == list(range(1, len(trades) + 1))
    window = timedelta(seconds=SimulatedFeed.WARMUP_SECONDS)
    assert all(NOW - window <= t.ts <= NOW for t in trades)
    assert [t.ts for t in trades] == sorted(t.ts for t in trades)
    last = books[-1]
    assert len(last.bids) == len(last.asks) == 10
    assert (last.bids, last.asks) == feed.markets["BTC-USDT"].top()
    # Prices at the pair's tick (0.01 at this price), sizes in whole lots (0.00001 BTC).
    levels = [*last.bids, *last.asks]
    assert all(
        p == p.quantize(Decimal("0.01")) and s == s.quantize(Decimal("0.00001")) for p, s in levels
    )


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32), events=st.integers(1, 400))
def test_after_every_event_the_published_book_is_consistent_and_the_markets_own(seed, events):
    """Every published book: bids strictly falling, asks strictly rising, best bid below best
    ask, sizes positive, at most 10 levels; it is the top of the market's book. Trades count
    up one by one, each with a taker side and a positive size; a tick quotes the book's top."""
    feed, emitted = _opened(seed, ["BTC-USDT"])
    market = feed.markets["BTC-USDT"]
    for n in range(events):
        emitted += market.event(NOW + timedelta(milliseconds=n))
        assert (
            market.book.best_bid is None
            or market.book.best_ask is None
            or (market.book.best_bid < market.book.best_ask)
        )
    trade_ids = []
    for event in emitted:
        if isinstance(event, Book):
            bid_prices = [p for p, _ in event.bids]
            ask_prices = [p for p, _ in event.asks]
            assert bid_prices == sorted(set(bid_prices), reverse=True)
            assert ask_prices == sorted(set(ask_prices))
            assert bid_prices and ask_prices and bid_prices[0] < ask_prices[0]
            assert all(size > 0 for _, size in (*event.bids, *event.asks))
            assert len(event.bids) <= 10 and len(event.asks) <= 10
            shown = event
        elif isinstance(event, Trade):
            assert event.side in ("buy", "sell") and event.size > 0 and event.price > 0
            trade_ids.append(int(event.trade_id))
        else:
            assert (event.bid, event.ask) == (shown.bids[0][0], shown.asks[0][0])
    assert (shown.bids, shown.asks) == market.top()
    assert trade_ids == list(range(1, len(trade_ids) + 1))


def test_a_side_swept_empty_is_quoted_again_in_the_next_event():
    feed, _ = _opened(4, ["BTC-USDT"])
    market = feed.markets["BTC-USDT"]
    for order in list(market.book.orders.values()):
        if order.side == "sell":
            market.book.cancel(order.order_id)
    published = market.event(NOW)
    [book] = [e for e in published if isinstance(e, Book)]
    assert book.asks and book.bids[0][0] < book.asks[0][0]


async def test_order_book_symbols_trade_in_their_market_and_the_rest_tick(monkeypatch):
    events: list = []
    # 5,000 ticks a second: each 2 ms wake-up owes ten or more, so the four wake-ups after the
    # switch tick both symbols whatever the machine's timing.
    feed = SimulatedFeed(emit=events.append, seed=1, rate=5000, order_rate=200, start_prices=START)
    await feed.set_order_books(frozenset({"BTC-USDT"}))
    await feed.set_symbols(frozenset({"BTC-USDT", "AAPL"}))
    fair: list[Decimal] = []

    async def on_sleep(n: int) -> None:
        if n == 4:  # the instrument is no longer crypto: its market closes, ticks go on
            fair.append(feed.markets["BTC-USDT"].fair)
            events.clear()
            await feed.set_order_books(frozenset())

    await _run_until(feed, monkeypatch, on_sleep, sleeps=8)
    kinds = {(e.feed_symbol, type(e).__name__) for e in events}
    assert kinds == {("BTC-USDT", "Tick"), ("AAPL", "Tick")}
    assert feed.markets == {}
    first = next(e for e in events if e.feed_symbol == "BTC-USDT")
    assert abs(first.price / fair[0] - 1) < Decimal("0.05")  # from where the market left it
