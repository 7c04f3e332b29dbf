"""The bench's scenarios by name, one module each (bench/run.py --scenario)."""

from __future__ import annotations

from bench.scenarios import broadcast, idle, ingest, portfolio
from bench.scenarios.base import Scenario

SCENARIOS: dict[str, Scenario] = {
    module.SCENARIO.name: module.SCENARIO for module in (portfolio, broadcast, ingest, idle)
}
