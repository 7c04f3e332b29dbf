"""CSV replay: order, speed, bad rows and bad files."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from streaming.feeds.replay import ReplayFeed, ReplayFileError

from .fakes import Collector, eventually, running

pytestmark = pytest.mark.unit

GOOD = """ts,symbol,price,bid,ask
2024-03-01T14:30:00.000Z,BTCUSDT,61234.50,61234.40,61234.60
2024-03-01T14:45:00.000Z,ETHUSDT,3400.1,,
2024-03-01T15:30:00.000Z,BTCUSDT,61300.00000001,61299.9,61300.1
"""


async def test_speed_zero_plays_an_hour_of_ticks_at_once_in_file_order(tmp_path):
    path = tmp_path / "ticks.csv"
    path.write_text(GOOD)
    got = Collector()
    feed = ReplayFeed(emit=got, path=path, speed=0)
    async with running(feed) as task:
        await asyncio.wait_for(feed.finished.wait(), 2)
        await asyncio.sleep(0.05)
        assert not task.done()  # idle at the end of the file, not returned
        assert feed.stats.state == "stopped"
    first, second, third = got.ticks()
    assert [t.feed_symbol for t in got.ticks()] == ["BTCUSDT", "ETHUSDT", "BTCUSDT"]
    assert first.price == Decimal("61234.50")
    assert (first.bid, first.ask) == (Decimal("61234.40"), Decimal("61234.60"))
    assert first.ts == datetime(2024, 3, 1, 14, 30, tzinfo=UTC)
    assert second.bid is None and second.ask is None
    assert third.price == Decimal("61300.00000001")
    assert feed.stats.malformed_frames == 0


async def test_speed_n_waits_the_recorded_gaps_divided_by_n(tmp_path):
    path = tmp_path / "ticks.csv"
    path.write_text(
        "ts,symbol,price\n"
        "2024-03-01T00:00:00Z,X,1\n"
        "2024-03-01T00:00:01Z,X,2\n"
        "2024-03-01T00:00:02Z,X,3\n"
    )
    seen: list[float] = []
    feed = ReplayFeed(emit=lambda tick: seen.append(time.monotonic()), path=path, speed=10)
    async with running(feed):
        await eventually(lambda: len(seen) == 3, within=3)
    # One recorded second is a tenth of a second at 10x (small allowance for timer granularity).
    assert seen[1] - seen[0] >= 0.09
    assert seen[2] - seen[0] >= 0.19


async def test_malformed_rows_are_counted_and_logged_with_line_and_text(tmp_path, caplog):
    path = tmp_path / "ticks.csv"
    path.write_text(
        "ts,symbol,price,bid,ask\n"
        "2024-03-01T00:00:00Z,X,1.5,,\n"
        "yesterday,X,1.6,,\n"
        "2024-03-01T00:00:02Z,X,one point seven,,\n"
        "2024-03-01T00:00:03Z,X\n"
        "2024-03-01T00:00:04Z,X,-3,,\n"
        "\n"
        "2024-03-01T00:00:05Z,X,1.8,,\n"
    )
    got = Collector()
    feed = ReplayFeed(emit=got, path=path, speed=0)
    with caplog.at_level(logging.WARNING):
        async with running(feed):
            await asyncio.wait_for(feed.finished.wait(), 2)
    assert [t.price for t in got.ticks()] == [Decimal("1.5"), Decimal("1.8")]
    assert feed.stats.malformed_frames == 4
    assert "line 3" in caplog.text and "yesterday,X,1.6,," in caplog.text
    assert "line 5" in caplog.text and "expected 5 columns, got 2" in caplog.text
    assert "line 6" in caplog.text and "price must be positive" in caplog.text


async def test_only_subscribed_symbols_are_played(tmp_path):
    path = tmp_path / "ticks.csv"
    path.write_text(GOOD)
    got = Collector()
    feed = ReplayFeed(emit=got, path=path, speed=0)
    await feed.set_symbols(frozenset({"ETHUSDT"}))
    async with running(feed):
        await asyncio.wait_for(feed.finished.wait(), 2)
    assert [t.feed_symbol for t in got.ticks()] == ["ETHUSDT"]


async def test_loop_starts_over_at_the_end_of_the_file(tmp_path):
    path = tmp_path / "ticks.csv"
    path.write_text(GOOD)
    got = Collector()
    feed = ReplayFeed(emit=got, path=path, speed=0, loop=True)
    async with running(feed):
        await eventually(lambda: len(got.ticks()) >= 9, within=2)
    assert [t.price for t in got.ticks()[:6]] == [t.price for t in got.ticks()[:3]] * 2


async def test_a_missing_file_is_a_clear_error_at_start(tmp_path):
    feed = ReplayFeed(emit=Collector(), path=tmp_path / "nope.csv")
    with pytest.raises(ReplayFileError, match=r"replay file not found: .*nope\.csv"):
        await asyncio.wait_for(feed.run(), 2)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty; expected a header row"),
        ("time,ticker,last\n2024-03-01T00:00:00Z,X,1\n", "missing ts, symbol, price"),
        ("2024-03-01T00:00:00Z,X,1\n", "missing ts, symbol, price"),
        ("ts,symbol\n", "missing price"),
    ],
)
async def test_a_header_the_feed_does_not_understand_is_a_clear_error_at_start(
    tmp_path, content, message
):
    path = tmp_path / "ticks.csv"
    path.write_text(content)
    feed = ReplayFeed(emit=Collector(), path=path)
    with pytest.raises(ReplayFileError, match=message):
        await asyncio.wait_for(feed.run(), 2)


def test_negative_speed_is_refused():
    with pytest.raises(ValueError, match="speed"):
        ReplayFeed(emit=Collector(), path="x.csv", speed=-1)
