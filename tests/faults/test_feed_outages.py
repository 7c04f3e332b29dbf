"""The feed process through outages of what it writes to: PostgreSQL crashed and restarted
(its health row and instrument list come back), Redis killed and restarted (ticks it could not
hand on are handed on once Redis is back)."""

import asyncio
import signal
import sys
import time
from datetime import UTC, datetime

import pytest

from tests.faults.conftest import wait_until
from tests.feeds.fakes import FakeCoinbase

# The feed's two database calls, as pg_stat_activity shows its connection's last statement:
# reading the instrument list (every 5 s) and writing its health row (ends in COMMIT, every 2 s).
READS_INSTRUMENTS = 'SELECT "portfolio_instrument"."feed_symbol" AS "feed_symbol", '


def heartbeat(stack, feed: str) -> datetime | None:
    rows = stack.sql("SELECT heartbeat_at FROM portfolio_feedstatus WHERE feed = %s", feed)
    return rows[0][0] if rows else None


def stored_price(stack, instrument_id: int) -> str | None:
    rows = stack.sql("SELECT price FROM portfolio_quote WHERE instrument_id = %s", instrument_id)
    return format(rows[0][0].normalize(), "f") if rows else None


def freeze_when_the_next_call_reads_instruments(stack, feed) -> None:
    """SIGSTOP the feed just after a health write that came more than 3 s after its last read
    of the instrument list: the read is then due before the next write (5 s vs 2 s apart), so
    once the feed runs again, the first statement on its dead connection is that read, outside
    any transaction (a failed write inside ``atomic`` would drop the connection by itself)."""
    pid = wait_until(
        lambda: stack.sql(
            "SELECT pid FROM pg_stat_activity WHERE query LIKE %s", READS_INSTRUMENTS + "%"
        ),
        timeout=30,
        what="the feed's database connection",
    )[0][0]
    last_read = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        query, ago = stack.sql(
            "SELECT query, extract(epoch FROM clock_timestamp() - query_start) "
            "FROM pg_stat_activity WHERE pid = %s",
            pid,
        )[0]
        now = time.monotonic()
        if query.startswith(READS_INSTRUMENTS):
            last_read = now - float(ago)
        elif query == "COMMIT" and float(ago) < 0.3 and last_read and 3.3 < now - last_read < 4.5:
            feed.proc.send_signal(signal.SIGSTOP)
            return
        time.sleep(0.02)
    raise TimeoutError("no moment to freeze the feed at")


@pytest.fixture
def eth_inactive(stack):
    """ETH is not streamed until the test switches it on; on again whatever happens."""
    stack.sql("UPDATE portfolio_instrument SET active = false WHERE id = %s", stack.world["eth"])
    yield
    try:
        stack.postgres.connect().close()
    except Exception:
        stack.postgres.start()
    stack.sql("UPDATE portfolio_instrument SET active = true WHERE id = %s", stack.world["eth"])


def test_feed_survives_a_postgres_crash_health_is_current_and_new_instruments_stream(
    stack, eth_inactive
):
    world = stack.world
    stack.worker()
    feed = stack.spawn(
        "runfeed",
        [sys.executable, "manage.py", "runfeed", "simulated", "--rate", "5"],
    )
    feed.wait_for_output("feed simulated: started")
    wait_until(lambda: stored_price(stack, world["btc"]), timeout=30, what="BTC streams")

    freeze_when_the_next_call_reads_instruments(stack, feed)
    try:
        # A crash: every backend killed at once, no clean disconnect for the feed's connection.
        stack.postgres.stop("immediate")
        stack.postgres.start()
    finally:
        feed.proc.send_signal(signal.SIGCONT)
    restarted = datetime.now(UTC)
    wait_until(
        lambda: (heartbeat(stack, "simulated") or restarted) > restarted,
        timeout=60,
        what="the feed's health row to be current again",
    )

    # Down for a while: the feed's calls fail, and it keeps trying (with backoff) until it is back.
    stack.postgres.stop("immediate")
    wait_until(
        lambda: (
            "reading instruments failed" in feed.output()
            and "writing feed health failed" in feed.output()
        ),
        timeout=30,
        what="the feed to find the database gone",
    )
    stack.postgres.start()
    restarted = datetime.now(UTC)
    wait_until(
        lambda: (heartbeat(stack, "simulated") or restarted) > restarted,
        timeout=60,
        what="the feed's health row to be current again after the outage",
    )
    # An instrument switched on in the admin after the restart starts streaming.
    assert stored_price(stack, world["eth"]) is None
    stack.sql("UPDATE portfolio_instrument SET active = true WHERE id = %s", world["eth"])
    wait_until(
        lambda: stored_price(stack, world["eth"]),
        timeout=60,
        what="the instrument switched on after the restart to be streamed",
    )
    assert feed.proc.poll() is None, feed.output()


@pytest.fixture
def quiet_instrument(stack):
    """SOL-USD on the Coinbase feed, held by nobody: it ticks only when the test says so."""
    [(instrument_id,)] = stack.sql(
        "INSERT INTO portfolio_instrument "
        "(symbol, name, asset_class, quote_currency, feed, exchange, feed_symbol, active) "
        "VALUES ('SOL-USD', 'Solana', 'crypto', 'USD', 'coinbase', '', 'SOL-USD', true) "
        "RETURNING id"
    )
    yield instrument_id
    stack.sql("DELETE FROM portfolio_quote WHERE instrument_id = %s", instrument_id)
    stack.sql("DELETE FROM portfolio_pricebar WHERE instrument_id = %s", instrument_id)
    stack.sql("DELETE FROM portfolio_instrument WHERE id = %s", instrument_id)


def ticker_now(exchange: FakeCoinbase, product: str, price: str) -> dict:
    ticker = exchange.ticker(product, price)
    ticker["time"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return ticker


async def test_a_tick_the_feed_could_not_send_while_redis_was_down_is_stored_once_it_is_back(
    stack, quiet_instrument
):
    await asyncio.to_thread(stack.worker)
    async with FakeCoinbase() as exchange:
        feed = stack.spawn(
            "runfeed",
            [sys.executable, "manage.py", "runfeed", "coinbase"],
            COINBASE_WS_URL=exchange.url,
        )
        client = await exchange.wait_clients(1, within=30)
        await exchange.wait_message(lambda m: m.get("type") == "subscribe", client=client)
        await exchange.push(ticker_now(exchange, "SOL-USD", "101.5"))
        await asyncio.to_thread(
            wait_until,
            lambda: stored_price(stack, quiet_instrument) == "101.5",
            timeout=30,
            what="the first price stored",
        )

        stack.redis.kill()
        # The instrument's last tick for a long time comes while Redis is down; the feed has
        # had it for two of its health writes (2 s apart) before Redis is back.
        await exchange.push(ticker_now(exchange, "SOL-USD", "102.25"))
        pushed = datetime.now(UTC)
        for _ in range(2):
            since = max(await asyncio.to_thread(heartbeat, stack, "coinbase"), pushed)
            await asyncio.to_thread(
                wait_until,
                lambda since=since: heartbeat(stack, "coinbase") > since,
                timeout=30,
                what="the feed to write its health",
            )
        assert stored_price(stack, quiet_instrument) == "101.5"
        await asyncio.to_thread(stack.redis.start)

        await asyncio.to_thread(
            wait_until,
            lambda: stored_price(stack, quiet_instrument) == "102.25",
            timeout=30,
            what="the tick from the outage to be stored once Redis is back",
        )
        assert "sending 1 ticks failed" in feed.output()  # it was sent after a failed send
        assert feed.proc.poll() is None, feed.output()
