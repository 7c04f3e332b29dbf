"""API v1 for bots: every change of a book (diffs with a checksum) and every trade, through a real
daphne fed by a real ``manage.py runfeed`` process (the simulated exchange's order book)."""

from __future__ import annotations

import asyncio
import json
import sys
import zlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import websockets

from portfolio.models import AssetClass, Instrument
from streaming import events, marketdata, orderbook, protocol, tokens
from tests.api import assert_documented
from tests.conftest import Process, stack_env

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]


def test_crc32_is_the_iso_hdlc_crc_of_the_catalogue():
    # The CRC-32 the checksum names: "CRC-32/ISO-HDLC", check value of the ASCII string
    # "123456789" = 0xCBF43926 (Greg Cook, Catalogue of parametrised CRC algorithms,
    # https://reveng.sourceforge.io/crc-catalogue/17plus.htm#crc.cat.crc-32-iso-hdlc).
    assert zlib.crc32(b"123456789") == 0xCBF43926
    assert orderbook.book_checksum([], []) == zlib.crc32(b"|")


def test_checksum_text_is_canonical_asks_then_bids_top_ten():
    asks = [(Decimal(101 + i), Decimal("1.50")) for i in range(12)]
    bids = [(Decimal("100.0") - i, Decimal("2E+1")) for i in range(12)]
    text = orderbook.checksum_text(asks[:10], bids[:10])
    assert text.startswith("101:1.5,102:1.5,")
    assert text.split("|")[1].startswith("100:20,99:20,")
    assert text.count(",") == 18
    book = orderbook.LevelBook()
    book.update_to(bids, asks)
    assert book.checksum() == zlib.crc32(text.encode())


def test_a_diff_names_exactly_the_levels_that_changed():
    book = orderbook.LevelBook()
    first = book.update_to([(Decimal("99"), Decimal("1"))], [(Decimal("101"), Decimal("2"))])
    assert first == ([(Decimal("99"), Decimal("1"))], [(Decimal("101"), Decimal("2"))])
    # 99 unchanged (written differently), 98 new, 101 gone, 102 new.
    bids, asks = book.update_to(
        [(Decimal("99.00"), Decimal("1.0")), (Decimal("98"), Decimal("3"))],
        [(Decimal("102"), Decimal("1"))],
    )
    assert bids == [(Decimal("98"), Decimal("3"))]
    assert sorted(asks) == [(Decimal("101"), Decimal(0)), (Decimal("102"), Decimal("1"))]
    assert book.seq == 2
    assert book.update_to(list(book.bids.items()), list(book.asks.items())) == ([], [])
    assert book.seq == 2  # nothing changed: no new number


COUNT = ("--count", "150")


def listed_crypto(symbol: str, feed_symbol: str, feed: str = "simulated") -> Instrument:
    return Instrument.objects.create(
        symbol=symbol,
        name=symbol,
        asset_class=AssetClass.CRYPTO,
        quote_currency="USDT",
        feed=feed,
        feed_symbol=feed_symbol,
    )


def numbered_trade(instrument: Instrument, seq: int, *, trade_id: str, at: datetime) -> dict:
    """A ``trade`` message as a feed process publishes it, numbered ``seq``."""
    return protocol.trade(
        instrument_id=instrument.id,
        symbol=instrument.symbol,
        price=Decimal("5.5"),
        size=Decimal("1"),
        side="buy",
        trade_id=trade_id,
        exchange_ts=at,
        trade_seq=seq,
    )


def api_url(daphne_server: str) -> str:
    return daphne_server.replace("http://", "ws://") + "/ws/v1/"


async def frames_until(ws, predicate, *, within: float = 20.0) -> dict:
    """The next frame ``predicate`` accepts; every frame on the way must match
    docs/asyncapi.yaml."""
    async with asyncio.timeout(within):
        while True:
            message = json.loads(await ws.recv())
            assert_documented(message)
            if message["type"] == "error":
                raise AssertionError(message)
            if predicate(message):
                return message


