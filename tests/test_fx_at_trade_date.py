"""Cost basis, realized P&L and income in the base currency at each trade's own date's FX rate:
they do not move when today's rate does (docs/fx.md)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.contrib.auth import get_user_model
from hypothesis import given, settings
from hypothesis import strategies as st

from portfolio import ledger, services, valuation
from portfolio.importers import prices_csv
from portfolio.ledger import CostBasis, LedgerEntry, TxKind
from portfolio.models import AssetClass, CashBalance, FeedKind, Holding, Instrument, Lot
from portfolio.selectors import ledger_reads, live_states

D = Decimal
T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)


def entry(ref, kind, day, rate, **fields):
    return LedgerEntry(
        ref=ref,
        kind=kind,
        executed_at=T0 + timedelta(days=day),
        currency="USD",
        fx_rate=None if rate is None else D(rate),
        **fields,
    )


# --- The pure ledger ---------------------------------------------------------------------


def test_a_sale_realizes_proceeds_at_its_rate_against_cost_at_the_purchases_rate():
    """EUR base, a USD stock: buy 10 @ 100 + 1 fee when 1 USD = 0.90 EUR, sell 10 @ 120 - 1 fee
    when 1 USD = 0.80 EUR. USD: 1199 - 1001 = 198. EUR: 1199 x 0.80 - 1001 x 0.90 = 959.20 -
    900.90 = 58.30 (the dollar's fall took most of the gain)."""
    result = ledger.replay(
        [
            entry(1, TxKind.BUY, 0, "0.90", instrument="ACME", quantity=D(10), price=D(100),
                  fees=D(1)),
            entry(2, TxKind.SELL, 30, "0.80", instrument="ACME", quantity=D(10), price=D(120),
                  fees=D(1)),
        ]
    )  # fmt: skip
    acme = result.positions["ACME"]
    assert acme.realized_pnl == D(198)
    assert acme.realized_pnl_base == D("58.30")
    (sale,) = result.realizations
    assert (sale.proceeds_base, sale.cost_base) == (D("959.20"), D("900.90"))
    assert acme.cost_basis_base == 0


def test_an_entry_without_a_rate_makes_the_base_figures_unknown_not_guessed():
    result = ledger.replay(
        [
            entry(1, TxKind.BUY, 0, "0.9", instrument="ACME", quantity=D(2), price=D(10)),
            entry(2, TxKind.BUY, 1, None, instrument="ACME", quantity=D(1), price=D(10)),
            entry(3, TxKind.DIVIDEND, 2, None, instrument="ACME", amount=D(1)),
        ]
    )
    acme = result.positions["ACME"]
    assert acme.cost_basis_base is None and acme.income_base is None
    assert [lot.cost_base for lot in acme.lots] == [D("18.0"), None]
    assert result.income_base == {"USD": None}


def test_dividends_and_interest_count_at_their_payment_dates_rate():
    result = ledger.replay(
        [
            entry(1, TxKind.BUY, 0, "0.9", instrument="ACME", quantity=D(1), price=D(10)),
            entry(2, TxKind.DIVIDEND, 10, "0.8", instrument="ACME", amount=D(5)),
            entry(3, TxKind.INTEREST, 20, "0.5", amount=D(2)),
        ]
    )
    assert result.positions["ACME"].income_base == D("4.0")
    assert result.income_base == {"USD": D("5.0")}  # 5 x 0.8 + 2 x 0.5


def test_hifo_ranks_lots_by_their_cost_in_the_base_currency_at_acquisition():
    """Lot 1: 100 USD at 0.90 = 90 EUR a share; lot 2: 95 USD at 1.00 = 95 EUR a share. In
    dollars lot 1 costs more; in the portfolio's euros lot 2 does, and HIFO sells it first."""
    result = ledger.replay(
        [
            entry(1, TxKind.BUY, 0, "0.90", instrument="ACME", quantity=D(1), price=D(100)),
            entry(2, TxKind.BUY, 1, "1.00", instrument="ACME", quantity=D(1), price=D(95)),
            entry(3, TxKind.SELL, 2, "1.00", instrument="ACME", quantity=D(1), price=D(110)),
        ],
        method=CostBasis.HIFO,
    )
    (sale,) = result.realizations
    assert [lot.ref for lot in sale.lots] == [2]
    assert sale.realized_pnl_base == D("15.00")


rates = st.decimals(min_value=D("0.2"), max_value=D("5"), places=4)
steps = st.lists(
    st.tuples(
        st.sampled_from(["buy", "sell", "dividend"]),
        st.integers(1, 50),  # quantity (sells: percent of what is held)
        st.integers(1, 500),  # price or amount
        st.integers(0, 5),  # fee
        rates,  # that day's rate
    ),
    min_size=1,
    max_size=12,
)


def replay_steps(steps, method):
    entries, held = [], D(0)
    for i, (kind, qty, price, fee, rate) in enumerate(steps):
        if kind == "buy":
            entries.append(entry(i, TxKind.BUY, i, rate, instrument="X", quantity=D(qty),
                                 price=D(price), fees=D(fee)))  # fmt: skip
            held += qty
        elif kind == "sell" and held:
            sold = max(D(1), (held * qty / 50).to_integral_value()) if held >= 1 else held
            sold = min(sold, held)
            entries.append(entry(i, TxKind.SELL, i, rate, instrument="X", quantity=sold,
                                 price=D(price), fees=D(fee)))  # fmt: skip
            held -= sold
        elif kind == "dividend" and held:
            entries.append(entry(i, TxKind.DIVIDEND, i, rate, instrument="X", amount=D(price)))
    return entries, ledger.replay(entries, method=method)


@settings(max_examples=150, deadline=None)
@given(
    steps=steps,
    method=st.sampled_from(list(CostBasis)),
    today=rates,
    tomorrow=rates,
    price=st.integers(1, 1000),
)
def test_cost_basis_and_realized_pnl_in_base_currency_do_not_move_with_todays_fx(
    steps, method, today, tomorrow, price
):
    entries, result = replay_steps(steps, method)
    bought = sum(
        ((e.quantity * e.price + e.fees) * e.fx_rate for e in entries if e.kind is TxKind.BUY),
        D(0),
    )
    position = result.positions.get("X")
    if position is None:
        return
    # Every unit of base-currency cost paid is either still open or was closed by a sale.
    closed = sum((r.cost_base for r in result.realizations), D(0))
    assert position.cost_basis_base + closed == bought
    values = [
        valuation.value_portfolio(
            holdings=[
                valuation.HoldingInput(
                    instrument="X",
                    quantity=position.quantity,
                    cost_basis=position.cost_basis,
                    currency="USD",
                    cost_base=position.cost_basis_base,
                )
            ],
            prices={"X": D(price)},
            fx_rates={("USD", "EUR"): rate},
            base_currency="EUR",
        )
        for rate in (today, tomorrow)
    ]
    # Today's rate moves the value, never the cost.
    assert values[0].cost == values[1].cost == position.cost_basis_base
    for value in values:  # and the unrealized P&L is its price and currency effects
        (held,) = value.holdings
        assert held.price_effect + held.currency_effect == held.unrealized_pnl
    assert values[0].holdings_value == position.quantity * price * today
    assert values[1].holdings_value == position.quantity * price * tomorrow


# --- Through the database: the HMRC worked example ---------------------------------------


def make_gbp_portfolio(db_name="GBP"):
    owner = get_user_model().objects.create(username=f"investor-{db_name}")
    portfolio = services.portfolio_create(owner=owner, name=db_name, base_currency="GBP")
    acme = Instrument.objects.create(
        symbol="ACME",
        name="Acme Corp",
        asset_class=AssetClass.EQUITY,
        quote_currency="USD",
        feed=FeedKind.SIMULATED,
        feed_symbol="ACME",
    )
    gbpusd = Instrument.objects.create(
        symbol="GBPUSD",
        name="Pound in dollars",
        asset_class=AssetClass.FX,
        quote_currency="USD",
        feed=FeedKind.SIMULATED,
        feed_symbol="GBPUSD",
    )
    return portfolio, acme, gbpusd


def quote(instrument, price, at):
    services.quotes_store(
        updates=[
            services.QuoteUpdate(
                instrument_id=instrument.id, price=D(price), exchange_ts=at, source="simulated"
            )
        ]
    )


DAY8 = datetime(2007, 1, 8, 15, 0, tzinfo=UTC)
DAY360 = datetime(2007, 12, 26, 15, 0, tzinfo=UTC)


def test_hmrc_worked_example_gain_is_proceeds_at_sale_rate_minus_cost_at_purchase_rate(db):
    """HMRC Capital Gains Manual CG78336, "Foreign currency: example"
    (https://www.gov.uk/hmrc-internal-manuals/capital-gains-manual/cg78336): shares bought for
    US$100,000 on day 8 at US$2.30 to £1 (= £43,479 in the manual) and sold for US$100,000 on
    day 360 at US$2.00 to £1 (= £50,000): chargeable gain £6,521. The dollar gain is zero; the
    sterling gain is the currency's move. The manual shows whole pounds, rounding the cost
    (£43,478.26) up to £43,479; Livefolio keeps the exact figure, £6,521.74."""
    portfolio, acme, gbpusd = make_gbp_portfolio()
    # Day 8 is a Monday; the history has the Friday before (carried) and day 360's own close.
    history = "date,close\n2007-01-05,2.30\n2007-12-26,2.00\n"
    assert prices_csv.import_prices(instrument=gbpusd, text=io.StringIO(history)).ok
    quote(gbpusd, "2.00", DAY360)
    services.transaction_add(
        portfolio=portfolio, kind=TxKind.BUY, instrument=acme, quantity=D(1000),
        price=D(100), executed_at=DAY8,
    )  # fmt: skip
    lot = Lot.objects.get(holding__portfolio=portfolio)
    assert lot.cost_base.quantize(D("0.01")) == D("43478.26")
    assert lot.cost_base.quantize(D(1), rounding=ROUND_HALF_UP) + 1 == 43479  # manual: up
    services.transaction_add(
        portfolio=portfolio, kind=TxKind.SELL, instrument=acme, quantity=D(1000),
        price=D(100), executed_at=DAY360,
    )  # fmt: skip
    holding = Holding.objects.get(portfolio=portfolio)
    assert holding.realized_pnl == 0  # in dollars
    assert holding.realized_pnl_base.quantize(D("0.01")) == D("6521.74")
    assert abs(holding.realized_pnl_base - 6521) < 1  # the manual's whole-pound figure
    assert holding.fx_note == ""  # both rates from history

    state = live_states.portfolio_states(portfolio_ids=[portfolio.id])[0]
    assert state["realized_pnl"] == "6521.74"
    # The pound rises to US$1.25 today: the gain already made does not move.
    quote(gbpusd, "1.25", DAY360 + timedelta(days=400))
    moved = live_states.portfolio_states(portfolio_ids=[portfolio.id])[0]
    assert moved["realized_pnl"] == "6521.74"
    assert moved["fx_notes"] == []


def test_open_cost_stays_at_the_purchase_rate_while_value_follows_todays(db):
    portfolio, acme, gbpusd = make_gbp_portfolio("open")
    assert prices_csv.import_prices(
        instrument=gbpusd, text=io.StringIO("date,close\n2007-01-08,2.30\n")
    ).ok
    services.transaction_add(
        portfolio=portfolio, kind=TxKind.BUY, instrument=acme, quantity=D(1000),
        price=D(100), executed_at=DAY8,
    )  # fmt: skip
    quote(acme, "100", DAY360)
    states = []
    for rate in ("2.00", "1.60"):
        quote(gbpusd, rate, DAY360 + timedelta(days=len(states) + 1))
        states.append(live_states.portfolio_states(portfolio_ids=[portfolio.id])[0])
    assert [s["cost"] for s in states] == ["43478.26", "43478.26"]
    assert [s["holdings_value"] for s in states] == ["50000.00", "62500.00"]
    assert [s["unrealized_pnl"] for s in states] == ["6521.74", "19021.74"]
    # The share price has not moved: all of it is the currency's (HMRC's gain, still open).
    rows = [s["holdings"][0] for s in states]
    assert [(r["price_effect"], r["currency_effect"]) for r in rows] == [
        ("0.00", "6521.74"),
        ("0.00", "19021.74"),
    ]
    quote(acme, "110", DAY360 + timedelta(days=5))  # +10 % in dollars: 10,000 at 1.60
    row = live_states.portfolio_states(portfolio_ids=[portfolio.id])[0]["holdings"][0]
    assert (row["price_effect"], row["currency_effect"], row["unrealized_pnl"]) == (
        "6250.00",
        "19021.74",
        "25271.74",
    )


def test_without_fx_history_the_latest_rate_stands_in_and_the_page_says_so(db):
    portfolio, acme, gbpusd = make_gbp_portfolio("no history")
    quote(gbpusd, "2.00", DAY8)
    services.transaction_add(
        portfolio=portfolio, kind=TxKind.BUY, instrument=acme, quantity=D(10),
        price=D(100), executed_at=DAY8,
    )  # fmt: skip
    holding = Holding.objects.get(portfolio=portfolio)
    assert holding.cost_basis_base == D(500)  # 1000 USD at today's 2.00
    assert holding.fx_note == (
        "1 transaction(s) (2007-01-08) converted at the latest USD rate: "
        "no FX history on or before their dates"
    )
    state = live_states.portfolio_states(portfolio_ids=[portfolio.id])[0]
    assert state["fx_notes"] == [f"ACME: {holding.fx_note}"]

    # History imported later: the portfolios converting through the pair are recomputed.
    assert prices_csv.import_prices(
        instrument=gbpusd, text=io.StringIO("date,close\n2007-01-08,2.50\n")
    ).ok
    assert services.holdings_recompute_after_fx_history(instrument=gbpusd) == 1
    holding = Holding.objects.get(portfolio=portfolio)  # recomputed: a new row
    assert (holding.cost_basis_base, holding.fx_note) == (D(400), "")


def test_income_in_the_base_currency_counts_each_dividend_at_its_date(db):
    portfolio, acme, gbpusd = make_gbp_portfolio("income")
    history = "date,close\n2007-01-08,2.50\n2007-06-01,2.00\n"
    assert prices_csv.import_prices(instrument=gbpusd, text=io.StringIO(history)).ok
    quote(gbpusd, "1.00", DAY360)
    services.transaction_add(
        portfolio=portfolio, kind=TxKind.BUY, instrument=acme, quantity=D(10),
        price=D(100), executed_at=DAY8,
    )  # fmt: skip
    for day, amount in ((DAY8 + timedelta(days=1), "25"), (datetime(2007, 6, 2, tzinfo=UTC), "20")):
        services.transaction_add(
            portfolio=portfolio, kind=TxKind.DIVIDEND, instrument=acme, amount=D(amount),
            executed_at=day,
        )  # fmt: skip
    assert CashBalance.objects.get(portfolio=portfolio, currency="USD").income_base == D(20)
    state = live_states.portfolio_states(portfolio_ids=[portfolio.id])[0]
    assert state["income"] == "20.00"  # 25 / 2.50 + 20 / 2.00, not 45 at today's 1.00


def test_the_pages_realized_pnl_and_cost_do_not_move_with_todays_quote(db):
    portfolio, acme, gbpusd = make_gbp_portfolio("moves")
    history = "date,close\n2007-01-08,2.30\n2007-12-26,2.00\n"
    assert prices_csv.import_prices(instrument=gbpusd, text=io.StringIO(history)).ok
    quote(acme, "120", DAY360)
    for kind, qty, at in ((TxKind.BUY, 10, DAY8), (TxKind.SELL, 4, DAY360)):
        services.transaction_add(
            portfolio=portfolio, kind=kind, instrument=acme, quantity=D(qty), price=D(100),
            executed_at=at,
        )  # fmt: skip
    seen = set()
    for i, today in enumerate(["0.5", "1.25", "2.3", "3"]):
        quote(gbpusd, today, DAY360 + timedelta(days=i + 1))
        state = live_states.portfolio_states(portfolio_ids=[portfolio.id])[0]
        seen.add((state["realized_pnl"], state["cost"]))
        assert state["holdings_value"] == str((6 * 120 / D(today)).quantize(D("0.01")))
    # 400 / 2.00 - 400 / 2.30 and 600 / 2.30, whatever today's rate.
    assert seen == {("26.09", "260.87")}


def test_a_foreign_deposit_enters_performance_at_its_dates_rate(db):
    portfolio, _, gbpusd = make_gbp_portfolio("flows")
    history = "date,close\n2007-01-05,2.50\n2007-06-01,2.00\n"
    assert prices_csv.import_prices(instrument=gbpusd, text=io.StringIO(history)).ok
    quote(gbpusd, "1.25", DAY360)  # today's rate: would make each dollar 0.80 pounds
    for at, amount, kind in (
        (DAY8, "1000", TxKind.DEPOSIT),  # Monday: Friday's 2.50 carried
        (datetime(2007, 6, 1, 12, tzinfo=UTC), "500", TxKind.WITHDRAWAL),
    ):
        services.transaction_add(
            portfolio=portfolio, kind=kind, amount=D(amount), currency="USD", executed_at=at
        )
    flows = ledger_reads.external_flows(portfolio=portfolio)
    assert [f.amount for f in flows] == [D(400), D(-250)]
