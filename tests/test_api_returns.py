"""API v1's ``returns`` request: TWR and IRR of one's own portfolio over 1D … Max and a chosen
range, from the ledger and the daily price history, with the working, as docs/asyncapi.yaml
describes them."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from channels.db import database_sync_to_async

from portfolio.models import DailyPrice
from tests.api import assert_documented, connect, request

pytestmark = pytest.mark.django_db(transaction=True)

D = Decimal


def btc_close(day: date) -> Decimal:
    """BTC's close: 500 until 30 June 2026, 560 from 1 July 2026."""
    return D(500) if day < date(2026, 7, 1) else D(560)


@database_sync_to_async
def give_btc_a_history(world) -> None:
    today = datetime.now(UTC).date()
    first = date(2026, 1, 1)
    DailyPrice.objects.bulk_create(
        DailyPrice(
            instrument=world["btc"],
            day=first + timedelta(days=i),
            close=btc_close(first + timedelta(days=i)),
            source="csv",
        )
        for i in range((today - first).days + 1)
    )


async def returns_of(comm, **fields):
    frame = await request(comm, type="returns", id="r1", **fields)
    assert_documented(frame)
    return frame


async def test_returns_over_the_presets_and_a_custom_range_with_the_working(world, redis_client):
    """Alice deposited 1,000 on 5 January 2026 and bought 2 BTC at 500 (world fixture).

    Max runs from 4 January (value 0): one flow of +1,000 on 5 January, counted at the start
    of its day, then no flow: one TWR link, 2 x 560 / (0 + 1,000) - 1 = 12 % today.
    The custom range 5 January .. 5 July 2026 (181 days, under a year): no flows, from
    2 x 500 = 1,000 to 2 x 560 = 1,120: TWR 12 %, and the IRR for the range itself (not
    annualized) is the same 12 %: -1,000 at the start, +1,120 at the end."""
    await give_btc_a_history(world)
    alice = world["users"]["alice"]
    portfolio = world["portfolios"]["alice"]
    comm = await connect(alice)
    frame = await returns_of(
        comm, portfolio=portfolio.id, **{"from": "2026-01-05"}, to="2026-07-05"
    )
    assert frame["type"] == "reply" and frame["id"] == "r1" and frame["request"] == "returns"
    result = frame["result"]
    assert result["portfolio"] == portfolio.id and result["base_currency"] == "USD"
    ranges = {r["period"]: r for r in result["ranges"]}
    assert list(ranges) == ["1D", "1W", "1M", "YTD", "1Y", "MAX", "custom"]

    custom = ranges["custom"]
    assert (custom["from"], custom["to"]) == ("2026-01-05", "2026-07-05")
    assert custom["twr"] == "0.12"
    assert D(custom["irr"]) == D("0.12") and custom["irr_annualized"] is False
    assert custom["working"]["irr_flows"] == [
        {"day": "2026-01-05", "amount": "-1000.00", "present_value": "-1000.00"},
        {"day": "2026-07-05", "amount": "1120.00", "present_value": "1000.00"},
    ]

    today = datetime.now(UTC).date()
    whole = ranges["MAX"]
    assert (whole["from"], whole["to"]) == ("2026-01-04", today.isoformat())
    assert whole["twr"] == "0.12" and whole["problem"] is None
    links = whole["working"]["sub_periods"]
    assert [(sp["start_value"], sp["flow"], sp["end_value"]) for sp in links] == [
        ("0.00", "1000.00", "1120.00")
    ]
    assert [sp["return"] for sp in links] == ["0.12"]
    assert [f["amount"] for f in whole["working"]["irr_flows"]] == ["0.00", "-1000.00", "1120.00"]
    assert whole["irr_annualized"] is ((today - date(2026, 1, 4)).days >= 365)
    # The last day: no flow, no change in BTC's close.
    assert (
        ranges["1D"]["twr"] == "0"
        and ranges["1D"]["from"] == (today - timedelta(days=1)).isoformat()
    )
    await comm.disconnect()


async def test_returns_of_another_users_portfolio_are_forbidden(world, redis_client):
    comm = await connect(world["users"]["bob"])
    frame = await returns_of(comm, portfolio=world["portfolios"]["alice"].id)
    assert (frame["type"], frame["code"], frame["id"]) == ("error", "forbidden", "r1")
    assert "result" not in frame
    frame = await returns_of(comm, portfolio=999_999)
    assert frame["code"] == "not_found"
    await comm.disconnect()


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({}, "portfolio"),  # no portfolio
        ({"portfolio": "1"}, "portfolio"),
        ({"portfolio": True}, "portfolio"),
        ({"portfolio": "ALICE", "from": "2026-13-01", "to": "2026-02-01"}, "from"),
        ({"portfolio": "ALICE", "from": "2026-01-05"}, "from and to"),
        ({"portfolio": "ALICE", "from": "2026-01-05", "to": 20260201}, "to"),
    ],
)
async def test_a_bad_returns_request_is_bad_params_naming_the_field(
    world, redis_client, fields, named
):
    comm = await connect(world["users"]["alice"])
    if fields.get("portfolio") == "ALICE":
        fields = {**fields, "portfolio": world["portfolios"]["alice"].id}
    frame = await returns_of(comm, **fields)
    assert (frame["type"], frame["code"]) == ("error", "bad_params")
    assert frame["message"].startswith(named), frame["message"]
    await comm.disconnect()


async def test_a_range_that_ends_before_it_starts_or_in_the_future_says_so(world, redis_client):
    comm = await connect(world["users"]["alice"])
    tomorrow = (datetime.now(UTC).date() + timedelta(days=1)).isoformat()
    for start, end, problem in (
        ("2026-03-01", "2026-02-01", "the range must end after it starts"),
        ("2026-03-01", tomorrow, "the range ends in the future"),
    ):
        frame = await returns_of(
            comm, portfolio=world["portfolios"]["alice"].id, **{"from": start}, to=end
        )
        custom = frame["result"]["ranges"][-1]
        assert custom["period"] == "custom" and custom["twr"] is None
        assert custom["problem"].startswith(problem)
    await comm.disconnect()


async def test_a_holding_without_price_history_is_named_not_counted_as_a_loss(world, redis_client):
    """Bob holds ETH, which has no daily close at all: valued without it his portfolio would
    seem to have lost everything, so each range says what is missing instead of a number."""
    comm = await connect(world["users"]["bob"])
    frame = await returns_of(comm, portfolio=world["portfolios"]["bob"].id)
    today = datetime.now(UTC).date()
    for r in frame["result"]["ranges"]:
        assert r["twr"] is None and r["irr"] is None and r["working"] is None
        # The first value the range uses that holds ETH: its start once ETH was bought (on
        # 5 January 2026), else its end.
        day = r["from"] if r["from"] >= "2026-01-05" else today.isoformat()
        assert r["problem"] == (
            f"the value of {day} leaves out ETH-USD: no close (import its history)"
        ), r["period"]
    await comm.disconnect()