def simulated_market(tmp_path, *, rate: int, seed: int) -> Process:
    """``runfeed simulated --order-books``: its crypto instruments trade in simulated books."""
    command = ["runfeed", "simulated", "--order-books", "--rate", str(rate), "--seed", str(seed)]
    return Process("runfeed", [sys.executable, "manage.py", *command], stack_env(), tmp_path)


def test_example_book_client_verifies_every_checksum_against_the_simulated_book(
    world, daphne_server, tmp_path
):
    listed_crypto("BTC-USDT", "BTC-USDT")
    _row, token = tokens.token_create(user=world["users"]["alice"], name="book client")
    feed = simulated_market(tmp_path, rate=40, seed=7)
    client = None
    try:
        feed.wait_for_output("feed simulated: started")
        client = Process(
            "book-client",
            [sys.executable, "docs/book_client.py", api_url(daphne_server), "BTC-USDT", *COUNT],
            stack_env(LIVEFOLIO_TOKEN=token),
            tmp_path,
        )
        client.wait_for_output("done:", timeout=60)
        client.proc.wait(timeout=10)
        output = client.output()
        assert client.proc.returncode == 0, output
        assert "done: verified 150 checksums, 0 mismatches, 0 gaps" in output, output
        assert ", 0 trade gaps" in output, output
        trades = int(output.split("; ")[1].split(" trades")[0])
        assert trades > 0, output  # the simulated book traded meanwhile
    finally:
        if client is not None:
            client.stop()
        feed.stop()


def test_trades_stream_delivers_every_trade_with_continuous_ids(world, daphne_server, tmp_path):
    listed_crypto("ETH-USDT", "ETH-USDT")
    _row, token = tokens.token_create(user=world["users"]["bob"], name="tape")
    feed = simulated_market(tmp_path, rate=60, seed=3)

    async def tape() -> tuple[list[int], list[int]]:
        headers = {"Authorization": f"Bearer {token}"}
        async with websockets.connect(api_url(daphne_server), additional_headers=headers) as ws:
            await ws.send(json.dumps({"type": "subscribe", "id": 1, "stream": "trades:ETH-USDT"}))
            await frames_until(ws, lambda m: m["type"] == "snapshot")
            ids, seqs = [], []
            while len(ids) < 120:
                update = await frames_until(ws, lambda m: m["type"] == "update")
                ids.append(int(update["data"]["trade_id"]))
                seqs.append(update["stream_seq"])
            return ids, seqs

    try:
        feed.wait_for_output("feed simulated: started")
        ids, seqs = asyncio.run(tape())
    finally:
        feed.stop()
    # No max_rate: every trade the exchange made, none skipped, in order.
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert seqs == list(range(1, len(ids) + 1))


