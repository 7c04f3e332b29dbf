"""``broadcast``: C clients on ONE instrument's page /ws/instrument/<symbol>/ ("1,000 clients
subscribed to one instrument's quotes at 5 updates/s"); only that instrument is active, so the
feed's R ticks/s (default 5) all land on it, each a quote; the users hold nothing (no
valuations). Latency of quotes; final state: each client's last quote price equals the
database's."""

from __future__ import annotations

import argparse
from typing import Any

from bench.scenarios.base import Scenario
from portfolio import wire


class BroadcastScenario(Scenario):
    name = "broadcast"
    defaults = {"clients": 200, "users": None, "rate": 5.0, "drain": 90.0}
    users_hold = False
    one_instrument = True
    quotes = True
    loss_subject = "last quote"

    def adjust(self, args: argparse.Namespace) -> None:
        args.instruments = max(args.instruments, 1)
        args.holdings = 0  # the instrument page's users hold nothing: only quotes flow

    def page(self, world: dict[str, Any]) -> str:
        return f"/ws/instrument/{world['instrument']['symbol']}/"

    def final_loss(self, states: dict[str, Any], world: dict[str, Any]) -> dict[str, Any]:
        return final_quote_loss(states, world["instrument"]["id"])

    def floor_query(self, world: dict[str, Any]) -> str:
        return f"&group={group(world)}"

    def floor_job(self, world: dict[str, Any], users: list, window: float) -> dict[str, Any]:
        from django.conf import settings

        # One quote per window to the group, at most the instrument page's 5 a second.
        return {
            "mode": "broadcast",
            "group": group(world),
            "frame": floor_quote_frame(world),
            "interval": max(window, 1 / settings.LIVEFOLIO_WS_MAX_UPDATES),
        }


SCENARIO = BroadcastScenario()


def group(world: dict[str, Any]) -> str:
    return f"instrument.{world['instrument']['id']}"


def final_quote_loss(last: dict[str, dict[str, Any]], instrument_id: int) -> dict[str, Any]:
    """Broadcast: clients whose last quote of the instrument is not the database's price."""
    from portfolio.models import Quote

    truth = wire.dec(Quote.objects.get(instrument_id=instrument_id).price)
    key = f"quote:{instrument_id}"
    stale = [user for user, seen in last.items() if (seen.get(key) or {}).get("price") != truth]
    return {"checked": len(last), "stale": len(stale), "stale_users": stale[:10], "price": truth}


def floor_quote_frame(world) -> dict[str, Any]:
    """Broadcast: the instrument's real quote frame (same bytes as Livefolio's: the database's
    quote after the Livefolio run, with bid and ask), ``as_of`` and ``received`` left open."""
    from portfolio.models import Quote
    from streaming import protocol

    q = Quote.objects.select_related("instrument").get(instrument_id=world["instrument"]["id"])
    frame = protocol.envelope(
        protocol.quote(
            instrument_id=q.instrument_id,
            symbol=q.instrument.symbol,
            price=q.price,
            bid=q.bid,
            ask=q.ask,
            exchange_ts=q.exchange_ts,
            received=q.exchange_ts,
        ),
        seq=1,
    )
    frame["as_of"], frame["received"] = "__AS_OF__", "__RECEIVED__"
    return frame
