"""Valuation: what the live portfolio page shows for holdings, totals and allocation."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portfolio.valuation import (
    HoldingInput,
    ValuationError,
    ValueStatus,
    quantize_money,
    value_portfolio,
)

D = Decimal

HOLDINGS = [
    HoldingInput(instrument="AAPL", quantity=D(10), cost_basis=D(1500), currency="USD",
            asset_class="equity"),
    HoldingInput(instrument="SAP", quantity=D(20), cost_basis=D(3000), currency="EUR",
            asset_class="equity"),
    HoldingInput(instrument="BTC", quantity=D("0.5"), cost_basis=D(15000), currency="USD",
            asset_class="crypto"),
    HoldingInput(instrument="XYZ", quantity=D(3), cost_basis=D(30), currency="USD",
            asset_class="equity"),
    HoldingInput(instrument="7203", quantity=D(100), cost_basis=D(250000), currency="JPY",
            asset_class="equity"),
]  # fmt: skip
PRICES = {"AAPL": D(190), "SAP": D(170), "BTC": D(40000), "XYZ": None, "7203": D(2600)}
REFERENCE = {"AAPL": D(185), "SAP": D(172), "BTC": D(38000)}
FX = {("EUR", "USD"): D("1.10")}
CASH = {"USD": D(1000), "EUR": D(500), "CHF": D(100)}


@pytest.fixture
def valued():
    return value_portfolio(
        holdings=HOLDINGS,
        prices=PRICES,
        reference_prices=REFERENCE,
        fx_rates=FX,
        base_currency="USD",
        cash=CASH,
    )


def same(value, expected):
    """Rates are divisions: agree to 26 significant digits (the test runs at Decimal's 28)."""
    return abs(value - expected) <= D("1e-26") * max(D(1), abs(expected))


def by_instrument(result):
    return {h.instrument: h for h in result.holdings}


def test_each_priced_holding_shows_value_cost_pnl_and_day_change_in_the_base_currency(valued):
    aapl, sap = by_instrument(valued)["AAPL"], by_instrument(valued)["SAP"]
    # AAPL: 10 * 190 = 1900 against 1500 cost; moved +5 from 185 on 10 shares.
    assert (aapl.market_value, aapl.cost, aapl.unrealized_pnl) == (D(1900), D(1500), D(400))
    assert same(aapl.unrealized_return, D(400) / D(1500))
    assert aapl.day_change == D(50) and same(aapl.day_return, D(5) / D(185))
    # SAP in EUR at 1.10: 20 * 170 * 1.1 = 3740, cost 3000 * 1.1 = 3300, day 20 * -2 * 1.1.
    assert (sap.market_value, sap.cost, sap.unrealized_pnl) == (D(3740), D(3300), D(440))
    assert sap.day_change == D(-44) and same(sap.day_return, D(-2) / D(172))
    assert sap.fx_rate == D("1.10") and sap.status is ValueStatus.OK


def test_totals_count_priced_holdings_and_cash_only(valued):
    # Holdings 1900 + 3740 + 20000 = 25640; cash 1000 + 500 * 1.1 = 1550; CHF has no rate.
    assert valued.holdings_value == D(25640)
    assert valued.cash_value == D(1550)
    assert valued.market_value == D(27190)
    assert (valued.cost, valued.unrealized_pnl) == (D(19800), D(5840))
    assert valued.day_change == D(50) + D(-44) + D(1000)
    assert same(valued.day_return, D(1006) / (D(27190) - D(1006)))
    assert same(by_instrument(valued)["AAPL"].weight, D(1900) / D(27190))


def test_allocation_by_instrument_asset_class_and_currency(valued):
    assert {k: s.value for k, s in valued.by_instrument.items()} == {
        "BTC": D(20000), "SAP": D(3740), "AAPL": D(1900),
    }  # fmt: skip
    assert list(valued.by_asset_class) == ["crypto", "equity", "cash"]  # largest first
    assert valued.by_asset_class["equity"].value == D(5640)
    assert same(valued.by_asset_class["cash"].weight, D(1550) / D(27190))
    assert {k: s.value for k, s in valued.by_currency.items()} == {
        "USD": D(1900) + D(20000) + D(1000), "EUR": D(3740) + D(550),
    }  # fmt: skip


def test_missing_price_or_fx_rate_is_flagged_and_left_out(valued):
    xyz, toyota = by_instrument(valued)["XYZ"], by_instrument(valued)["7203"]
    assert xyz.status is ValueStatus.UNPRICED and xyz.market_value is None
    assert xyz.reason == "no price for 'XYZ'"
    assert toyota.status is ValueStatus.NO_FX and toyota.market_value is None
    assert toyota.price == D(2600)
    assert toyota.reason == "no JPY->USD rate for '7203'"
    chf = next(c for c in valued.cash if c.currency == "CHF")
    assert chf.status is ValueStatus.NO_FX and chf.market_value is None
    assert valued.issues == (xyz.reason, toyota.reason, "no CHF->USD rate")
    assert not valued.complete
    assert "XYZ" not in valued.by_instrument and "JPY" not in valued.by_currency


def test_missing_reference_price_leaves_day_change_unknown_but_the_holding_priced():
    result = value_portfolio(
        holdings=[HoldingInput(instrument=1, quantity=D(2), cost_basis=D(10), currency="USD")],
        prices={1: D(7)},
        base_currency="USD",
    )
    (only,) = result.holdings
    assert only.market_value == D(14) and only.day_change is None and only.day_return is None
    assert result.day_change == 0 and result.complete
    assert only.weight == 1


def test_inverse_fx_rate_is_used_when_only_the_other_direction_is_known():
    result = value_portfolio(
        holdings=[
            HoldingInput(instrument="VOD", quantity=D(100), cost_basis=D(80), currency="GBP")
        ],
        prices={"VOD": D("0.72")},
        fx_rates={("USD", "GBP"): D("0.8")},  # 1 USD = 0.8 GBP, so 1 GBP = 1.25 USD
        base_currency="USD",
    )
    assert result.holdings[0].fx_rate == D("1.25")
    assert result.market_value == D(90)


def test_short_holding_gains_when_the_price_falls():
    # Sold 5 short for 500: cost basis -500. At 90 it is worth -450: up 50, i.e. 10 %.
    result = value_portfolio(
        holdings=[HoldingInput(instrument="X", quantity=D(-5), cost_basis=D(-500), currency="USD")],
        prices={"X": D(90)},
        base_currency="USD",
    )
    short = result.holdings[0]
    assert (short.market_value, short.unrealized_pnl, short.unrealized_return) == (
        D(-450), D(50), D("0.1"),
    )  # fmt: skip


def test_amounts_keep_full_precision_until_quantize_money():
    result = value_portfolio(
        holdings=[
            HoldingInput(instrument="F", quantity=D("3.3333"), cost_basis=D(1), currency="EUR")
        ],
        prices={"F": D("1.23456")},
        fx_rates={("EUR", "USD"): D("1.0876")},
        base_currency="USD",
    )
    assert result.market_value == D("3.3333") * D("1.23456") * D("1.0876")
    assert quantize_money(result.market_value, "USD") == D("4.48")


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        (D("1.005"), "USD", D("1.01")),  # half-up, not banker's rounding
        (D("-2.675"), "EUR", D("-2.68")),
        (D("1234.5"), "JPY", D("1235")),
        (D("1.2345"), "KWD", D("1.235")),
        (D("0.123456789"), "BTC", D("0.12345679")),
        (D("7.777"), "XYZ", D("7.78")),  # unknown codes get 2 places
    ],
)
def test_quantize_money_rounds_for_display(amount, currency, shown):
    assert quantize_money(amount, currency) == shown
    assert quantize_money(amount, currency).as_tuple().exponent == shown.as_tuple().exponent


