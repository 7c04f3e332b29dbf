"""Performance: TWR, XIRR and periods, checked against published worked examples."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portfolio.performance import (
    CashFlow,
    PerformanceError,
    Period,
    ValuePoint,
    money_weighted_return,
    period_start,
    time_weighted_return,
    xirr,
)

pytestmark = pytest.mark.unit

D = Decimal


def day(y: int, m: int, d: int) -> datetime:
    return datetime(y, m, d, tzinfo=UTC)


def npv(rate: Decimal, flows: list[tuple[datetime, Decimal]]) -> Decimal:
    """NPV written independently of the module: a**b instead of exp/ln."""
    origin = min(at for at, _ in flows)
    return sum(a / (1 + rate) ** (D((at - origin).days) / 365) for at, a in flows)


# --- worked examples ----------------------------------------------------------------------


def test_xirr_matches_excels_documented_example():
    # Microsoft Support, "XIRR function" (Excel), example: -10,000 on 1-Jan-08, 2,750 on
    # 1-Mar-08, 4,250 on 30-Oct-08, 3,250 on 15-Feb-09, 2,750 on 1-Apr-09 -> 0.373362535.
    flows = [
        (day(2008, 1, 1), D(-10000)),
        (day(2008, 3, 1), D(2750)),
        (day(2008, 10, 30), D(4250)),
        (day(2009, 2, 15), D(3250)),
        (day(2009, 4, 1), D(2750)),
    ]
    result = xirr(flows=flows)
    # Excel stops once within 0.000001 %; the exact root is 0.3733625335..., and the NPV at
    # Excel's 0.373362535 is -8.6e-6, so agree to Excel's tolerance, not its last digit.
    assert abs(result.rate - D("0.373362535")) < D("1e-8")
    assert result.rate.quantize(D("1e-10")) == D("0.3733625335")
    assert [f.amount for f in result.flows] == [a for _, a in flows]
    # 1-Jan-08 to 1-Apr-09 is 456 days, actual/365.
    assert result.flows[-1].years.quantize(D("1e-20")) == (D(456) / D(365)).quantize(D("1e-20"))
    assert abs(result.npv) < D("1e-6")


# Portfolio Performance manual, "Money-weighted rate of return", demo-portfolio-03: reporting
# period 2020-06-12 -> 2023-06-12 (1095 days), deposits of 155, 84 and 67 EUR with 878, 514
# and 255 remaining days, i.e. on 2021-01-15, 2022-01-14 and 2022-09-30.
PP_START, PP_END = day(2020, 6, 12), day(2023, 6, 12)
PP_DEPOSITS = [
    CashFlow(day(2021, 1, 15), D(155)),
    CashFlow(day(2022, 1, 14), D(84)),
    CashFlow(day(2022, 9, 30), D(67)),
]


@pytest.mark.parametrize(
    ("deposits", "end_value", "documented"),
    [
        (PP_DEPOSITS[:1], D("190.06"), D("0.0885")),  # Example 1: one deposit + buy
        (PP_DEPOSITS, D("396.85"), D("0.1560")),  # Example 2: multiple buys
        (PP_DEPOSITS, D("426.82"), D("0.2028")),  # Example 3: buy, dividend, sell
    ],
)
def test_money_weighted_return_matches_the_portfolio_performance_manual(
    deposits, end_value, documented
):
    result = money_weighted_return(
        values=[ValuePoint(PP_START, D(0)), ValuePoint(PP_END, end_value)], flows=deposits
    )
    assert result.rate.quantize(D("0.0001")) == documented
    # Explanation: start value paid in, each deposit paid in, the end value received.
    assert [f.amount for f in result.flows] == [D(0), *(-f.amount for f in deposits), end_value]


def test_twr_matches_investopedias_example():
    # Investopedia, "Time-Weighted Rate of Return" example: $1,000,000 on Dec 31; $1,162,484 on
    # Aug 15, when $100,000 is added; $1,192,328 at year end. Sub-periods +16.25 % and -5.56 %,
    # TWR = 1.1625 * 0.9444 - 1 = 9.79 %.
    result = time_weighted_return(
        values=[
            ValuePoint(day(2020, 12, 31), D(1_000_000)),
            ValuePoint(day(2021, 8, 15), D(1_162_484)),
            ValuePoint(day(2021, 12, 31), D(1_192_328)),
        ],
        flows=[CashFlow(day(2021, 8, 15), D(100_000))],
    )
    first, second = result.sub_periods
    assert first.period_return.quantize(D("0.0001")) == D("0.1625")
    assert (second.start_value, second.flow, second.end_value) == (
        D(1_162_484), D(100_000), D(1_192_328),
    )  # fmt: skip
    assert second.period_return.quantize(D("0.0001")) == D("-0.0556")
    assert result.cumulative.quantize(D("0.0001")) == D("0.0979")
    assert not result.approximate


def test_twr_matches_the_portfolio_performance_manuals_deposit_and_withdrawal_example():
    # Portfolio Performance manual, "Time-Weighted Rate of Return", Figure 1: 100 -> 110,
    # deposit 20 -> 136.5, withdrawal 30 -> 117.15; sub-periods 10 %, 5 %, 10 %; TWR 27.05 %.
    # (The manual gives no dates; any increasing ones do.)
    result = time_weighted_return(
        values=[
            ValuePoint(day(2024, 1, 1), D(100)),
            ValuePoint(day(2024, 2, 1), D(110)),
            ValuePoint(day(2024, 3, 1), D("136.5")),
            ValuePoint(day(2024, 4, 1), D("117.15")),
        ],
        flows=[CashFlow(day(2024, 2, 1), D(20)), CashFlow(day(2024, 3, 1), D(-30))],
    )
    assert [sp.period_return for sp in result.sub_periods] == [D("0.1"), D("0.05"), D("0.1")]
    assert result.cumulative == D("0.2705")


def test_twr_sub_periods_match_the_portfolio_performance_demo_portfolio():
    # Same manual, TTWROR at portfolio level, demo-portfolio-03 over 2 years from 2021-06-12:
    # HP1 177.94 -> 160.26 (-9.94 %); HP2 +84 -> 264.57 (8.31 %); HP3 +67 -> 426.82 (28.73 %).
    result = time_weighted_return(
        values=[
            ValuePoint(day(2021, 6, 12), D("177.94")),
            ValuePoint(day(2022, 1, 14), D("160.26")),
            ValuePoint(day(2022, 9, 30), D("264.57")),
            ValuePoint(day(2023, 6, 12), D("426.82")),
        ],
        flows=[CashFlow(day(2022, 1, 14), D(84)), CashFlow(day(2022, 9, 30), D(67))],
    )
    returns = [sp.period_return.quantize(D("0.0001")) for sp in result.sub_periods]
    assert returns == [D("-0.0994"), D("0.0831"), D("0.2873")]


# --- behaviour at the edges --------------------------------------------------------------


def test_twr_treats_a_flow_between_snapshots_as_made_at_the_snapshot_before_it():
    result = time_weighted_return(
        values=[ValuePoint(day(2024, 1, 1), D(100)), ValuePoint(day(2024, 1, 3), D(231))],
        flows=[CashFlow(day(2024, 1, 2), D(110))],
    )
    (only,) = result.sub_periods
    assert (only.start_value, only.flow, only.flow_times) == (D(100), D(110), (day(2024, 1, 2),))
    assert only.period_return == D("0.1")
    assert result.approximate


def test_twr_lists_flows_outside_the_measured_span_as_ignored():
    before, at_end = CashFlow(day(2023, 12, 1), D(50)), CashFlow(day(2024, 2, 1), D(-20))
    result = time_weighted_return(
        values=[ValuePoint(day(2024, 1, 1), D(100)), ValuePoint(day(2024, 2, 1), D(90))],
        flows=[before, at_end],
    )
    assert result.ignored_flows == (before, at_end)
    assert result.cumulative == D("-0.1")


def test_twr_starting_from_an_empty_portfolio_counts_from_the_first_deposit():
    result = time_weighted_return(
        values=[
            ValuePoint(day(2024, 1, 1), D(0)),
            ValuePoint(day(2024, 1, 5), D(0)),
            ValuePoint(day(2024, 1, 9), D(1100)),
        ],
        flows=[CashFlow(day(2024, 1, 5), D(1000))],
    )
    assert [sp.period_return for sp in result.sub_periods] == [D(0), D("0.1")]
    assert result.cumulative == D("0.1")


def test_twr_refuses_a_withdrawal_larger_than_the_value():
    with pytest.raises(PerformanceError, match="plus flows -150 is negative"):
        time_weighted_return(
            values=[ValuePoint(day(2024, 1, 1), D(100)), ValuePoint(day(2024, 1, 2), D(0))],
            flows=[CashFlow(day(2024, 1, 1), D(-150))],
        )


def test_twr_needs_two_snapshots():
    with pytest.raises(PerformanceError, match="at least two value snapshots, got 1"):
        time_weighted_return(values=[ValuePoint(day(2024, 1, 1), D(100))])


def test_xirr_with_flows_of_one_sign_has_no_root():
    with pytest.raises(PerformanceError, match="at least one negative and one positive"):
        xirr(flows=[(day(2024, 1, 1), D(-100)), (day(2025, 1, 1), D(-5))])


def test_xirr_reports_when_no_rate_makes_npv_zero():
    # 100 - 50 d + 100 d^2 > 0 for every discount factor d: no IRR exists.
    with pytest.raises(PerformanceError, match="no rate between"):
        xirr(
            flows=[
                (day(2024, 1, 1), D(100)),
                (day(2025, 1, 1), D(-50)),
                (day(2026, 1, 1), D(100)),
            ]
        )


def test_xirr_rejects_naive_dates_and_float_amounts():
    with pytest.raises(PerformanceError, match="timezone-aware"):
        xirr(flows=[(datetime(2024, 1, 1), D(-1)), (day(2025, 1, 1), D(2))])
    with pytest.raises(PerformanceError, match=r"must be a finite Decimal, got 2\.0"):
        xirr(flows=[(day(2024, 1, 1), D(-1)), (day(2025, 1, 1), 2.0)])


def test_periods_are_counted_back_from_now():
    now = datetime(2024, 3, 31, 15, 0, tzinfo=UTC)
    starts = {p: period_start(period=p, now=now) for p in Period}
    assert starts == {
        Period.DAY: datetime(2024, 3, 30, 15, 0, tzinfo=UTC),
        Period.WEEK: datetime(2024, 3, 24, 15, 0, tzinfo=UTC),
        Period.MONTH: datetime(2024, 2, 29, 15, 0, tzinfo=UTC),  # no 31 February
        Period.YTD: datetime(2024, 1, 1, tzinfo=UTC),
        Period.YEAR: datetime(2023, 3, 31, 15, 0, tzinfo=UTC),
        Period.MAX: None,
    }


def test_period_edges_leap_day_local_new_year_and_inception():
    leap = datetime(2024, 2, 29, 12, tzinfo=UTC)
    assert period_start(period="1Y", now=leap) == datetime(2023, 2, 28, 12, tzinfo=UTC)
    berlin = datetime(2024, 6, 1, 9, tzinfo=ZoneInfo("Europe/Berlin"))
    ytd = period_start(period=Period.YTD, now=berlin)
    assert ytd == datetime(2024, 1, 1, tzinfo=ZoneInfo("Europe/Berlin"))
    assert ytd.utcoffset() == timedelta(hours=1)  # winter time at new year
    inception = datetime(2024, 5, 20, tzinfo=UTC)
    assert period_start(period=Period.YEAR, now=berlin, inception=inception) == inception
    assert period_start(period=Period.MAX, now=berlin, inception=inception) == inception
    with pytest.raises(PerformanceError, match="period must be one of"):
        period_start(period="2W", now=berlin)


# --- properties ---------------------------------------------------------------------------

values = st.decimals(min_value=D("0.01"), max_value=D(10_000_000), places=2)


@settings(deadline=None)
@given(series=st.lists(values, min_size=2, max_size=12))
def test_twr_without_flows_is_the_simple_return(series):
    points = [ValuePoint(day(2024, 1, 1) + timedelta(days=i), v) for i, v in enumerate(series)]
    result = time_weighted_return(values=points)
    simple = series[-1] / series[0] - 1
    assert abs(result.cumulative - simple) <= D("1e-25") * max(D(1), abs(simple))


@settings(deadline=None)
@given(
    start=values,
    links=st.lists(
        st.tuples(
            st.decimals(min_value=D("-0.9"), max_value=D(3), places=4),  # sub-period return
            st.decimals(min_value=D("-0.9"), max_value=D(5), places=2),  # flow / value
        ),
        min_size=1,
        max_size=8,
    ),
)
def test_twr_does_not_depend_on_the_size_of_cash_flows(start, links):
    t = day(2024, 1, 1)
    points, flows, growth, value = [ValuePoint(t, start)], [], D(1), start
    for n, (period_return, flow_share) in enumerate(links):
        flow = value * flow_share
        flows.append(CashFlow(t + timedelta(days=n), flow))
        value = (value + flow) * (1 + period_return)
        points.append(ValuePoint(t + timedelta(days=n + 1), value))
        growth *= 1 + period_return
    result = time_weighted_return(values=points, flows=flows)
    assert abs(result.cumulative - (growth - 1)) < D("1e-20")


@settings(deadline=None)
@given(
    rate=st.decimals(min_value=D("-0.9"), max_value=D(5), places=4),
    later=st.lists(
        st.tuples(st.integers(1, 3650), st.decimals(min_value=D(1), max_value=D(10**6))),
        min_size=1,
        max_size=8,
    ),
)
def test_xirr_finds_the_rate_that_makes_npv_zero(rate, later):
    # Build flows whose IRR is `rate`: pay in today what the later receipts are worth at it.
    t0 = day(2024, 1, 1)
    receipts = [(t0 + timedelta(days=d), amount) for d, amount in later]
    paid_in = sum(a / (1 + rate) ** (D((at - t0).days) / 365) for at, a in receipts)
    flows = [(t0, -paid_in), *receipts]
    result = xirr(flows=flows)
    # Stated tolerance: a root of the NPV lies within result.tolerance (1e-12) of the rate,
    # and the NPV there is below 1e-9 of the money moved.
    low, high = (
        npv(result.rate - result.tolerance, flows),
        npv(result.rate + result.tolerance, flows),
    )
    assert low == 0 or high == 0 or (low < 0) != (high < 0)
    assert abs(npv(result.rate, flows)) <= D("1e-9") * sum(abs(a) for _, a in flows)
    assert abs(result.rate - rate) < D("1e-9")
