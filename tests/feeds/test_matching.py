"""The limit order book under the simulated exchange: price-time priority, and a book that stays
consistent whatever orders arrive (hypothesis)."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.feeds.matching import LimitOrderBook

pytestmark = pytest.mark.unit

D = Decimal


def test_a_crossing_buy_takes_the_best_ask_first_and_the_oldest_order_at_a_price_first():
    book = LimitOrderBook()
    first, _ = book.submit("sell", D("101"), D("1"))
    second, _ = book.submit("sell", D("101"), D("2"))
    book.submit("sell", D("102"), D("5"))
    book.submit("buy", D("99"), D("1"))

    taker, fills = book.submit("buy", D("102"), D("3.5"))

    assert [(f.price, f.size, f.maker_order_id) for f in fills] == [
        (D("101"), D("1"), first),
        (D("101"), D("2"), second),
        (D("102"), D("0.5"), fills[2].maker_order_id),
    ]
    assert [f.trade_id for f in fills] == [1, 2, 3]
    assert {f.taker_side for f in fills} == {"buy"}
    assert {f.taker_order_id for f in fills} == {taker}
    assert book.levels("sell") == ((D("102"), D("4.5")),)  # 101 is gone, not left at size 0
    assert book.levels("buy") == ((D("99"), D("1")),)
    assert taker not in book.orders  # all of it traded: nothing rests


def test_what_a_limit_order_does_not_fill_rests_and_an_immediate_or_cancel_order_drops_it():
    book = LimitOrderBook()
    book.submit("buy", D("100"), D("1"))
    rested, fills = book.submit("sell", D("99.5"), D("3"))
    assert [(f.price, f.size, f.taker_side) for f in fills] == [(D("100"), D("1"), "sell")]
    assert book.levels("sell") == ((D("99.5"), D("2")),)
    assert book.orders[rested].size == D("2")
    assert book.levels("buy") == ()

    _, fills = book.submit("buy", D("99.5"), D("5"), immediate_or_cancel=True)
    assert [(f.price, f.size) for f in fills] == [(D("99.5"), D("2"))]
    assert book.levels("buy") == book.levels("sell") == ()


def test_a_cancel_removes_the_order_and_an_emptied_level():
    book = LimitOrderBook()
    one, _ = book.submit("buy", D("10"), D("1"))
    two, _ = book.submit("buy", D("10"), D("2"))
    assert book.cancel(one).size == D("1")
    assert book.levels("buy") == ((D("10"), D("2")),)
    assert book.cancel(one) is None  # not resting any more
    book.cancel(two)
    assert book.levels("buy") == () and book.best_bid is None


@pytest.mark.parametrize(
    "side, price, size", [("hold", D("1"), D("1")), ("buy", D("0"), D("1")), ("sell", D("1"), D(0))]
)
def test_an_order_without_a_side_a_positive_price_or_a_positive_size_is_refused(side, price, size):
    book = LimitOrderBook()
    with pytest.raises(ValueError, match=r"side|positive"):
        book.submit(side, price, size)
    assert book.orders == {} and book.levels("buy") == book.levels("sell") == ()


prices = st.integers(min_value=90, max_value=110).map(lambda n: D(n) / 2)
sizes = st.integers(min_value=1, max_value=50).map(lambda n: D(n) / 10)
submit = st.tuples(
    st.just("submit"), st.sampled_from(["buy", "sell"]), prices, sizes, st.booleans()
)
cancel = st.tuples(st.just("cancel"), st.integers(min_value=0, max_value=200))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(submit, cancel), max_size=120))
def test_after_every_order_and_cancel_the_book_is_consistent(operations):
    """Best bid < best ask, every level positive and equal to its orders, fills at or better
    than the limit, best price first, trade ids one apart, and size neither made nor lost."""
    book = LimitOrderBook()
    trade_ids: list[int] = []
    submitted = traded = cancelled = dropped = D(0)
    for operation in operations:
        if operation[0] == "cancel":
            order = book.cancel(operation[1])
            cancelled += order.size if order else 0
        else:
            _, side, price, size, ioc = operation
            makers = dict(book.levels("sell" if side == "buy" else "buy"))
            order_id, fills = book.submit(side, price, size, immediate_or_cancel=ioc)
            submitted += size
            filled = sum((f.size for f in fills), D(0))
            traded += filled
            assert filled <= size
            for fill in fills:
                assert fill.taker_side == side and fill.taker_order_id == order_id
                assert fill.size > 0
                assert fill.price <= price if side == "buy" else fill.price >= price
                assert fill.price in makers  # at a resting order's price
            fill_prices = [f.price for f in fills]
            assert fill_prices == sorted(fill_prices, reverse=side == "sell")  # best first
            trade_ids += [f.trade_id for f in fills]
            resting = book.orders.get(order_id)
            if ioc:
                assert resting is None
                dropped += size - filled
            else:
                assert (resting.size if resting else D(0)) == size - filled
        bids, asks = book.levels("buy"), book.levels("sell")
        if bids and asks:
            assert bids[0][0] < asks[0][0]
        assert [p for p, _ in bids] == sorted({p for p, _ in bids}, reverse=True)
        assert [p for p, _ in asks] == sorted({p for p, _ in asks})
        by_level: dict[tuple[str, Decimal], Decimal] = defaultdict(D)
        for order in book.orders.values():
            assert order.size > 0
            by_level[(order.side, order.price)] += order.size
        shown = {("buy", p): s for p, s in bids} | {("sell", p): s for p, s in asks}
        assert shown == dict(by_level)
        assert all(size > 0 for size in shown.values())
    assert trade_ids == list(range(1, len(trade_ids) + 1))
    # Each unit submitted traded once as a taker and once as a maker, rests, was cancelled,
    # or was dropped (what an immediate-or-cancel order did not fill).
    resting = sum((o.size for o in book.orders.values()), D(0))
    assert submitted == 2 * traded + resting + cancelled + dropped
