"""CPU per ingest task: the worker's cost of one tick, without the rest of the stack.

Seeds the bench world as ``bench/run.py`` does (U users, each a portfolio of H holdings over I
instruments), then runs the ingest task's body (``streaming.tasks._ingest``) in this process on
random ticks, every holder valued as if its owner watched (presence is not asked), and prints the
CPU time (``thread_time``) and wall time per task. On a machine whose speed moves with its load
this is steadier than a full run: compare two commits by running it on each, in turn, a few times.

    uv run bench/task_cpu.py [--users 1000] [--tasks 100] [--ticks 1] [--seed 1]

The same variables as bench/run.py (a *bench* database and Redis prefix: both are wiped).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import world
from bench.scenarios import SCENARIOS

WARM_UP = 20  # tasks run before measuring: the worker's books load, the caches fill


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=1000, help="users, one portfolio each")
    p.add_argument("--instruments", type=int, default=200)
    p.add_argument("--holdings", type=int, default=20, help="holdings per portfolio")
    p.add_argument("--tasks", type=int, default=100, help="measured tasks (after WARM_UP)")
    p.add_argument("--ticks", type=int, default=1, help="ticks per task (random instruments)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--i-mean-it", action="store_true", help="allow names without 'bench'")
    args = p.parse_args()
    env = world.bench_env(args)
    world.create_database()
    world.setup_django(env)
    world.seed(args, SCENARIOS["portfolio"])

    from portfolio.models import Quote
    from streaming import flow, tasks

    flow.present = lambda user_ids: None  # every holder valued, as if every owner watched
    prices = dict(Quote.objects.values_list("instrument_id", "price"))
    ids = sorted(prices)
    rng = random.Random(args.seed)

    def tick() -> dict[str, str | int]:
        instrument = rng.choice(ids)
        prices[instrument] *= Decimal(1 + rng.uniform(-0.001, 0.001))
        prices[instrument] = prices[instrument].quantize(Decimal("0.0001"))
        now = datetime.now(UTC).isoformat()
        price = str(prices[instrument])
        return {"instrument": instrument, "price": price, "ts": now, "source": "simulated"}

    cpu, wall = [], []
    for n in range(WARM_UP + args.tasks):
        batch = [tick() for _ in range(args.ticks)]
        started_cpu, started = time.thread_time(), time.perf_counter()
        tasks._ingest(batch)
        if n >= WARM_UP:
            cpu.append((time.thread_time() - started_cpu) * 1000)
            wall.append((time.perf_counter() - started) * 1000)
    print(
        f"{args.tasks} tasks of {args.ticks} tick(s), {args.users} portfolios of "
        f"{args.holdings}: CPU ms per task median {statistics.median(cpu):.2f} "
        f"(min {min(cpu):.2f}), wall median {statistics.median(wall):.2f}"
    )


if __name__ == "__main__":
    main()
