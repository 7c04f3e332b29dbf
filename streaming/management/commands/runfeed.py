"""``manage.py runfeed <feed>``: one long-running, supervised process per feed."""

from __future__ import annotations

import asyncio
import signal
import sys

from django.core.management.base import BaseCommand, CommandError

from streaming import supervisor
from streaming.runner import FeedRunner, feed_factory


class Command(BaseCommand):
    help = "Stream prices from one feed into Livefolio until SIGTERM/SIGINT."

    def add_arguments(self, parser) -> None:
        parser.add_argument("feed", help="simulated (more feeds: see README)")
        parser.add_argument("--seed", type=int, default=None, help="simulated: random seed")
        parser.add_argument("--rate", type=float, default=10.0, help="simulated: ticks per second")
        parser.add_argument("--window-ms", type=int, default=None, help="coalescing window")
        parser.add_argument(
            "--supervise",
            action="store_true",
            help="run the feed as a child process and restart it whenever it exits",
        )

    def handle(self, *args, **options) -> None:
        try:
            feed_factory(options["feed"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if options["supervise"]:
            command = supervisor.child_command(sys.argv)
            write = lambda line: (self.stdout.write(line), self.stdout.flush())  # noqa: E731
            supervisor.supervise(command, name=options["feed"], write=write)
            return
        feed_options = {}
        if options["feed"] == "simulated":
            feed_options = {"seed": options["seed"], "rate": options["rate"]}
        window = options["window_ms"] / 1000 if options["window_ms"] else None
        runner = FeedRunner(kind=options["feed"], window=window, **feed_options)
        asyncio.run(self._run(runner))

    async def _run(self, runner: FeedRunner) -> None:
        task = asyncio.create_task(runner.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass
        self.stdout.write(f"feed {runner.kind}: exited cleanly")
