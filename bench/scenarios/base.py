"""What a scenario decides about a run; bench/scenarios/<name>.py each make one."""

from __future__ import annotations

import argparse
from typing import Any


class Scenario:
    """A run's shape. Each scenario module sets what differs from these defaults."""

    name = ""
    # What a flag left out means (bench/README.md shows the commands).
    defaults: dict[str, Any] = {}
    feed = True  # the simulated feed ticks at --rate
    users_hold = True  # each user has a portfolio of --holdings instruments
    one_instrument = False  # only the first instrument is active: every tick lands on it
    pings = False  # after the window every socket must answer a ping
    quotes = False  # the clients receive quotes (they carry the feed's flush time)
    loss_subject = "last valuation"  # what the final-state check compares

    def adjust(self, args: argparse.Namespace) -> None:
        """Bend the parsed flags to the scenario (after the defaults are filled in)."""

    def page(self, world: dict[str, Any]) -> str:
        """The WebSocket path every client opens."""
        return "/ws/portfolio/"

    def final_loss(self, states: dict[str, Any], world: dict[str, Any]) -> dict[str, Any]:
        """Clients whose last state differs from the database's, once the feed stopped."""
        raise NotImplementedError

    def floor_query(self, world: dict[str, Any]) -> str:
        """What the floor's clients add to their URL."""
        return ""

    def floor_job(self, world: dict[str, Any], users: list, window: float) -> dict[str, Any]:
        """What the floor's publisher sends, beside the rate, window and instruments."""
        raise NotImplementedError
