"""The simulated market on the real stack: ``runfeed simulated --order-books`` (its own process),
a Celery worker, daphne, and a bot on API v1 over a real socket, subscribed to the book and the
trades of a crypto instrument: snapshots first, then updates, every trade, consistent books."""

from __future__ import annotations

import json
import sys
import time
from decimal import Decimal

import pytest
from websockets.sync.client import connect

from streaming import tokens
from tests.conftest import Process, stack_env

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]


def consistent(book: dict) -> bool:
    bids = [(Decimal(p), Decimal(s)) for p, s in book["bids"]]
    asks = [(Decimal(p), Decimal(s)) for p, s in book["asks"]]
    return (
        bool(bids and asks)
        and [p for p, _ in bids] == sorted({p for p, _ in bids}, reverse=True)
        and [p for p, _ in asks] == sorted({p for p, _ in asks})
        and bids[0][0] < asks[0][0]
        and all(size > 0 for _, size in bids + asks)
    )


def fresh_trades(snapshots: dict, updates: dict) -> int:
    """Trade updates newer than the trades snapshot's newest."""
    if "trades:ETH-USD" not in snapshots:
        return 0
    tape = snapshots["trades:ETH-USD"]["data"]["trades"]
    newest = int(tape[-1]["trade_id"]) if tape else 0
    return sum(int(f["data"]["trade_id"]) > newest for f in updates["trades:ETH-USD"])


def test_a_bot_follows_the_simulated_book_and_every_trade_through_daphne(
    world, celery_worker, daphne_server, tmp_path
):
    _row, token = tokens.token_create(user=world["users"]["bob"], name="market bot")
    feed = Process(
        "runfeed",
        [sys.executable, "manage.py", "runfeed", "simulated", "--order-books", "--seed", "5"],
        stack_env(),
        tmp_path,
    )
    try:
        feed.wait_for_output("feed simulated: started")
        url = daphne_server.replace("http://", "ws://") + "/ws/v1/"
        headers = {"Authorization": f"Bearer {token}"}
        with connect(url, additional_headers=headers, open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
            snapshots: dict[str, dict] = {}
            updates: dict[str, list[dict]] = {"book:ETH-USD": [], "trades:ETH-USD": []}
            for n, stream in enumerate(updates, start=1):
                ws.send(json.dumps({"type": "subscribe", "id": n, "stream": stream}))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (
                len(snapshots) == 2
                and len(updates["book:ETH-USD"]) >= 5
                and fresh_trades(snapshots, updates) >= 20
            ):
                frame = json.loads(ws.recv(timeout=10))
                if frame["type"] == "snapshot":
                    snapshots[frame["stream"]] = frame
                elif frame["type"] == "update":
                    updates[frame["stream"]].append(frame)
                else:
                    assert frame["type"] == "reply", frame
    finally:
        code = feed.stop()
    assert code == 0, feed.output()
    assert set(snapshots) == {"book:ETH-USD", "trades:ETH-USD"}
    assert len(updates["book:ETH-USD"]) >= 5
    # Numbered per stream from the snapshot on, none missing.
    for stream, frames in updates.items():
        first = snapshots[stream]["stream_seq"] + 1
        assert [f["stream_seq"] for f in frames] == list(range(first, first + len(frames)))
    # Every trade, in order. A trade the snapshot already holds may come again as an update (the
    # feed keeps it for snapshots, then publishes it; a bot that joined in between gets both):
    # a bot skips the ids it has, and the rest are one apart from the tape's newest on.
    tape = [int(t["trade_id"]) for t in snapshots["trades:ETH-USD"]["data"]["trades"]]
    live = [int(f["data"]["trade_id"]) for f in updates["trades:ETH-USD"]]
    assert live == sorted(set(live))
    newest = tape[-1] if tape else live[0] - 1
    fresh = [i for i in live if i > newest]
    assert len(fresh) >= 20
    assert fresh == list(range(newest + 1, newest + 1 + len(fresh)))
    assert {f["data"]["side"] for f in updates["trades:ETH-USD"]} <= {"buy", "sell"}
    books = [f["data"] for f in updates["book:ETH-USD"]]
    if snapshots["book:ETH-USD"]["data"] is not None:
        books.insert(0, snapshots["book:ETH-USD"]["data"])
    assert all(consistent(book) for book in books)
    assert len({json.dumps(book["bids"] + book["asks"]) for book in books}) > 1  # it moves
