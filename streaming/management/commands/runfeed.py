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
        parser.add_argument(
            "--exchange", default="", help="ccxt: the exchange id (one process per exchange)"
        )
        parser.add_argument(
            "--every-exchange",
            action="store_true",
            help="ccxt: keep one supervised process per exchange that active instruments name "
            "(added, removed and restarted as the admin changes them)",
        )
        parser.add_argument(
            "--stall-seconds",
            type=float,
            default=30.0,
            help="ccxt: reconnect after this long without market data",
        )
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
        exchange = options["exchange"]
        if options["every_exchange"]:
            if kind != "ccxt" or exchange:
                raise CommandError("--every-exchange goes with the ccxt feed, without --exchange")
            self._every_exchange(options)
            return
        if kind == "ccxt":
            from streaming.feeds.ccxt_exchange import exchange_ids

            if not exchange:
                raise CommandError("ccxt needs --exchange ID, e.g. --exchange okx")
            if exchange not in exchange_ids():
                raise CommandError(
                    f"--exchange: ccxt has no WebSocket exchange {exchange!r} "
                    "(the ids are listed by ccxt.pro.exchanges)"
                )
        elif exchange:
            raise CommandError("--exchange goes only with the ccxt feed")
        name = f"{kind}:{exchange}" if exchange else kind
        if options["supervise"]:
            command = supervisor.child_command(sys.argv)
            write = lambda line: (self.stdout.write(line), self.stdout.flush())  # noqa: E731
            supervisor.supervise(command, name=name, write=write)
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
        elif kind == "ccxt":
            if options["stall_seconds"] <= 0:
                raise CommandError("--stall-seconds must be positive")
            feed_options = {"stall_timeout": options["stall_seconds"]}
        namespace.claim()
        runner = FeedRunner(kind=kind, exchange=exchange, **feed_options)
        asyncio.run(self._run(runner))

    def _every_exchange(self, options) -> None:
        """One ``runfeed ccxt --exchange <id>`` child per exchange active ccxt instruments name,
        read from the database every few seconds: an operator adds an exchange in the admin
        alone. ccxt itself is loaded only by the children."""
        from django.db import close_old_connections

        from portfolio.models import FeedKind, Instrument

        def wanted() -> set[str] | None:
            close_old_connections()  # a connection broken by a database restart is replaced
            try:
                rows = Instrument.objects.filter(feed=FeedKind.CCXT, active=True)
                return set(rows.values_list("exchange", flat=True).distinct())
            except Exception as exc:  # the database is away: keep what runs, ask again later
                self.stderr.write(
                    f"runfeed ccxt --every-exchange: reading instruments failed ({exc})"
                )
                return None

        base = [sys.executable, sys.argv[0], "runfeed", "ccxt"]
        base += ["--stall-seconds", str(options["stall_seconds"])]

        def write(line: str) -> None:
            self.stdout.write(line)
            self.stdout.flush()

        supervisor.supervise_each(
            wanted=wanted,
            command_for=lambda exchange: [*base, "--exchange", exchange],
            name_of=lambda exchange: f"ccxt:{exchange}",
            write=write,
        )

    async def _run(self, runner: FeedRunner) -> None:
        task = asyncio.create_task(runner.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runner.stop, task)
        try:
            await task
        except asyncio.CancelledError:
            pass
        name = f"{runner.kind}:{runner.exchange}" if runner.exchange else runner.kind
        self.stdout.write(f"feed {name}: exited cleanly")