def test_a_book_diff_lost_on_the_way_shows_as_a_jump_and_a_snapshot_catches_up(
    world, daphne_server
):
    instrument = listed_crypto("SOL-USDT", "SOL-USDT", feed="binance")
    _row, token = tokens.token_create(user=world["users"]["alice"], name="diffs")
    now = datetime.now(UTC)
    one = (Decimal("10"), Decimal("1"))
    book = orderbook.LevelBook()

    def diff(bids, asks) -> dict:
        changed = book.update_to(bids, asks)
        return protocol.book_diff(
            instrument_id=instrument.id,
            symbol=instrument.symbol,
            book_seq=book.seq,
            bids=changed[0],
            asks=changed[1],
            checksum=book.checksum(),
            exchange_ts=now,
        )

    def levels() -> dict:
        return protocol.book_levels(
            instrument_id=instrument.id,
            symbol=instrument.symbol,
            book_seq=book.seq,
            bids=list(book.bids.items()),
            asks=list(book.asks.items()),
            checksum=book.checksum(),
            exchange_ts=now,
        )

    group = events.instrument_group(instrument.id)
    first = diff([one], [(Decimal("11"), Decimal("1"))])
    marketdata.record_live(trades=[], levels=[levels()])

    async def scenario() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with websockets.connect(api_url(daphne_server), additional_headers=headers) as ws:
            await ws.send(
                json.dumps(
                    {"type": "subscribe", "id": 1, "stream": "book:SOL-USDT", "mode": "diffs"}
                )
            )
            reply = await frames_until(ws, lambda m: m["type"] == "reply")
            assert reply["result"]["mode"] == "diffs"
            snap = await frames_until(ws, lambda m: m["type"] == "snapshot")
            assert snap["data"]["book_seq"] == first["book_seq"] == 1
            assert snap["data"]["checksum"] == book.checksum()
            second = diff([one, (Decimal("9"), Decimal("2"))], [(Decimal("11"), Decimal("1"))])
            third = diff([one], [(Decimal("11"), Decimal("1"))])  # this one is "lost"
            fourth = diff([one], [(Decimal("12"), Decimal("1"))])
            # The old diff (already in the snapshot) and a book in the other mode: not sent.
            top = protocol.book(
                instrument_id=instrument.id, symbol="SOL-USDT", bids=[], asks=[], exchange_ts=now
            )
            marketdata.record_live(trades=[], levels=[levels()])
            await events.apublish([(group, first), (group, top), (group, second), (group, fourth)])
            got = [await frames_until(ws, lambda m: m["type"] == "update") for _ in range(2)]
            assert [m["data"]["book_seq"] for m in got] == [2, 4]
            assert [m["stream_seq"] for m in got] == [1, 3]  # the jump says: ask a snapshot
            assert got[0]["data"]["bids"] == [["9", "2"]]
            assert third["bids"] == [["9", "0"]]
            await ws.send(json.dumps({"type": "snapshot", "id": 2, "stream": "book:SOL-USDT"}))
            snap = await frames_until(ws, lambda m: m["type"] == "snapshot")
            assert snap["stream_seq"] == 3
            assert snap["data"]["bids"] == [["10", "1"]]
            assert snap["data"]["asks"] == [["12", "1"]]
            assert snap["data"]["book_seq"] == 4

    asyncio.run(scenario())


def test_a_trade_lost_on_the_way_makes_stream_seq_jump_and_the_snapshots_are_not_repeated(
    world, daphne_server
):
    instrument = listed_crypto("DOT-USDT", "DOT-USDT", feed="binance")
    _row, token = tokens.token_create(user=world["users"]["bob"], name="trades")
    now = datetime.now(UTC)

    def trade(seq: int) -> dict:
        return numbered_trade(instrument, seq, trade_id=f"x{seq}", at=now)

    marketdata.record_live(trades=[trade(1), trade(2), trade(3)], levels=[])
    group = events.instrument_group(instrument.id)

    async def scenario() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with websockets.connect(api_url(daphne_server), additional_headers=headers) as ws:
            await ws.send(json.dumps({"type": "subscribe", "id": 1, "stream": "trades:DOT-USDT"}))
            snap = await frames_until(ws, lambda m: m["type"] == "snapshot")
            assert [t["trade_seq"] for t in snap["data"]["trades"]] == [1, 2, 3]
            # 3 is in the snapshot; 5 and 6 never reach this server.
            await events.apublish([(group, trade(n)) for n in (3, 4, 7, 8)])
            got = [await frames_until(ws, lambda m: m["type"] == "update") for _ in range(3)]
            assert [m["data"]["trade_seq"] for m in got] == [4, 7, 8]
            assert [m["stream_seq"] for m in got] == [1, 4, 5]  # 2 and 3: the lost trades

    asyncio.run(scenario())


