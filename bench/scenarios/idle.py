"""``idle``: C clients connected, no feed; every socket must still answer a ping after T s
(daphne's memory per idle socket: docs/performance.md, "Idle sockets")."""

from __future__ import annotations

from bench.scenarios.base import Scenario


class IdleScenario(Scenario):
    name = "idle"
    defaults = {"clients": 200, "users": None, "rate": 200.0, "drain": 90.0}
    feed = False
    pings = True


SCENARIO = IdleScenario()
