"""The simulated exchange: deterministic prices for a seed, ticks only for the symbols it has,
and a loop that does not wake for every single tick."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.feeds import simulated
from streaming.feeds.base import Book, Tick, Trade
from streaming.feeds.simulated import SimulatedBook, SimulatedFeed

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


# The simulated order book ------------------------------------------------------------------


def D(text: str) -> Decimal:
    return Decimal(text)


def test_an_order_that_crosses_trades_best_level_first_and_rests_the_rest():
    book = SimulatedBook(tick_size=D("0.1"))
    book.limit("sell", D("100.2"), D("1"))
    book.limit("sell", D("100.1"), D("2"))
    book.limit("buy", D("99.9"), D("5"))
    fills = book.limit("buy", D("100.2"), D("4"))
    assert fills == [(D("100.1"), D("2")), (D("100.2"), D("1"))]
    assert book.bids == {D("99.9"): D("5"), D("100.2"): D("1")}  # 4 - 3 traded rests
    assert book.asks == {}
    assert book.market("sell", D("2")) == [(D("100.2"), D("1")), (D("99.9"), D("1"))]
    book.cancel("buy", D("99.9"), D("4"))
    assert book.bids == {}


def test_a_limit_order_that_does_not_cross_only_rests():
    book = SimulatedBook(tick_size=D("1"))
    book.limit("sell", D("101"), D("1"))
    assert book.limit("buy", D("100"), D("3")) == []
    assert book.limit("buy", D("100"), D("1")) == []
    assert book.top(10) == (((D("100"), D("4")),), ((D("101"), D("1")),))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32), start=st.sampled_from(["97000", "3.5"]))
def test_the_simulated_book_stays_consistent_and_its_tape_agrees_with_it(seed, start):
    feed = SimulatedFeed(
        emit=lambda event: None,
        seed=seed,
        rate=100,
        start_prices={"BTC/USDT": D(start)},
        book_symbols=frozenset({"BTC/USDT"}),
    )
    first = feed.initial_book("BTC/USDT")
    assert len(first.bids) == len(first.asks) == 10
    trade_ids: list[int] = []
    last_trade = None
    for _ in range(300):
        events = feed.book_step("BTC/USDT")
        trades = [e for e in events if isinstance(e, Trade)]
        [book] = [e for e in events if isinstance(e, Book)]
        [tick] = [e for e in events if isinstance(e, Tick)]
        bid_prices = [p for p, _ in book.bids]
        ask_prices = [p for p, _ in book.asks]
        assert bid_prices == sorted(bid_prices, reverse=True) and len(set(bid_prices)) == 10
        assert ask_prices == sorted(ask_prices) and len(set(ask_prices)) == 10
        assert bid_prices[0] < ask_prices[0]  # a crossing order trades, it never rests
        assert all(q > 0 for _, q in (*book.bids, *book.asks))
        for trade in trades:
            assert trade.size > 0 and trade.side in ("buy", "sell")
            trade_ids.append(int(trade.trade_id))
            last_trade = trade.price
        assert (tick.bid, tick.ask) == (bid_prices[0], ask_prices[0])
        if last_trade is not None:
            assert tick.price == last_trade
    assert trade_ids == list(range(1, len(trade_ids) + 1))
    assert trade_ids, "300 steps of a simulated market without a single trade"


def test_a_seed_gives_the_same_book_and_tape_every_time():
    def run(seed: int) -> list:
        feed = SimulatedFeed(emit=lambda e: None, seed=seed, book_symbols=frozenset({"X"}))
        return [
            (type(e).__name__, getattr(e, "price", None), getattr(e, "bids", None))
            for _ in range(50)
            for e in feed.book_step("X")
        ]

    assert run(3) == run(3)
    assert run(3) != run(4)


async def test_a_book_symbol_gets_its_book_at_once_then_trades_and_books_as_it_runs():
    events = []
    traded = asyncio.Event()

    def emit(event) -> None:
        events.append(event)
        if isinstance(event, Trade):
            traded.set()

    feed = SimulatedFeed(emit=emit, seed=5, rate=200, book_symbols=frozenset({"BTC/USDT"}))
    await feed.set_symbols(frozenset({"BTC/USDT", "AAPL"}))
    runner = asyncio.create_task(feed.run())
    try:
        await asyncio.wait_for(traded.wait(), 10)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert isinstance(events[0], Book) and events[0].feed_symbol == "BTC/USDT"
    # Only the book symbol has a book and a tape; the other ticks as before.
    assert {e.feed_symbol for e in events if isinstance(e, Book | Trade)} == {"BTC/USDT"}
    assert {e.feed_symbol for e in events if isinstance(e, Tick)} <= {"BTC/USDT", "AAPL"}
