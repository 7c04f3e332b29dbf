"""``ingest``: "one Celery worker keeps up with 5,000 ticks/s while valuing 10,000 portfolios":
U users (default 10,000) with H-holding portfolios over I instruments, the feed at R (default
5,000 ticks/s), C clients (default 1,000) on /ws/portfolio/. Reports the Celery backlog over the
run, batches and quotes stored per second, the ingest lag and whether the worker keeps up (the
backlog does not grow and drains within 5 s of the feed stopping: bench/backlog.py)."""

from __future__ import annotations

from bench.scenarios.portfolio import PortfolioScenario


class IngestScenario(PortfolioScenario):
    name = "ingest"
    defaults = {"clients": 1000, "users": 10_000, "rate": 5000.0, "drain": 30.0}


SCENARIO = IngestScenario()
