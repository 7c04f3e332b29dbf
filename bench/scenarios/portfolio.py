"""``portfolio`` (the default): C clients on /ws/portfolio/, one user each, each user a portfolio
of H holdings over I instruments; the feed ticks R/s over all I. Latency of valuations; final
state: each client's last valuation equals ``live_states.portfolio_states`` from the database."""

from __future__ import annotations

import json
from typing import Any

from bench.scenarios.base import Scenario


class PortfolioScenario(Scenario):
    name = "portfolio"
    defaults = {"clients": 200, "users": None, "rate": 200.0, "drain": 90.0}

    def final_loss(self, states: dict[str, Any], world: dict[str, Any]) -> dict[str, Any]:
        return final_state_loss(states, world["portfolio_of"])

    def floor_job(self, world: dict[str, Any], users: list, window: float) -> dict[str, Any]:
        return {
            "mode": "portfolio",
            "holdings": {str(u.id): world["held"][u.id] for u in users},
            "frames": floor_frames(world, users),
        }


SCENARIO = PortfolioScenario()


def final_state_loss(
    last: dict[str, dict[str, Any]], portfolio_of: dict[int, int]
) -> dict[str, Any]:
    """Clients whose last portfolio state differs from the database's, after the feed stopped."""
    from portfolio.selectors import live_states

    ids = {int(user): portfolio_of[int(user)] for user in last}
    truth = {s["id"]: s for s in live_states.portfolio_states(portfolio_ids=ids.values())}
    stale = []
    for user, pid in ids.items():
        seen = last[str(user)].get(str(pid))
        if seen is None or valued(seen) != valued(json.loads(json.dumps(truth[pid]))):
            stale.append(user)
    return {"checked": len(ids), "stale": len(stale), "stale_users": stale[:10]}


# What moves with the clock, not with the data: when it was valued, how old each price is.
_CLOCK_FIELDS = ("valued_at",)

_CLOCK_HOLDING_FIELDS = ("price_age_seconds", "stale")


def valued(state: dict[str, Any]) -> dict[str, Any]:
    """A portfolio state without the fields that change with the clock alone."""
    holdings = [
        {k: v for k, v in h.items() if k not in _CLOCK_HOLDING_FIELDS} for h in state["holdings"]
    ]
    return {k: v for k, v in state.items() if k not in _CLOCK_FIELDS} | {"holdings": holdings}


def floor_frames(world, users) -> dict[str, Any]:
    """Each user's real valuation frame (the same bytes Livefolio sends), as_of and valued_at
    left open (the floor's publisher stamps them)."""
    from portfolio.selectors import live_states
    from streaming import protocol

    pids = [world["portfolio_of"][u.id] for u in users]
    owner = {v: k for k, v in world["portfolio_of"].items()}
    frames = {}
    for state in live_states.portfolio_states(portfolio_ids=pids):
        state["as_of"], state["valued_at"] = "__AS_OF__", "__VALUED_AT__"
        frames[str(owner[state["id"]])] = protocol.envelope(
            protocol.valuation(portfolio=state), seq=1
        )
    return frames
