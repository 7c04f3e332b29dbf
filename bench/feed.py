"""``manage.py runfeed simulated`` with the tick loop paced by the clock (``run.py --paced-feed``).

The simulated feed sleeps ``1/rate`` after each tick. asyncio waits in whole milliseconds
(epoll), and each tick costs ~0.1 ms of Decimal math, so on this machine the feed tops out near
800 ticks/s whatever ``--rate`` says (the runner prints the rate it achieved). This script runs
the very same command, runner, coalescer and ``SimulatedFeed.step`` — only ``run`` differs: at
each wake-up (every millisecond) it emits every tick the clock says is owed, so the feed can offer
the ingest target's 5,000 ticks/s if its CPU allows. A feed that falls more than a second behind
drops the debt instead of bursting: the achieved rate stays what it was.

    python bench/feed.py --rate 5000 --seed 1      (same flags as ``runfeed simulated``)
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def paced_feed_class():
    from streaming.feeds import simulated

    class PacedSimulatedFeed(simulated.SimulatedFeed):
        async def run(self) -> None:
            self.stats.set_state("connected", "simulated market open (paced by the clock)")
            started = time.monotonic()
            sent = 0
            try:
                while True:
                    owed = int((time.monotonic() - started) * self.rate) - sent
                    if owed > self.rate:  # more than a second behind: forget the debt
                        sent += owed - int(self.rate)
                        owed = int(self.rate)
                    symbols = sorted(self.symbols)
                    if symbols:
                        for _ in range(owed):
                            tick = self.step(self.random.choice(symbols))
                            self.stats.record_message(tick.feed_symbol)
                            self.emit(tick)
                    sent += owed
                    await asyncio.sleep(0.001)
            finally:
                self.stats.set_state("stopped", "cancelled")

    return PacedSimulatedFeed


def main() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portfolio.settings")
    import django

    django.setup()
    from django.core.management import call_command

    from streaming.feeds import simulated

    # runner.build_feed imports SimulatedFeed from this module when it builds the feed.
    simulated.SimulatedFeed = paced_feed_class()
    call_command("runfeed", "simulated", *sys.argv[1:])


if __name__ == "__main__":
    main()
