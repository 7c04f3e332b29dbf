"""The ledger: cost basis methods, cash, splits, shorts and the errors a user would see."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portfolio.ledger import CostBasis, LedgerEntry, LedgerError, TxKind, replay

pytestmark = pytest.mark.unit

D = Decimal
T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)


def at(day: int) -> datetime:
    return T0 + timedelta(days=day)


def buy(ref, day, qty, price, fees="0", instrument="ACME", currency="USD"):
    return LedgerEntry(
        ref=ref,
        kind=TxKind.BUY,
        executed_at=at(day),
        instrument=instrument,
        quantity=D(qty),
        price=D(price),
        fees=D(fees),
        currency=currency,
    )


def sell(ref, day, qty, price, fees="0", instrument="ACME", currency="USD"):
    return LedgerEntry(
        ref=ref,
        kind=TxKind.SELL,
        executed_at=at(day),
        instrument=instrument,
        quantity=D(qty),
        price=D(price),
        fees=D(fees),
        currency=currency,
    )


def cash(ref, kind, day, amount, fees="0", currency="USD", instrument=None):
    return LedgerEntry(
        ref=ref,
        kind=kind,
        executed_at=at(day),
        amount=D(amount),
        fees=D(fees),
        currency=currency,
        instrument=instrument,
    )


# Three lots with distinct unit costs, then one sale of 15 at 130 with a fee of 2:
#   L1  10 @ 100 + fee 1 = 1001  (unit 100.1)
#   L2  10 @ 120 + fee 1 = 1201  (unit 120.1)
#   L3  10 @ 110 + fee 1 = 1101  (unit 110.1)
#   proceeds = 15 * 130 - 2 = 1948
THREE_LOTS_THEN_SELL_15 = [
    buy("L1", 1, "10", "100", "1"),
    buy("L2", 2, "10", "120", "1"),
    buy("L3", 3, "10", "110", "1"),
    sell("S1", 4, "15", "130", "2"),
]


def closed(result):
    return [(lot.ref, lot.quantity, lot.cost) for lot in result.realizations[0].lots]


def test_fifo_sells_the_oldest_lots_first():
    # FIFO: all of L1 (1001) + half of L2 (1201 / 2 = 600.5) -> cost 1601.5, P&L 346.5;
    # left: 5 of L2 (600.5) + L3 (1101) = 1701.5.
    result = replay(THREE_LOTS_THEN_SELL_15, method=CostBasis.FIFO)
    acme = result.positions["ACME"]
    assert closed(result) == [("L1", D(10), D(1001)), ("L2", D(5), D("600.5"))]
    assert result.realizations[0].proceeds == D(1948)
    assert acme.realized_pnl == D("346.5")
    assert (acme.quantity, acme.cost_basis) == (D(15), D("1701.5"))
    assert [(lot.ref, lot.quantity) for lot in acme.lots] == [("L2", D(5)), ("L3", D(10))]


def test_lifo_sells_the_newest_lots_first():
    # LIFO: all of L3 (1101) + half of L2 (600.5) -> cost 1701.5, P&L 1948 - 1701.5 = 246.5.
    result = replay(THREE_LOTS_THEN_SELL_15, method=CostBasis.LIFO)
    acme = result.positions["ACME"]
    assert closed(result) == [("L3", D(10), D(1101)), ("L2", D(5), D("600.5"))]
    assert acme.realized_pnl == D("246.5")
    assert acme.cost_basis == D("1601.5")  # L1 1001 + half of L2 600.5


def test_hifo_sells_the_highest_unit_cost_first():
    # HIFO: L2 (120.1) then L3 (110.1): 1201 + 5 * 110.1 = 1751.5, P&L 196.5.
    result = replay(THREE_LOTS_THEN_SELL_15, method=CostBasis.HIFO)
    acme = result.positions["ACME"]
    assert closed(result) == [("L2", D(10), D(1201)), ("L3", D(5), D("550.5"))]
    assert acme.realized_pnl == D("196.5")
    assert acme.cost_basis == D("1551.5")  # L1 1001 + half of L3 550.5


def test_average_cost_sells_at_the_pools_average():
    # AVERAGE: pool 30 units for 3303 -> 110.1 each; 15 cost 1651.5, P&L 296.5.
    # The rest (15 units) stays at 110.1 each, whichever lots they came from.
    result = replay(THREE_LOTS_THEN_SELL_15, method=CostBasis.AVERAGE)
    acme = result.positions["ACME"]
    assert sum(lot.cost for lot in result.realizations[0].lots) == D("1651.5")
    assert [lot.quantity for lot in result.realizations[0].lots] == [D(10), D(5)]
    assert acme.realized_pnl == D("296.5")
    assert acme.cost_basis == D("1651.5")
    assert acme.average_cost == D("110.1")
    assert {lot.unit_cost for lot in acme.lots} == {D("110.1")}


def test_cash_fees_and_income_across_currencies():
    result = replay(
        [
            cash("D1", TxKind.DEPOSIT, 0, "5000"),
            cash("D2", TxKind.DEPOSIT, 0, "1000", currency="EUR"),
            buy("B1", 1, "10", "100", "1"),  # -1001 USD
            cash("V1", TxKind.DIVIDEND, 2, "12.50", fees="1.25", instrument="ACME"),  # +11.25
            cash("V2", TxKind.DIVIDEND, 3, "3", currency="EUR", instrument="ACME"),  # +3 EUR
            cash("I1", TxKind.INTEREST, 4, "0.40", currency="EUR"),  # +0.40 EUR
            cash("F1", TxKind.FEE, 5, "4.99"),  # -4.99 USD custody fee
            sell("S1", 6, "4", "110", "1"),  # +439 USD
            cash("W1", TxKind.WITHDRAWAL, 7, "200", currency="EUR"),
        ]
    )
    # USD: 5000 - 1001 + 11.25 - 4.99 + 439 = 4444.26; EUR: 1000 + 3 + 0.40 - 200 = 803.40
    assert result.cash == {"USD": D("4444.26"), "EUR": D("803.40")}
    assert result.fees == {"USD": D("1") + D("1.25") + D("4.99") + D("1")}
    assert result.income == {"USD": D("12.50"), "EUR": D("3.40")}
    acme = result.positions["ACME"]
    assert acme.income == {"USD": D("12.50"), "EUR": D("3")}
    # 4 of 10 at 100.1 sold for 439: P&L 439 - 400.4 = 38.6
    assert acme.realized_pnl == D("38.6")
    assert acme.quantity == D(6)


def test_split_multiplies_quantity_and_divides_unit_cost():
    entries = [
        buy("B1", 1, "10", "300", "5"),  # cost 3005
        LedgerEntry(
            ref="SPLIT1", kind=TxKind.SPLIT, executed_at=at(2), instrument="ACME", ratio=D(3)
        ),
    ]
    acme = replay(entries).positions["ACME"]
    assert acme.quantity == D(30)
    assert acme.cost_basis == D(3005)
    with localcontext(prec=28):
        assert acme.average_cost.quantize(D("0.0001")) == D("100.1667")


def test_reverse_split_keeps_fractional_quantity_and_cost():
    entries = [
        buy("B1", 1, "15", "2"),
        LedgerEntry(
            ref="RS", kind=TxKind.SPLIT, executed_at=at(2), instrument="ACME", ratio=D("0.1")
        ),
    ]
    acme = replay(entries).positions["ACME"]
    assert (acme.quantity, acme.cost_basis, acme.average_cost) == (D("1.5"), D(30), D(20))


def test_transfers_move_lots_without_cash_or_realized_pnl():
    entries = [
        LedgerEntry(
            ref="TI",
            kind=TxKind.TRANSFER_IN,
            executed_at=at(1),
            instrument="ACME",
            quantity=D(8),
            price=D(50),
            currency="USD",
        ),
        buy("B1", 2, "2", "70"),
        LedgerEntry(
            ref="TO",
            kind=TxKind.TRANSFER_OUT,
            executed_at=at(3),
            instrument="ACME",
            quantity=D(5),
            currency="USD",
            fees=D("2.50"),
        ),
    ]
    result = replay(entries, method=CostBasis.FIFO)
    acme = result.positions["ACME"]
    # 5 of the 8 transferred in (at 50) leave; 3 @ 50 + 2 @ 70 remain.
    assert (acme.quantity, acme.cost_basis, acme.realized_pnl) == (D(5), D(290), D(0))
    assert result.realizations == ()
    assert result.cash == {"USD": D(-140) - D("2.50")}  # the buy and the transfer fee only


def test_short_sale_then_buy_realizes_on_the_cover():
    entries = [
        buy("B1", 1, "10", "100"),
        sell("S1", 2, "15", "120", "3"),  # closes 10 long, opens 5 short
        buy("B2", 3, "8", "90", "4"),  # covers 5 short, opens 3 long
    ]
    result = replay(entries, allow_short=True)
    acme = result.positions["ACME"]
    long_close, cover = result.realizations
    # Sale: fee 3 split 10:5 -> 2 on the long part: 10*120 - 2 - 1000 = 198.
    assert long_close.realized_pnl == D(198)
    # Short of 5 brought 5*120 - 1 = 599; covered at 5*90 + 4*5/8 = 452.5 -> P&L 146.5.
    assert cover.closed_short
    assert (cover.proceeds, cover.cost, cover.realized_pnl) == (D(599), D("452.5"), D("146.5"))
    # 3 long left at 3*90 + 1.5 of the fee.
    assert (acme.quantity, acme.cost_basis) == (D(3), D("271.5"))
    assert acme.realized_pnl == D("344.5")


def test_short_position_shows_negative_quantity_and_cost():
    acme = replay([sell("S1", 1, "5", "40", "1")], allow_short=True).positions["ACME"]
    assert (acme.quantity, acme.cost_basis) == (D(-5), D(-199))


def test_transactions_apply_in_time_order_and_ties_keep_input_order():
    later_buy = buy("B2", 5, "1", "10")
    same_time_sell = sell("S1", 5, "3", "10")
    entries = [sell("S0", 3, "1", "10"), buy("B1", 1, "3", "10"), later_buy, same_time_sell]
    assert replay(entries).positions["ACME"].quantity == D(0)
    with pytest.raises(LedgerError, match=r"'S1'.*held 2, requested 3"):
        replay([sell("S0", 3, "1", "10"), buy("B1", 1, "3", "10"), same_time_sell, later_buy])


def test_overselling_names_the_transaction_instrument_and_quantities():
    with pytest.raises(LedgerError) as excinfo:
        replay([buy("tx-1", 1, "10", "5"), sell("tx-2", 2, "15", "6")])
    message = str(excinfo.value)
    assert "'tx-2'" in message
    assert "'ACME'" in message
    assert "held 10" in message and "requested 15" in message
    assert excinfo.value.ref == "tx-2" and excinfo.value.field == "quantity"


def test_transferring_out_more_than_held_fails_even_when_shorts_are_allowed():
    entries = [
        buy("B1", 1, "2", "5"),
        LedgerEntry(
            ref="TO",
            kind=TxKind.TRANSFER_OUT,
            executed_at=at(2),
            instrument="ACME",
            quantity=D(3),
            currency="USD",
        ),
    ]
    with pytest.raises(LedgerError, match=r"'TO'.*transfer out 3 of 'ACME'.*held 2"):
        replay(entries, allow_short=True)


def test_buying_in_another_currency_than_the_position_is_refused():
    with pytest.raises(LedgerError, match=r"'B2'.*currency EUR differs from USD") as excinfo:
        replay([buy("B1", 1, "1", "5"), buy("B2", 2, "1", "5", currency="EUR")])
    assert excinfo.value.field == "currency"


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"quantity": D(-1)}, "quantity", "must not be negative"),
        ({"quantity": D(0)}, "quantity", "must be positive"),
        ({"price": 9.99}, "price", "must be a Decimal, got float"),
        ({"fees": D("NaN")}, "fees", "finite"),
        ({"instrument": None}, "instrument", "is required for BUY"),
        ({"executed_at": datetime(2024, 1, 1)}, "executed_at", "naive"),
        ({"currency": ""}, "currency", "is required"),
        ({"amount": D(5)}, "amount", "not used by BUY"),
        ({"kind": "GIFT"}, "kind", "must be one of"),
    ],
)
def test_bad_buy_names_the_transaction_and_the_field(fields, field, fragment):
    good = {
        "ref": 42,
        "kind": "BUY",
        "executed_at": at(0),
        "instrument": "ACME",
        "quantity": D(1),
        "price": D(1),
        "currency": "USD",
    }
    with pytest.raises(LedgerError) as excinfo:
        LedgerEntry(**{**good, **fields})
    assert str(excinfo.value).startswith(f"transaction 42: {field} ")
    assert fragment in str(excinfo.value)
    assert (excinfo.value.ref, excinfo.value.field) == (42, field)


@pytest.mark.parametrize("ratio", [D(0), D(-2), None])
def test_split_needs_a_positive_ratio(ratio):
    with pytest.raises(LedgerError, match="transaction 'S': ratio "):
        LedgerEntry(ref="S", kind=TxKind.SPLIT, executed_at=at(0), instrument=1, ratio=ratio)


def test_deposit_refuses_an_instrument_and_needs_an_amount():
    with pytest.raises(LedgerError, match="'D': instrument must be None for DEPOSIT"):
        cash("D", TxKind.DEPOSIT, 0, "10", instrument="ACME")
    with pytest.raises(LedgerError, match="'D': amount must be positive for DEPOSIT"):
        cash("D", TxKind.DEPOSIT, 0, "0")


# --- properties -------------------------------------------------------------------------

quantities = st.decimals(min_value=D("0.0001"), max_value=D(10_000), places=4)
prices = st.decimals(min_value=D(0), max_value=D(50_000), places=4)
fees = st.decimals(min_value=D(0), max_value=D(50), places=2)
lots = st.lists(st.tuples(quantities, prices, fees), min_size=1, max_size=6)
methods = st.sampled_from(list(CostBasis))


@settings(deadline=None)
@given(method=methods, bought=lots, sell_price=prices, sell_fee=fees)
def test_buying_then_selling_everything_realizes_proceeds_minus_cost_minus_fees(
    method, bought, sell_price, sell_fee
):
    entries = [buy(i, i, q, p, f) for i, (q, p, f) in enumerate(bought)]
    total = sum(q for q, _, _ in bought)
    entries.append(sell("all", len(bought), total, sell_price, sell_fee))
    result = replay(entries, method=method)
    acme = result.positions["ACME"]
    proceeds = total * sell_price
    cost = sum(q * p for q, p, _ in bought)
    all_fees = sum(f for _, _, f in bought) + sell_fee
    assert acme.quantity == 0 and acme.lots == ()
    assert acme.realized_pnl == proceeds - cost - all_fees
    assert sum(lot.quantity for lot in result.realizations[0].lots) == total


@settings(deadline=None)
@given(method=methods, bought=lots, cuts=st.lists(st.integers(1, 99), max_size=4), price=prices)
def test_selling_in_several_parts_realizes_the_same_total(method, bought, cuts, price):
    entries = [buy(i, i, q, p, f) for i, (q, p, f) in enumerate(bought)]
    total = sum(q for q, _, _ in bought)
    parts = [total * c / 100 for c in sorted(set(cuts))]
    sizes = [b - a for a, b in zip([D(0), *parts], [*parts, total], strict=True) if b > a]
    day = len(bought)
    for n, size in enumerate(sizes):
        entries.append(sell(f"S{n}", day + n, size, price))
    acme = replay(entries, method=method).positions["ACME"]
    expected = total * price - sum(q * p + f for q, p, f in bought)
    assert acme.quantity == 0
    assert acme.realized_pnl == expected


@settings(deadline=None)
@given(
    method=methods,
    bought=lots,
    ratio=st.sampled_from([D(2), D(4), D(5), D(10), D("0.5"), D("0.2"), D("0.1"), D("1.25")]),
    price=prices,
)
def test_split_leaves_value_and_cost_basis_unchanged(method, bought, ratio, price):
    entries = [buy(i, i, q, p, f) for i, (q, p, f) in enumerate(bought)]
    before = replay(entries, method=method).positions["ACME"]
    split = LedgerEntry(
        ref="split", kind=TxKind.SPLIT, executed_at=at(99), instrument="ACME", ratio=ratio
    )
    after = replay([*entries, split], method=method).positions["ACME"]
    assert after.quantity == before.quantity * ratio
    assert after.cost_basis == before.cost_basis
    assert after.quantity * (price / ratio) == before.quantity * price
    # Selling everything after the split realizes what selling before it would have.
    sale_before = replay([*entries, sell("x", 100, before.quantity, price)], method=method)
    sale_after = replay(
        [*entries, split, sell("x", 100, after.quantity, price / ratio)], method=method
    )
    assert sale_after.positions["ACME"].realized_pnl == sale_before.positions["ACME"].realized_pnl


amounts = st.decimals(min_value=D("0.01"), max_value=D(100_000), places=2)
steps = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["DEPOSIT", "WITHDRAWAL"]), amounts, fees),
        st.tuples(st.sampled_from(["DIVIDEND", "INTEREST", "FEE"]), amounts, fees),
        st.tuples(st.sampled_from(["BUY", "SELL"]), st.tuples(quantities, prices), fees),
    ),
    min_size=1,
    max_size=25,
)


@settings(deadline=None)
@given(steps=steps, currency=st.sampled_from(["USD", "EUR"]))
def test_cash_is_deposits_minus_withdrawals_minus_buys_plus_sells_plus_income_minus_fees(
    steps, currency
):
    entries = []
    expected = {"deposits": D(0), "withdrawals": D(0), "buys": D(0), "sells": D(0)}
    expected |= {"income": D(0), "fees": D(0)}
    for n, (kind, value, fee) in enumerate(steps):
        expected["fees"] += fee
        if kind in ("BUY", "SELL"):
            qty, price = value
            make = buy if kind == "BUY" else sell
            entries.append(make(n, n, qty, price, fee, currency=currency))
            expected["buys" if kind == "BUY" else "sells"] += qty * price
            continue
        instrument = "ACME" if kind == "DIVIDEND" else None
        entries.append(cash(n, kind, n, value, fee, currency=currency, instrument=instrument))
        if kind == "DEPOSIT":
            expected["deposits"] += value
        elif kind == "WITHDRAWAL":
            expected["withdrawals"] += value
        elif kind == "FEE":
            expected["fees"] += value
        else:
            expected["income"] += value
    result = replay(entries, allow_short=True)
    e = expected
    balance = e["deposits"] - e["withdrawals"] - e["buys"] + e["sells"] + e["income"] - e["fees"]
    assert result.cash.get(currency, D(0)) == balance
    assert result.fees.get(currency, D(0)) == e["fees"]


trades = st.lists(
    st.tuples(st.sampled_from(["BUY", "SELL"]), quantities, prices, fees), min_size=1, max_size=12
)


@settings(deadline=None)
@given(method=methods, trades=trades, close_price=prices)
def test_with_shorts_every_round_trip_realizes_sells_minus_buys_minus_fees(
    method, trades, close_price
):
    entries = [
        (buy if kind == "BUY" else sell)(n, n, q, p, f) for n, (kind, q, p, f) in enumerate(trades)
    ]
    held = sum(q if kind == "BUY" else -q for kind, q, _, _ in trades)
    if held:
        flatten = sell if held > 0 else buy
        entries.append(flatten("flat", len(trades), abs(held), close_price))
    result = replay(entries, method=method, allow_short=True)
    acme = result.positions["ACME"]
    signed = [(-1 if kind == "BUY" else 1) * q * p for kind, q, p, _ in trades]
    expected = sum(signed) + held * close_price - sum(f for *_, f in trades)
    assert acme.quantity == 0 and acme.lots == ()
    assert acme.realized_pnl == expected
    with localcontext(prec=60):  # pieces carry 20 places: the default 28 digits would round
        assert acme.realized_pnl == sum(r.realized_pnl for r in result.realizations)
