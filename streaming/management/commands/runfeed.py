"""``manage.py runfeed <feed>``: one long-running, supervised process per feed."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from streaming import namespace, supervisor
from streaming.runner import FEEDS, FeedRunner


class Command(BaseCommand):
    help = "Stream prices from one feed into Livefolio until SIGTERM/SIGINT."

    def add_arguments(self, parser) -> None:
        parser.add_argument("feed", help=f"one of: {', '.join(FEEDS)}")
        parser.add_argument("--seed", type=int, default=None, help="simulated: random seed")
        parser.add_argument("--rate", type=float, default=10.0, help="simulated: ticks per second")
        parser.add_argument(
            "--order-books",
            action="store_true",
            help="simulated: crypto instruments trade in a simulated market (book and trades)",
        )
        parser.add_argument("--file", default=None, help="replay: the CSV file of ticks")
        parser.add_argument(
            "--speed", type=float, default=1.0, help="replay: 1 real time, N times faster, 0 max"
        )
        parser.add_argument("--loop", action="store_true", help="replay: start over at the end")
        parser.add_argument("--window-ms", type=int, default=None, help="coalescing window")
        parser.add_argument(
            "--supervise",
            action="store_true",
            help="run the feed as a child process and restart it whenever it exits",
        )

    def handle(self, *args, **options) -> None:
        kind = options["feed"]
        if kind not in FEEDS:
            raise CommandError(f"unknown feed {kind!r}; known feeds: {', '.join(FEEDS)}")
        if options["order_books"] and kind != "simulated":
            raise CommandError("--order-books: only the simulated feed simulates order books")
        if options["supervise"]:
            command = supervisor.child_command(sys.argv)
            write = lambda line: (self.stdout.write(line), self.stdout.flush())  # noqa: E731
            supervisor.supervise(command, name=kind, write=write)
            return
        feed_options: dict = {}
        if kind == "simulated":
            feed_options = {
                "seed": options["seed"],
                "rate": options["rate"],
                "order_books": options["order_books"],
            }
        elif kind == "replay":
            if not options["file"]:
                raise CommandError("replay needs --file PATH (a CSV of ts,symbol,price[,bid,ask])")
            if not Path(options["file"]).is_file():
                raise CommandError(f"--file: {options['file']} does not exist")
            feed_options = {
                "path": options["file"],
                "speed": options["speed"],
                "loop": options["loop"],
            }
        namespace.claim()
        window = options["window_ms"] / 1000 if options["window_ms"] else None
        runner = FeedRunner(kind=kind, window=window, **feed_options)
        asyncio.run(self._run(runner))

    async def _run(self, runner: FeedRunner) -> None:
        task = asyncio.create_task(runner.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runner.stop, task)
        try:
            await task
        except asyncio.CancelledError:
            pass
        self.stdout.write(f"feed {runner.kind}: exited cleanly")