def test_trades_queued_before_the_snapshot_are_not_sent_and_a_feed_numbering_afresh_jumps(
    world, daphne_server
):
    # A feed's first batch (its market's warm-up: ~100 trades) is cached, then published: a bot
    # whose snapshot was read in between gets the whole batch after its snapshot.
    instrument = listed_crypto("ADA-USDT", "ADA-USDT", feed="binance")
    _row, token = tokens.token_create(user=world["users"]["bob"], name="warm-up")
    start = datetime.now(UTC)

    def trade(seq: int, second: int) -> dict:
        return numbered_trade(
            instrument, seq, trade_id=f"t{second}", at=start + timedelta(seconds=second)
        )

    batch = [trade(n, n) for n in range(1, 121)]
    marketdata.record_live(trades=batch, levels=[])  # the cache keeps the newest 50
    group = events.instrument_group(instrument.id)

    async def scenario() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with websockets.connect(api_url(daphne_server), additional_headers=headers) as ws:
            await ws.send(json.dumps({"type": "subscribe", "id": 1, "stream": "trades:ADA-USDT"}))
            snap = await frames_until(ws, lambda m: m["type"] == "snapshot")
            assert [t["trade_seq"] for t in snap["data"]["trades"]] == list(range(71, 121))
            await events.apublish([(group, message) for message in batch])
            # The feed restarted after its cache expired: it numbers from 1 again, later trades.
            await events.apublish([(group, trade(121, 121)), (group, trade(1, 200))])
            got = [await frames_until(ws, lambda m: m["type"] == "update") for _ in range(2)]
            assert [m["data"]["trade_id"] for m in got] == ["t121", "t200"]
            assert [m["stream_seq"] for m in got] == [1, 3]  # the jump: resync

    asyncio.run(scenario())


def test_subscribing_again_in_the_default_mode_switches_from_diffs_to_the_conflated_book(
    world, daphne_server
):
    instrument = listed_crypto("XRP-USDT", "XRP-USDT", feed="binance")
    _row, token = tokens.token_create(user=world["users"]["alice"], name="switch")
    now = datetime.now(UTC)
    levels = [(Decimal("0.5"), Decimal("10"))]
    diff = protocol.book_diff(
        instrument_id=instrument.id,
        symbol=instrument.symbol,
        book_seq=1,
        bids=levels,
        asks=[],
        checksum=orderbook.book_checksum([], levels),
        exchange_ts=now,
    )
    top = protocol.book(
        instrument_id=instrument.id, symbol="XRP-USDT", bids=levels, asks=[], exchange_ts=now
    )
    group = events.instrument_group(instrument.id)

    async def scenario() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with websockets.connect(api_url(daphne_server), additional_headers=headers) as ws:
            subscribe = {"type": "subscribe", "stream": "book:XRP-USDT"}
            await ws.send(json.dumps({**subscribe, "id": 1, "mode": "diffs"}))
            await frames_until(ws, lambda m: m["type"] == "snapshot")
            await events.apublish([(group, top), (group, diff)])
            update = await frames_until(ws, lambda m: m["type"] == "update")
            assert update["data"]["type"] == "book_diff"  # the conflated book is not sent
            await ws.send(json.dumps({**subscribe, "id": 2}))
            reply = await frames_until(ws, lambda m: m["type"] == "reply")
            assert reply["result"]["mode"] == "top"
            await frames_until(ws, lambda m: m["type"] == "snapshot")
            await events.apublish([(group, {**diff, "book_seq": 2}), (group, top)])
            update = await frames_until(ws, lambda m: m["type"] == "update")
            assert update["data"]["type"] == "book"  # and the diff is not
            assert update["data"]["bids"] == [["0.5", "10"]]

    asyncio.run(scenario())


def test_diffs_mode_is_for_book_streams_without_max_rate(world, daphne_server):
    listed_crypto("ADA-USDT", "ADA-USDT", feed="binance")
    _row, token = tokens.token_create(user=world["users"]["alice"], name="modes")

    async def refused(request: dict) -> str:
        headers = {"Authorization": f"Bearer {token}"}
        async with websockets.connect(api_url(daphne_server), additional_headers=headers) as ws:
            await ws.send(json.dumps({"type": "subscribe", "id": 9, **request}))
            async with asyncio.timeout(10):
                while True:
                    message = json.loads(await ws.recv())
                    assert_documented(message)
                    if message["type"] == "error":
                        assert message["code"] == "bad_params"
                        return message["message"]

    assert "only book streams" in asyncio.run(
        refused({"stream": "trades:ADA-USDT", "mode": "diffs"})
    )
    assert "cannot be conflated" in asyncio.run(
        refused({"stream": "book:ADA-USDT", "mode": "diffs", "max_rate": 2})
    )
    assert "mode: one of top, diffs" in asyncio.run(
        refused({"stream": "book:ADA-USDT", "mode": "everything"})
    )