def test_float_price_is_rejected_with_the_instrument_named():
    with pytest.raises(
        ValuationError, match=r"price of 'AAPL' must be a finite Decimal, got 190\.0"
    ):
        value_portfolio(holdings=HOLDINGS[:1], prices={"AAPL": 190.0}, base_currency="USD")


def test_non_positive_fx_rate_is_rejected():
    with pytest.raises(ValuationError, match="fx rate EUR->USD must be positive"):
        value_portfolio(
            holdings=[], prices={}, fx_rates={("EUR", "USD"): D(0)}, base_currency="USD"
        )


money = st.decimals(min_value=D(0), max_value=D(1_000_000), places=2)
positions = st.lists(
    st.tuples(st.decimals(min_value=D("0.001"), max_value=D(1000), places=3), money, money,
              st.sampled_from(["USD", "EUR"]), st.sampled_from(["equity", "bond", "crypto"])),
    min_size=1, max_size=8,
)  # fmt: skip


@settings(deadline=None)
@given(positions=positions, usd_cash=money, eur_cash=money)
def test_allocations_add_up_to_the_total(positions, usd_cash, eur_cash):
    holdings = [
        HoldingInput(instrument=i, quantity=q, cost_basis=c, currency=cur, asset_class=ac)
        for i, (q, _, c, cur, ac) in enumerate(positions)
    ]
    result = value_portfolio(
        holdings=holdings,
        prices={i: p for i, (_, p, _, _, _) in enumerate(positions)},
        fx_rates={("EUR", "USD"): D("1.0842")},
        base_currency="USD",
        cash={"USD": usd_cash, "EUR": eur_cash},
    )
    total = result.market_value
    assert sum(s.value for s in result.by_instrument.values()) + result.cash_value == total
    assert sum(s.value for s in result.by_asset_class.values()) == total
    assert sum(s.value for s in result.by_currency.values()) == total
    if total:
        assert abs(sum(s.weight for s in result.by_currency.values()) - 1) < D("1e-40")
